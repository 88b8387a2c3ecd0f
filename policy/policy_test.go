package policy

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
)

// fakeResolver makes name resolution deterministic in tests.
type fakeResolver struct {
	users, groups map[string]uint32
}

func (f fakeResolver) LookupUser(name string) (uint32, error) {
	if id, ok := f.users[name]; ok {
		return id, nil
	}
	return 0, fmt.Errorf("user: unknown user %s", name)
}

func (f fakeResolver) LookupGroup(name string) (uint32, error) {
	if id, ok := f.groups[name]; ok {
		return id, nil
	}
	return 0, fmt.Errorf("group: unknown group %s", name)
}

var testResolver = fakeResolver{
	users:  map[string]uint32{"payments": 1000, "billing": 1001, "alias": 1000, "root": 0, "nobody2": ^uint32(0)},
	groups: map[string]uint32{"keyward-ops": 990, "readers": 995},
}

var allAdmin = []string{"key.create", "key.rotate", "key.disable", "key.enable", "key.destroy", "key.read", "key.set-min-version", "key.adopt", "key.set-rotation", "key.set-disable-after", "credential.put"}

func testRules() []Rule {
	return []Rule{
		{Name: "payments-app", Users: []string{"payments"}, Keys: []string{"payments/*"},
			Operations: []string{"wrap", "unwrap", "datakey"}, Context: map[string]string{"app": "payments"}},
		{Name: "billing-by-id", Users: []string{"1001"}, Keys: []string{"billing/**"}, Operations: []string{"sign", "verify"}},
		{Name: "ops", Groups: []string{"keyward-ops"}, Keys: []string{"**"}, Operations: allAdmin},
		{Name: "reports", Units: []string{"reports.service"}, Keys: []string{"reports/db", "reports/?x"}, Operations: []string{"mac", "verify-mac"}},
		{Name: "ids", UIDs: []uint32{2000}, GIDs: []uint32{3000}, Keys: []string{"shared/*-pub"}, Operations: []string{"public-key", "verify"}},
		{Name: "multi", Users: []string{"2100"}, Keys: []string{"multi"}, Operations: []string{"unwrap"},
			Context: map[string]string{"app": "a", "env": "prod"}},
		{Users: []string{"2200"}, Keys: []string{"anon"}, Operations: []string{"rewrap"}}, // "rule #7"
	}
}

func mustCompile(t testing.TB, rules []Rule) *Policy {
	t.Helper()
	p, err := Compile(rules, testResolver)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return p
}

func person(uid uint32) Identity { return Identity{UID: uid, GID: uid} }

func ctx(kv ...string) map[string]string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

func TestDecide(t *testing.T) {
	p := mustCompile(t, testRules())
	payCtx := ctx("app", "payments")
	tests := []struct {
		name     string
		id       Identity
		req      Request
		wantRule string // "" means denied
	}{
		// Users by name, with a context condition.
		{"user by name", person(1000), Request{OpUnwrap, "payments/db", payCtx}, "payments-app"},
		{"user by name extra context pair", person(1000), Request{OpWrap, "payments/db", ctx("app", "payments", "table", "cards")}, "payments-app"},
		{"context missing", person(1000), Request{OpUnwrap, "payments/db", nil}, ""},
		{"context other key only", person(1000), Request{OpUnwrap, "payments/db", ctx("application", "payments")}, ""},
		{"context mismatched", person(1000), Request{OpUnwrap, "payments/db", ctx("app", "billing")}, ""},
		{"context value case differs", person(1000), Request{OpUnwrap, "payments/db", ctx("app", "Payments")}, ""},
		{"operation not granted", person(1000), Request{OpSign, "payments/db", payCtx}, ""},
		{"other user", person(1002), Request{OpUnwrap, "payments/db", payCtx}, ""},
		{"gid equal to a named uid is not the user", Identity{UID: 5, GID: 1000}, Request{OpUnwrap, "payments/db", payCtx}, ""},
		// Globs.
		{"star does not cross slash", person(1000), Request{OpUnwrap, "payments/db/old", payCtx}, ""},
		{"star needs a segment", person(1000), Request{OpUnwrap, "payments", payCtx}, ""},
		{"double star any depth", person(1001), Request{OpSign, "billing/eu/invoices/2026", nil}, "billing-by-id"},
		{"double star one level", person(1001), Request{OpVerify, "billing/x", nil}, "billing-by-id"},
		{"double star not the prefix itself", person(1001), Request{OpSign, "billing", nil}, ""},
		{"double star not a longer prefix", person(1001), Request{OpSign, "billingx/a", nil}, ""},
		{"exact key", Identity{Unit: "reports.service"}, Request{OpMAC, "reports/db", nil}, "reports"},
		{"exact key only", Identity{Unit: "reports.service"}, Request{OpMAC, "reports/db2", nil}, ""},
		{"question mark", Identity{Unit: "reports.service"}, Request{OpVerifyMAC, "reports/ax", nil}, "reports"},
		{"question mark one char", Identity{Unit: "reports.service"}, Request{OpVerifyMAC, "reports/abx", nil}, ""},
		{"star with suffix", person(2000), Request{OpPublicKey, "shared/signing-pub", nil}, "ids"},
		{"star with suffix no cross", person(2000), Request{OpPublicKey, "shared/a/signing-pub", nil}, ""},
		// Groups.
		{"group via supplementary", Identity{UID: 5, GID: 5, Groups: []uint32{4, 990}}, Request{OpKeyCreate, "payments/new", nil}, "ops"},
		{"group via primary gid", Identity{UID: 5, GID: 990}, Request{OpKeyRotate, "a/b/c", nil}, "ops"},
		{"group not held", Identity{UID: 5, GID: 5, Groups: []uint32{991}}, Request{OpKeyRead, "a", nil}, ""},
		{"uid equal to a gid is not the group", Identity{UID: 990, GID: 5}, Request{OpKeyRead, "a", nil}, ""},
		// Units.
		{"unit", Identity{UID: 7, GID: 7, Unit: "reports.service"}, Request{OpMAC, "reports/db", nil}, "reports"},
		{"empty unit", Identity{UID: 7, GID: 7}, Request{OpMAC, "reports/db", nil}, ""},
		{"unit without suffix", Identity{UID: 7, GID: 7, Unit: "reports"}, Request{OpMAC, "reports/db", nil}, ""},
		{"unit case differs", Identity{UID: 7, GID: 7, Unit: "Reports.service"}, Request{OpMAC, "reports/db", nil}, ""},
		// uids and gids fields.
		{"uids field", Identity{UID: 2000, GID: 1}, Request{OpVerify, "shared/x-pub", nil}, "ids"},
		{"gids field primary", Identity{UID: 1, GID: 3000}, Request{OpVerify, "shared/x-pub", nil}, "ids"},
		{"gids field supplementary", Identity{UID: 1, GID: 1, Groups: []uint32{3000}}, Request{OpVerify, "shared/x-pub", nil}, "ids"},
		// Several context pairs.
		{"all pairs", person(2100), Request{OpUnwrap, "multi", ctx("app", "a", "env", "prod")}, "multi"},
		{"all pairs and extra", person(2100), Request{OpUnwrap, "multi", ctx("app", "a", "env", "prod", "x", "y")}, "multi"},
		{"one pair missing", person(2100), Request{OpUnwrap, "multi", ctx("app", "a")}, ""},
		{"one pair mismatched", person(2100), Request{OpUnwrap, "multi", ctx("app", "a", "env", "dev")}, ""},
		// Unnamed rule.
		{"unnamed rule", person(2200), Request{OpRewrap, "anon", nil}, "rule #7"},
		// Bad requests.
		{"unknown operation", Identity{GID: 990}, Request{"destroy-everything", "a", nil}, ""},
		{"empty operation", Identity{GID: 990}, Request{"", "a", nil}, ""},
		{"invalid key under double star", Identity{GID: 990}, Request{OpKeyRead, "a/../b", nil}, ""},
		{"empty key under double star", Identity{GID: 990}, Request{OpKeyRead, "", nil}, ""},
		{"upper-case key", Identity{GID: 990}, Request{OpKeyRead, "A", nil}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := p.Decide(tt.id, tt.req, Reserved{})
			if d.Allowed != (tt.wantRule != "") || d.Rule != tt.wantRule {
				t.Fatalf("Decide = %+v, want rule %q", d, tt.wantRule)
			}
			if d.Reason == "" {
				t.Fatal("empty reason")
			}
		})
	}
}

// Managing a key never implies using it.
func TestAdminNeverImpliesData(t *testing.T) {
	p := mustCompile(t, []Rule{{Name: "admins", Groups: []string{"keyward-ops"}, UIDs: []uint32{0}, Keys: []string{"**"}, Operations: allAdmin}})
	for _, id := range []Identity{{UID: 0}, {UID: 5, GID: 990}, {UID: 5, GID: 5, Groups: []uint32{990}}} {
		for _, op := range DataOperations {
			for _, key := range []string{"payments/db", "a", "x/y/z"} {
				if d := p.Decide(id, Request{Op: op, Key: key}, Reserved{}); d.Allowed {
					t.Errorf("%v %s %s allowed by admin rule: %+v", id, op, key, d)
				}
			}
		}
		for _, op := range AdminOperations {
			if d := p.Decide(id, Request{Op: op, Key: "payments/db"}, Reserved{}); !d.Allowed {
				t.Errorf("%v %s denied: %s", id, op, d.Reason)
			}
		}
	}
}

func TestFirstRuleWins(t *testing.T) {
	p := mustCompile(t, []Rule{
		{Name: "narrow", Users: []string{"payments"}, Keys: []string{"payments/db"}, Operations: []string{"unwrap"}},
		{Name: "broad", Users: []string{"payments"}, Keys: []string{"**"}, Operations: []string{"unwrap", "wrap"}},
	})
	if d := p.Decide(person(1000), Request{Op: OpUnwrap, Key: "payments/db"}, Reserved{}); d.Rule != "narrow" {
		t.Fatalf("got %+v, want narrow", d)
	}
	if d := p.Decide(person(1000), Request{Op: OpWrap, Key: "payments/db"}, Reserved{}); d.Rule != "broad" {
		t.Fatalf("got %+v, want broad", d)
	}
}

func TestNoRules(t *testing.T) {
	for _, p := range []*Policy{nil, {}, mustCompile(t, nil)} {
		d := p.Decide(Identity{}, Request{Op: OpUnwrap, Key: "a"}, Reserved{})
		if d.Allowed || !strings.HasPrefix(d.Reason, "no rules: ") {
			t.Fatalf("%+v", d)
		}
		if p.Rules() != 0 || len(p.Report()) != 0 {
			t.Fatal("empty policy reports rules")
		}
	}
}

func TestSubjectsByIDAndName(t *testing.T) {
	// "payments", "alias" and "1000" are one uid: any spelling matches.
	p := mustCompile(t, []Rule{{Users: []string{"alias", "payments", "1000"}, UIDs: []uint32{1000}, Keys: []string{"k"}, Operations: []string{"wrap"}}})
	if d := p.Decide(person(1000), Request{Op: OpWrap, Key: "k"}, Reserved{}); !d.Allowed {
		t.Fatal(d.Reason)
	}
	if g := p.Report(); len(g) != 1 || g[0].Subject != "user alias (uid 1000)" {
		t.Fatalf("report %+v, want one subject", g)
	}
	// uid 0 by name and by number.
	for _, u := range []string{"root", "0"} {
		p := mustCompile(t, []Rule{{Users: []string{u}, Keys: []string{"k"}, Operations: []string{"wrap"}}})
		if !p.Decide(Identity{}, Request{Op: OpWrap, Key: "k"}, Reserved{}).Allowed {
			t.Errorf("users [%s] does not match uid 0", u)
		}
	}
}

func TestCompileErrors(t *testing.T) {
	ok := func(mod func(*Rule)) []Rule {
		r := Rule{Name: "r", Users: []string{"payments"}, Keys: []string{"payments/*"}, Operations: []string{"unwrap"}}
		mod(&r)
		return []Rule{r}
	}
	tests := []struct {
		name    string
		rules   []Rule
		res     Resolver
		wantErr []string // substrings, the rule's label first
	}{
		{"no subjects", ok(func(r *Rule) { r.Users = nil }), testResolver, []string{`rule "r"`, "would match nobody"}},
		{"empty subject lists", ok(func(r *Rule) { r.Users = []string{}; r.Groups = []string{}; r.Units = []string{} }), testResolver, []string{`rule "r"`, "would match nobody"}},
		{"unknown user", ok(func(r *Rule) { r.Users = []string{"bob"} }), testResolver, []string{`rule "r"`, `unknown user "bob"`}},
		{"unknown group", ok(func(r *Rule) { r.Groups = []string{"wheel"} }), testResolver, []string{`rule "r"`, `unknown group "wheel"`}},
		{"empty user", ok(func(r *Rule) { r.Users = []string{""} }), testResolver, []string{`rule "r"`, "empty user name"}},
		{"empty group", ok(func(r *Rule) { r.Groups = []string{""} }), testResolver, []string{`rule "r"`, "empty group name"}},
		{"user id over 32 bits", ok(func(r *Rule) { r.Users = []string{"4294967296"} }), testResolver, []string{`rule "r"`, `user id "4294967296"`}},
		{"user id minus one", ok(func(r *Rule) { r.Users = []string{"4294967295"} }), testResolver, []string{`rule "r"`, "not a valid 32-bit id"}},
		{"name resolving to minus one", ok(func(r *Rule) { r.Users = []string{"nobody2"} }), testResolver, []string{`rule "r"`, "which is no user"}},
		{"uid minus one", ok(func(r *Rule) { r.UIDs = []uint32{^uint32(0)} }), testResolver, []string{`rule "r"`, "(uid_t)-1"}},
		{"gid minus one", ok(func(r *Rule) { r.GIDs = []uint32{^uint32(0)} }), testResolver, []string{`rule "r"`, "(gid_t)-1"}},
		{"control byte in user", ok(func(r *Rule) { r.Users = []string{"bo\nb"} }), testResolver, []string{`rule "r"`, `"bo\nb" is not a plausible name`}},
		{"no resolver", ok(func(*Rule) {}), nil, []string{`rule "r"`, "no resolver"}},
		{"empty unit", ok(func(r *Rule) { r.Units = []string{""} }), testResolver, []string{`rule "r"`, "empty unit name"}},
		{"unit without type", ok(func(r *Rule) { r.Units = []string{"payments"} }), testResolver, []string{`rule "r"`, "want e.g. payments.service"}},
		{"unit unknown type", ok(func(r *Rule) { r.Units = []string{"payments.servic"} }), testResolver, []string{`rule "r"`, "no unit type suffix"}},
		{"unit with slash", ok(func(r *Rule) { r.Units = []string{"system.slice/payments.service"} }), testResolver, []string{`rule "r"`, "byte 12"}},
		{"timer unit", ok(func(r *Rule) { r.Units = []string{"backup.timer"} }), testResolver, []string{`rule "r"`, `unit "backup.timer"`, "never in a .timer unit"}},
		{"target unit", ok(func(r *Rule) { r.Units = []string{"multi-user.target"} }), testResolver, []string{`rule "r"`, "never in a .target unit"}},
		{"slice unit", ok(func(r *Rule) { r.Units = []string{"system.slice"} }), testResolver, []string{`rule "r"`, "never in a .slice unit"}},
		{"template unit", ok(func(r *Rule) { r.Units = []string{"worker@.service"} }), testResolver, []string{`rule "r"`, "is a template", "worker@NAME.service"}},
		{"context on sign", ok(func(r *Rule) { r.Operations = []string{"sign"}; r.Context = map[string]string{"app": "x"} }), testResolver,
			[]string{`rule "r"`, "sign requests carry no context", "could never grant"}},
		{"context on a mix", ok(func(r *Rule) {
			r.Operations = []string{"wrap", "verify", "unwrap", "key.read", "mac"}
			r.Context = map[string]string{"app": "x"}
		}), testResolver, []string{`rule "r"`, "verify, mac, key.read requests carry no context"}},
		{"no operations", ok(func(r *Rule) { r.Operations = nil }), testResolver, []string{`rule "r"`, "no operations"}},
		{"unknown operation", ok(func(r *Rule) { r.Operations = []string{"unwrap", "decrypt"} }), testResolver, []string{`rule "r"`, `operation "decrypt"`, "want one of wrap"}},
		{"wildcard operation", ok(func(r *Rule) { r.Operations = []string{"*"} }), testResolver, []string{`rule "r"`, "no wildcards"}},
		{"prefix wildcard operation", ok(func(r *Rule) { r.Operations = []string{"key.*"} }), testResolver, []string{`rule "r"`, "no wildcards"}},
		{"operation case", ok(func(r *Rule) { r.Operations = []string{"Unwrap"} }), testResolver, []string{`rule "r"`, `operation "Unwrap"`}},
		{"no keys", ok(func(r *Rule) { r.Keys = nil }), testResolver, []string{`rule "r"`, "no keys"}},
		{"empty key pattern", ok(func(r *Rule) { r.Keys = []string{""} }), testResolver, []string{`rule "r"`, "empty key pattern"}},
		{"bad key pattern", ok(func(r *Rule) { r.Keys = []string{"payments/**/db"} }), testResolver, []string{`rule "r"`, `"payments/**/db"`, "only as the whole last segment"}},
		{"upper-case key pattern", ok(func(r *Rule) { r.Keys = []string{"Payments"} }), testResolver, []string{`rule "r"`, `"Payments"`}},
		{"context empty key", ok(func(r *Rule) { r.Context = map[string]string{"": "x"} }), testResolver, []string{`rule "r"`, "context has an empty key"}},
		{"context value too long", ok(func(r *Rule) { r.Context = map[string]string{"app": strings.Repeat("x", 1025)} }), testResolver, []string{`rule "r"`, "over 1024 bytes"}},
		{"context reserved key", ok(func(r *Rule) { r.Context = map[string]string{"keyward.internal/purpose": "kubernetes-kms-v2"} }), testResolver,
			[]string{`rule "r"`, `context key "keyward.internal/purpose"`, `beginning with "keyward.internal/" are reserved`}},
		{"context reserved key on credential", ok(func(r *Rule) {
			r.Users, r.Units, r.Operations = nil, []string{"app.service"}, []string{"credential"}
			r.Context = map[string]string{"keyward.internal/unit": "app.service"}
		}), testResolver, []string{`rule "r"`, `context key "keyward.internal/unit"`, "reserved"}},
		{"context too many pairs", ok(func(r *Rule) {
			r.Context = map[string]string{}
			for i := range 65 {
				r.Context[fmt.Sprint("k", i)] = "v"
			}
		}), testResolver, []string{`rule "r"`, "65 pairs"}},
		{"name with control byte", ok(func(r *Rule) { r.Name = "r\x1b[2J" }), testResolver, []string{"rule #1", `name "r\x1b[2J"`}},
		{"name with spaces around", ok(func(r *Rule) { r.Name = " r" }), testResolver, []string{"rule #1", "leading or trailing spaces"}},
		{"name too long", ok(func(r *Rule) { r.Name = strings.Repeat("n", 129) }), testResolver, []string{"rule #1", "at most 128 bytes"}},
		{"duplicate names", append(ok(func(*Rule) {}), ok(func(*Rule) {})...), testResolver, []string{`rule "r" (#2)`, "already used by rule #1"}},
		{"duplicate of an invalid rule", append([]Rule{{Name: "r"}}, ok(func(*Rule) {})...), testResolver, []string{`rule "r" (#2): name already used by rule #1`}},
		{"name colliding with a default", []Rule{
			{Users: []string{"1"}, Keys: []string{"k"}, Operations: []string{"wrap"}},
			{Name: "rule #1", Users: []string{"1"}, Keys: []string{"k"}, Operations: []string{"wrap"}},
		}, testResolver, []string{`rule "rule #1" (#2)`, "already used by rule #1"}},
		{"unnamed rule label", []Rule{
			{Users: []string{"1"}, Keys: []string{"k"}, Operations: []string{"wrap"}},
			{Users: []string{"1"}, Keys: []string{"k"}},
		}, testResolver, []string{"rule #2: no operations"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Compile(tt.rules, tt.res)
			if err == nil {
				t.Fatal("Compile succeeded")
			}
			if p != nil {
				t.Error("Compile returned a policy with an error")
			}
			if !errors.Is(err, ErrInvalidPolicy) {
				t.Errorf("error %v does not wrap ErrInvalidPolicy", err)
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
		})
	}
}

func TestCompileReportsEveryProblem(t *testing.T) {
	_, err := Compile([]Rule{
		{Name: "a", Users: []string{"bob"}, Keys: []string{"K"}, Operations: []string{"*"}},
		{Name: "b"},
	}, testResolver)
	for _, want := range []string{`rule "a": unknown user "bob"`, `rule "a": key pattern "K"`, `rule "a": operation "*"`,
		`rule "b": no users`, `rule "b": no operations`, `rule "b": no keys`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not contain %q", err, want)
		}
	}
}

func TestUnknownOperationError(t *testing.T) {
	_, err := Compile([]Rule{{Users: []string{"1"}, Keys: []string{"k"}, Operations: []string{"nope"}}}, nil)
	if !errors.Is(err, ErrInvalidPolicy) || !errors.Is(err, ErrUnknownOperation) {
		t.Fatalf("error %v should wrap ErrInvalidPolicy and ErrUnknownOperation", err)
	}
}

func TestParseOperation(t *testing.T) {
	for _, op := range append(append([]Operation{}, DataOperations...), AdminOperations...) {
		got, err := ParseOperation(string(op))
		if err != nil || got != op {
			t.Errorf("ParseOperation(%q) = %q, %v", op, got, err)
		}
	}
	for _, s := range []string{"", "*", "UNWRAP", "key.*", "unwrap ", "list"} {
		if _, err := ParseOperation(s); !errors.Is(err, ErrUnknownOperation) {
			t.Errorf("ParseOperation(%q) = %v, want ErrUnknownOperation", s, err)
		}
	}
	for _, op := range DataOperations {
		if op.Admin() {
			t.Errorf("%s is admin", op)
		}
	}
	for _, op := range AdminOperations {
		if !op.Admin() {
			t.Errorf("%s is not admin", op)
		}
	}
	if Operation("nope").Admin() {
		t.Error("unknown operation is admin")
	}
	if len(DataOperations)+len(AdminOperations) != len(allOps) {
		t.Error("operation lists out of step")
	}
}

func TestDenyReason(t *testing.T) {
	p := mustCompile(t, testRules())
	tests := []struct {
		name string
		id   Identity
		req  Request
		want string
	}{
		{"closest is the rule naming the identity", person(1001), Request{OpUnwrap, "payments/db", nil},
			`no rule grants unwrap on payments/db to uid=1001 gid=1001 groups=[] unit=""; closest: rule "billing-by-id": operation unwrap not granted; key payments/db not matched by [billing/**]`},
		{"closest with one miss", person(1000), Request{OpUnwrap, "payments/db", ctx("app", "billing")},
			`no rule grants unwrap on payments/db to uid=1000 gid=1000 groups=[] unit=""; closest: rule "payments-app": context app=payments required (app differs)`},
		{"identity is the only miss", person(1002), Request{OpUnwrap, "payments/db", ctx("app", "payments")},
			`no rule grants unwrap on payments/db to uid=1002 gid=1002 groups=[] unit=""; closest: rule "payments-app": identity does not match (uid 1002 not in users [payments=1000])`},
		{"unknown operation", Identity{GID: 990, Groups: []uint32{1, 2}, Unit: "x.service"}, Request{"nope", "a", nil},
			`no rule grants unknown operation "nope" on a to uid=0 gid=990 groups=[1 2] unit="x.service"; closest: rule "ops": operation "nope" is unknown`},
		{"invalid key", Identity{GID: 990}, Request{OpKeyRead, "a/\n/b", nil},
			`no rule grants key.read on invalid key name "a/\n/b" to uid=0 gid=990 groups=[] unit=""; closest: rule "ops": key "a/\n/b" is not a valid key name`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := p.Decide(tt.id, tt.req, Reserved{})
			if d.Allowed || d.Reason != tt.want {
				t.Fatalf("reason\n got %s\nwant %s", d.Reason, tt.want)
			}
		})
	}
	many := make([]uint32, 40)
	d := p.Decide(Identity{UID: 9, Groups: many}, Request{Op: OpWrap, Key: "k"}, Reserved{})
	if !strings.Contains(d.Reason, "groups=[0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 ... +24]") {
		t.Errorf("long group list not cut: %s", d.Reason)
	}
}

func TestExplain(t *testing.T) {
	p := mustCompile(t, testRules())
	d, vs := p.Explain(person(1001), Request{Op: OpUnwrap, Key: "x/y", Context: ctx("app", "s3cr3t-value")}, Reserved{})
	if d.Allowed {
		t.Fatalf("allowed: %+v", d)
	}
	want := []RuleVerdict{
		{"payments-app", false, "identity does not match (uid 1001 not in users [payments=1000]); key x/y not matched by [payments/*]; context app=payments required (app differs)"},
		{"billing-by-id", false, "operation unwrap not granted; key x/y not matched by [billing/**]"},
		{"ops", false, "identity does not match (gid 1001 and groups [] not in groups [keyward-ops=990]); operation unwrap not granted"},
		{"reports", false, `identity does not match (unit "" not in units [reports.service]); operation unwrap not granted; key x/y not matched by [reports/db reports/?x]`},
		{"ids", false, "identity does not match (uid 1001 not in users [2000], gid 1001 and groups [] not in groups [3000]); operation unwrap not granted; key x/y not matched by [shared/*-pub]"},
		{"multi", false, "identity does not match (uid 1001 not in users [2100]); key x/y not matched by [multi]; context app=a env=prod required (app differs, env missing)"},
		{"rule #7", false, "identity does not match (uid 1001 not in users [2200]); operation unwrap not granted; key x/y not matched by [anon]"},
	}
	if !reflect.DeepEqual(vs, want) {
		for i := range vs {
			t.Logf("%+v", vs[i])
		}
		t.Fatal("verdicts differ")
	}
	for _, v := range vs {
		if strings.Contains(v.Why, "s3cr3t") {
			t.Fatalf("verdict leaks a request context value: %s", v.Why)
		}
	}
	if strings.Contains(d.Reason, "s3cr3t") {
		t.Fatalf("reason leaks a request context value: %s", d.Reason)
	}

	d, vs = p.Explain(person(1000), Request{Op: OpUnwrap, Key: "payments/db", Context: ctx("app", "payments")}, Reserved{})
	if !d.Allowed || !vs[0].Matched || vs[0].Why != "allows" || vs[0].Rule != d.Rule {
		t.Fatalf("got %+v %+v", d, vs[0])
	}
	for _, v := range vs[1:] {
		if v.Matched {
			t.Errorf("%s matched", v.Rule)
		}
	}
}

func TestReport(t *testing.T) {
	p := mustCompile(t, []Rule{
		{Name: "app", Users: []string{"payments", "1002"}, Units: []string{"payments.service"}, Keys: []string{"payments/*"},
			Operations: []string{"unwrap", "wrap", "unwrap"}, Context: map[string]string{"app": "payments"}},
		{Name: "admins", Groups: []string{"keyward-ops", "1"}, UIDs: []uint32{0}, Keys: []string{"**"}, Operations: []string{"key.read", "key.create"}},
		{Name: "auditor", GIDs: []uint32{995}, Units: []string{"audit.service"}, Users: []string{"payments"}, Keys: []string{"payments/*", "billing/**", "payments/*"}, Operations: []string{"key.read"}},
		// Named by number here, by name above: still one subject each.
		{Name: "numeric", UIDs: []uint32{1000}, Groups: []string{"990"}, Keys: []string{"x"}, Operations: []string{"key.read"}},
	})
	appOps := []Operation{OpWrap, OpUnwrap}
	adminOps := []Operation{OpKeyCreate, OpKeyRead}
	readOps := []Operation{OpKeyRead}
	appCtx := map[string]string{"app": "payments"}
	want := []Grant{
		{"uid 0", adminOps, nil, []string{"**"}, nil, "admins"},
		{"user payments (uid 1000)", appOps, nil, []string{"payments/*"}, appCtx, "app"},
		{"user payments (uid 1000)", readOps, nil, []string{"payments/*", "billing/**"}, nil, "auditor"},
		{"user payments (uid 1000)", readOps, nil, []string{"x"}, nil, "numeric"},
		{"uid 1002", appOps, nil, []string{"payments/*"}, appCtx, "app"},
		{"gid 1", adminOps, nil, []string{"**"}, nil, "admins"},
		{"group keyward-ops (gid 990)", adminOps, nil, []string{"**"}, nil, "admins"},
		{"group keyward-ops (gid 990)", readOps, nil, []string{"x"}, nil, "numeric"},
		{"gid 995", readOps, nil, []string{"payments/*", "billing/**"}, nil, "auditor"},
		{"unit audit.service", readOps, nil, []string{"payments/*", "billing/**"}, nil, "auditor"},
		{"unit payments.service", appOps, nil, []string{"payments/*"}, appCtx, "app"},
	}
	got := p.Report()
	if !reflect.DeepEqual(got, want) {
		for _, g := range got {
			t.Logf("%+v", g)
		}
		t.Fatal("report differs")
	}
	// The report is the caller's to change.
	got[1].Operations[0] = OpKeyDestroy
	got[1].Keys[0] = "**"
	got[1].Context["app"] = "other"
	if again := p.Report(); !reflect.DeepEqual(again, want) {
		t.Fatal("changing a report changed the policy")
	}
	if !p.Decide(person(1000), Request{Op: OpWrap, Key: "payments/db", Context: appCtx}, Reserved{}).Allowed {
		t.Fatal("policy changed")
	}
	if p.Rules() != 4 {
		t.Fatalf("Rules() = %d", p.Rules())
	}
}

func TestSystemResolver(t *testing.T) {
	r := SystemResolver()
	if uid, err := r.LookupUser("root"); err != nil || uid != 0 {
		t.Errorf("LookupUser(root) = %d, %v", uid, err)
	}
	if gid, err := r.LookupGroup("root"); err != nil || gid != 0 {
		t.Errorf("LookupGroup(root) = %d, %v", gid, err)
	}
	if _, err := r.LookupUser("keyward-no-such-user"); err == nil {
		t.Error("unknown user resolved")
	}
	if _, err := r.LookupGroup("keyward-no-such-group"); err == nil {
		t.Error("unknown group resolved")
	}
	p, err := Compile([]Rule{{Users: []string{"root"}, Groups: []string{"root"}, Keys: []string{"**"}, Operations: []string{"key.read"}}}, r)
	if err != nil {
		t.Fatal(err)
	}
	if g := p.Report(); len(g) != 2 || g[0].Subject != "user root (uid 0)" || g[1].Subject != "group root (gid 0)" {
		t.Fatalf("report %+v", g)
	}
	_, err = Compile([]Rule{{Users: []string{"keyward-no-such-user"}, Keys: []string{"**"}, Operations: []string{"key.read"}}}, r)
	if !errors.Is(err, ErrInvalidPolicy) || !strings.Contains(err.Error(), `unknown user "keyward-no-such-user"`) {
		t.Fatalf("error %v", err)
	}
}

func TestDecideAllowDoesNotAllocate(t *testing.T) {
	p := mustCompile(t, testRules())
	id := Identity{UID: 5, GID: 5, Groups: []uint32{990}}
	req := Request{Op: OpKeyRead, Key: "payments/db"}
	if n := testing.AllocsPerRun(100, func() { p.Decide(id, req, Reserved{}) }); n != 0 {
		t.Fatalf("Decide allocates %v times when it allows", n)
	}
}

func TestDecideConcurrent(t *testing.T) {
	p := mustCompile(t, testRules())
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 1000 {
				uid := uint32(1000 + (i+j)%3)
				p.Decide(person(uid), Request{Op: OpUnwrap, Key: "payments/db", Context: ctx("app", "payments")}, Reserved{})
				p.Explain(person(uid), Request{Op: OpSign, Key: "billing/x"}, Reserved{})
				p.Report()
			}
		})
	}
	wg.Wait()
}

// TestCompileWarnings: entries listed twice and socket units compile, with a
// warning naming the rule; a clean policy has none.
func TestCompileWarnings(t *testing.T) {
	p := mustCompile(t, []Rule{{Name: "r", UIDs: []uint32{1}, Units: []string{"a.socket", "b.service", "b.service"},
		Keys: []string{"k", "k"}, Operations: []string{"wrap", "unwrap", "wrap"}}})
	want := []string{
		`rule "r": unit "a.socket": only the socket unit's own ExecStartPre=/ExecStopPost= commands run in it, not the service it starts`,
		`rule "r": unit "b.service" listed twice`,
		`rule "r": operation wrap listed twice`,
		`rule "r": key pattern "k" listed twice`,
	}
	if got := p.Warnings(); !reflect.DeepEqual(got, want) {
		t.Fatalf("Warnings() = %q\nwant %q", got, want)
	}
	if w := mustCompile(t, testRules()).Warnings(); len(w) != 0 {
		t.Fatalf("warnings for a clean policy: %q", w)
	}
}

// TestContextlessOperations: sign, verify, mac, verify-mac, public-key and
// the admin operations are decided without the request's context, as the
// daemon decides them; wrap, unwrap, rewrap and datakey with it.
func TestContextlessOperations(t *testing.T) {
	p := mustCompile(t, testRules())
	for _, op := range allOps {
		for _, id := range []Identity{person(1000), person(1001), {UID: 5, GID: 990}, {UID: 2000, GID: 3000}, {UID: 7, Unit: "reports.service"}} {
			for _, key := range []string{"payments/db", "billing/x/y", "reports/db", "shared/a-pub"} {
				with := p.Decide(id, Request{Op: op, Key: key, Context: ctx("app", "payments")}, Reserved{})
				without := p.Decide(id, Request{Op: op, Key: key}, Reserved{})
				if with.Allowed != without.Allowed && !op.CarriesContext() {
					t.Errorf("%s on %s for %v: context changes the decision", op, key, id)
				}
			}
		}
	}
	if !OpWrap.CarriesContext() || OpSign.CarriesContext() || OpKeyRead.CarriesContext() {
		t.Fatal("CarriesContext is wrong")
	}
}

// TestReserved: sign on the audit checkpoint key is denied whatever the
// rules say, and explained as such; every other request is decided as
// without the reservation.
func TestReserved(t *testing.T) {
	p := mustCompile(t, []Rule{{Name: "all", UIDs: []uint32{0}, Keys: []string{"**"}, Operations: []string{"sign", "verify", "public-key"}}})
	res := Reserved{CheckpointKey: "audit/checkpoint"}
	root := Identity{}
	tests := []struct {
		op    Operation
		key   string
		allow bool
	}{
		{OpSign, "audit/checkpoint", false},
		{OpVerify, "audit/checkpoint", true},
		{OpPublicKey, "audit/checkpoint", true},
		{OpSign, "audit/other", true},
	}
	for _, tt := range tests {
		req := Request{Op: tt.op, Key: tt.key}
		d, vs := p.Explain(root, req, res)
		if d.Allowed != tt.allow || p.Decide(root, req, res) != d {
			t.Errorf("%s %s: %+v, want allowed=%v", tt.op, tt.key, d, tt.allow)
		}
		if !tt.allow && (d.Reason != reservedReason || vs[0].Matched || !strings.HasPrefix(vs[0].Why, "would allow, but the key signs audit checkpoints")) {
			t.Errorf("%s %s: reason %q, verdict %+v", tt.op, tt.key, d.Reason, vs[0])
		}
		if !p.Decide(root, req, Reserved{}).Allowed {
			t.Errorf("%s %s denied without a reservation", tt.op, tt.key)
		}
	}
	if n := testing.AllocsPerRun(100, func() { p.Decide(root, Request{Op: OpSign, Key: "audit/checkpoint"}, res) }); n != 0 {
		t.Errorf("a reserved denial allocates %v times", n)
	}
}

func TestCheckReserved(t *testing.T) {
	res := Reserved{CheckpointKey: "audit/ckpt"}
	rules := []Rule{
		{Name: "exact", Keys: []string{"x", "audit/ckpt"}, Operations: []string{"verify", "sign"}},
		{Keys: []string{"audit/ckpt"}, Operations: []string{"sign"}}, // rule #2
		{Name: "wildcard", Keys: []string{"audit/*", "**"}, Operations: []string{"sign"}},
		{Name: "no sign", Keys: []string{"audit/ckpt"}, Operations: []string{"verify", "public-key"}},
	}
	errs := CheckReserved(rules, res)
	if len(errs) != 2 || !strings.HasPrefix(errs[0].Error(), `rule "exact": grants sign on "audit/ckpt", which is audit_checkpoint_key`) ||
		!strings.HasPrefix(errs[1].Error(), "rule #2: grants sign") || !errors.Is(errs[0], ErrInvalidPolicy) {
		t.Fatalf("CheckReserved = %v", errs)
	}
	if errs := CheckReserved(rules, Reserved{}); errs != nil {
		t.Fatalf("nothing reserved: %v", errs)
	}
}

// TestCredentialOnlyByUnit: the credential operation is granted to a unit a
// rule names, never to a uid (systemd asks as root); a rule granting it
// with no units says so.
func TestCredentialOnlyByUnit(t *testing.T) {
	rules := []Rule{
		{Name: "root", UIDs: []uint32{0}, Keys: []string{"**"}, Operations: []string{"credential"}},
		{Name: "pay", Units: []string{"payments.service"}, Keys: []string{"pay/*"}, Operations: []string{"credential"}, Context: map[string]string{"credential": "db"}},
	}
	p, err := Compile(rules, nil)
	if err != nil {
		t.Fatal(err)
	}
	if w := p.Warnings(); len(w) != 1 || !strings.Contains(w[0], "rule \"root\"") {
		t.Errorf("warnings %q", w)
	}
	for _, tt := range []struct {
		id   Identity
		req  Request
		want bool
	}{
		{Identity{UID: noID, GID: noID, Unit: "payments.service"}, Request{OpCredential, "pay/k", map[string]string{"unit": "payments.service", "credential": "db"}}, true},
		{Identity{UID: noID, GID: noID, Unit: "payments.service"}, Request{OpCredential, "pay/k", map[string]string{"unit": "payments.service", "credential": "other"}}, false},
		{Identity{UID: noID, GID: noID, Unit: "other.service"}, Request{OpCredential, "pay/k", map[string]string{"unit": "other.service", "credential": "db"}}, false},
		{Identity{UID: 0, GID: 0, Unit: "payments.service"}, Request{OpUnwrap, "pay/k", map[string]string{"credential": "db"}}, false},
		// Root's rule does not grant it, even to root in the unit.
		{Identity{UID: 0, GID: 0, Unit: "other.service"}, Request{OpCredential, "pay/k", map[string]string{"unit": "other.service", "credential": "db"}}, false},
		{Identity{UID: 0, GID: 0, Unit: "payments.service"}, Request{OpCredential, "pay/k", map[string]string{"unit": "payments.service", "credential": "db"}}, true},
	} {
		if d := p.Decide(tt.id, tt.req, Reserved{}); d.Allowed != tt.want {
			t.Errorf("%v %v: %+v, want allowed=%v", tt.id, tt.req, d, tt.want)
		}
	}
	if OpCredential.Admin() || !OpCredentialPut.Admin() || !OpCredential.CarriesContext() {
		t.Error("credential is a data operation with a context, credential.put an admin one")
	}
}
