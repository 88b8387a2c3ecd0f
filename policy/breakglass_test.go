package policy

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func validBreakglass() Breakglass {
	return Breakglass{Name: "db-emergency", Requesters: Subjects{UIDs: []uint32{1000}}, Approvers: Subjects{UIDs: []uint32{1001, 1002}},
		Keys: []string{"db/*"}, Operations: []string{"unwrap"}, MaxDuration: time.Hour}
}

// TestCompileBreakglass: every mistake in a [[breakglass]] table is an
// error naming the table; a valid one gets its defaults.
func TestCompileBreakglass(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*Breakglass)
		want string // "" valid
	}{
		{"valid", func(*Breakglass) {}, ""},
		{"no name", func(b *Breakglass) { b.Name = "" }, "no name"},
		{"bad name", func(b *Breakglass) { b.Name = "Db Emergency" }, "a-z, 0-9"},
		{"no requesters", func(b *Breakglass) { b.Requesters = Subjects{} }, "requesters: no users"},
		{"no approvers", func(b *Breakglass) { b.Approvers = Subjects{} }, "approvers: no users"},
		{"unknown user", func(b *Breakglass) { b.Approvers.Users = []string{"no-such-user-kw"} }, "approvers: unknown user"},
		{"no keys", func(b *Breakglass) { b.Keys = nil }, "no keys"},
		{"bad glob", func(b *Breakglass) { b.Keys = []string{"db/**/x"} }, "key pattern"},
		{"no operations", func(b *Breakglass) { b.Operations = nil }, "no operations"},
		{"admin operation", func(b *Breakglass) { b.Operations = []string{"key.destroy"} }, "cannot be granted by break-glass"},
		{"credential", func(b *Breakglass) { b.Operations = []string{"credential"} }, "cannot be granted by break-glass"},
		{"kms", func(b *Breakglass) { b.Operations = []string{"kms.decrypt"} }, "cannot be granted by break-glass"},
		{"unknown operation", func(b *Breakglass) { b.Operations = []string{"unwarp"} }, "unknown operation"},
		{"no max_duration", func(b *Breakglass) { b.MaxDuration = 0 }, "max_duration"},
		{"max_duration too long", func(b *Breakglass) { b.MaxDuration = 25 * time.Hour }, "max_duration"},
		{"request_ttl too long", func(b *Breakglass) { b.RequestTTL = 48 * time.Hour }, "request_ttl"},
		{"too many approvals", func(b *Breakglass) { b.Approvals = 9 }, "approvals 9"},
		{"more approvals than approvers", func(b *Breakglass) { b.Approvals = 3 }, "name only 2 people"},
		{"only the requester approves", func(b *Breakglass) { b.Approvers = Subjects{UIDs: []uint32{1000}} }, "every approver is also a requester"},
		{"groups may approve", func(b *Breakglass) { b.Approvers = Subjects{GIDs: []uint32{50}}; b.Approvals = 3 }, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := validBreakglass()
			tc.edit(&b)
			bps, err := CompileBreakglass([]Breakglass{b}, SystemResolver())
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want == "":
				if bps[0].RequestTTL() != DefaultRequestTTL || bps[0].Approvals() < 1 {
					t.Errorf("defaults: ttl %v, approvals %d", bps[0].RequestTTL(), bps[0].Approvals())
				}
			case err == nil || !errors.Is(err, ErrInvalidPolicy) || !strings.Contains(err.Error(), tc.want):
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			case b.Name == "db-emergency" && !strings.Contains(err.Error(), `breakglass "db-emergency"`):
				t.Errorf("error does not name its table: %v", err)
			}
		})
	}
	_, err := CompileBreakglass([]Breakglass{validBreakglass(), validBreakglass()}, nil)
	if err == nil || !strings.Contains(err.Error(), "name already used") {
		t.Errorf("duplicate names: %v", err)
	}
}

// TestBreakglassMatching: who may request and approve (uids and groups,
// as rules match them), what a policy covers, and explain's paths.
func TestBreakglassMatching(t *testing.T) {
	b := validBreakglass()
	b.Requesters.GIDs = []uint32{70}
	bps, err := CompileBreakglass([]Breakglass{b}, nil)
	if err != nil {
		t.Fatal(err)
	}
	pol, err := Compile(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	pol = pol.WithBreakglass(bps)
	bp, ok := pol.BreakglassNamed("db-emergency")
	if !ok {
		t.Fatal("not found by name")
	}
	for _, tc := range []struct {
		id               Identity
		request, approve bool
	}{
		{Identity{UID: 1000, GID: 1000}, true, false},
		{Identity{UID: 5, GID: 5, Groups: []uint32{70}}, true, false},
		{Identity{UID: 1001, GID: 1001}, false, true},
		{Identity{UID: 9, GID: 9}, false, false},
	} {
		if bp.MayRequest(tc.id) != tc.request || bp.MayApprove(tc.id) != tc.approve {
			t.Errorf("%v: request %v approve %v", tc.id, bp.MayRequest(tc.id), bp.MayApprove(tc.id))
		}
		if pol.Names(tc.id) != (tc.request || tc.approve) {
			t.Errorf("%v: Names %v", tc.id, pol.Names(tc.id))
		}
	}
	for _, tc := range []struct {
		op   Operation
		key  string
		want bool
	}{
		{OpUnwrap, "db/master", true}, {OpWrap, "db/master", false}, {OpUnwrap, "db/a/b", false}, {OpUnwrap, "DB/x", false},
	} {
		if got := bp.Covers(tc.op, tc.key); got != tc.want {
			t.Errorf("Covers(%s, %s) = %v", tc.op, tc.key, got)
		}
	}
	if d := pol.Decide(Identity{UID: 1000}, Request{Op: OpUnwrap, Key: "db/master"}, Reserved{}); d.Allowed {
		t.Error("Decide allows what only break-glass could grant")
	}
	paths := pol.BreakglassPaths(Identity{UID: 1000}, Request{Op: OpUnwrap, Key: "db/master"})
	want := `could get unwrap on db/master with approval from uid 1001, uid 1002 (policy "db-emergency", up to 1h, 1 approval)`
	if len(paths) != 1 || paths[0].Path([]Operation{OpUnwrap}, "db/master") != want {
		t.Errorf("paths %v, want one: %s", paths, want)
	}
	if len(pol.BreakglassPaths(Identity{UID: 1001}, Request{Op: OpUnwrap, Key: "db/master"})) != 0 {
		t.Error("an approver who may not request has a path")
	}
}

// TestBreakglassDigestAndNamedUIDs: the digest is the table's as written
// (the same for the same table, another for any change), and an approver
// is named by uid only by users or uids, never through a group.
func TestBreakglassDigestAndNamedUIDs(t *testing.T) {
	compile := func(b Breakglass) *BreakglassPolicy {
		t.Helper()
		bps, err := CompileBreakglass([]Breakglass{b}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return bps[0]
	}
	base := compile(validBreakglass())
	if again := compile(validBreakglass()); again.Digest() != base.Digest() || len(base.Digest()) != 32 {
		t.Errorf("digest %q then %q for one table", base.Digest(), again.Digest())
	}
	for name, change := range map[string]func(*Breakglass){
		"max_duration": func(b *Breakglass) { b.MaxDuration = 2 * time.Hour },
		"approvers":    func(b *Breakglass) { b.Approvers.UIDs = append(b.Approvers.UIDs, 1003) },
		"keys":         func(b *Breakglass) { b.Keys = []string{"db/**"} },
	} {
		b := validBreakglass()
		change(&b)
		if compile(b).Digest() == base.Digest() {
			t.Errorf("%s changed, digest did not", name)
		}
	}
	b := validBreakglass()
	b.Approvers.GIDs = []uint32{0}
	bp := compile(b)
	if bp.NamesApproverUID(0) || !bp.MayApprove(Identity{UID: 0, GID: 0}) || !bp.NamesApproverUID(1001) {
		t.Errorf("gid 0 approver: NamesApproverUID(0) %v, MayApprove(root) %v", bp.NamesApproverUID(0), bp.MayApprove(Identity{}))
	}
	b.Approvers.UIDs = append(b.Approvers.UIDs, 0)
	if !compile(b).NamesApproverUID(0) {
		t.Error("uids = [0]: uid 0 not named")
	}
}
