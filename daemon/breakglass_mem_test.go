package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/keys/keystest"
	"github.com/keyward/keyward/policy"
)

const bgReqUID, bgApprUID = 3001, 3002

// bgService is a Service on store with one break-glass policy: bgReqUID
// may ask for unwrap on db/*, bgApprUID approves.
func bgService(t *testing.T, store keys.Backend, now func() time.Time) *Service {
	t.Helper()
	pol, err := config.CompilePolicy(config.Config{Breakglass: []config.Breakglass{{Name: "db", Keys: []string{"db/*"},
		Operations: []string{"unwrap"}, Requesters: policy.Subjects{UIDs: []uint32{bgReqUID}},
		Approvers: policy.Subjects{UIDs: []uint32{bgApprUID}}, MaxDuration: config.Duration{Duration: time.Hour}}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	svc := NewService(store, "mem", "test", pol, config.Defaults().Limits, log)
	svc.audit = &memTrail{}
	b, err := newBreakglass(t.Context(), store, "mem", "", pol, now, log, svc.audit)
	if err != nil {
		t.Fatal(err)
	}
	svc.bg = b
	return svc
}

func bgRequest(t *testing.T, svc *Service) string {
	t.Helper()
	g, err := svc.BreakglassRequest(asUID(bgReqUID), &pb.BreakglassRequestRequest{Policy: "db", Key: "db/a", Operation: "unwrap",
		DurationSeconds: 600, Reason: "INC-7"})
	if err != nil {
		t.Fatal(err)
	}
	return g.Id
}

// TestBreakglassSharedStore: two daemons on one device. Another daemon's
// approval and revocation take effect here within grantMaxAge (waited
// for, bounded only to end a hang).
func TestBreakglassSharedStore(t *testing.T) {
	store := keystest.NewMem()
	a, b := bgService(t, store, time.Now), bgService(t, store, time.Now)
	id := bgRequest(t, a)
	granted := func(svc *Service) bool {
		g, err := svc.authorizeGrant(asUID(bgReqUID), policy.OpUnwrap, "db/a", nil)
		return err == nil && g == id
	}
	if granted(b) {
		t.Fatal("granted while pending")
	}
	if _, err := a.BreakglassApprove(asUID(bgApprUID), &pb.BreakglassGrantRequest{Id: id}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the other daemon to honour the approval", func() bool { return granted(b) })
	if _, err := a.BreakglassRevoke(asUID(bgApprUID), &pb.BreakglassGrantRequest{Id: id}); err != nil {
		t.Fatal(err)
	}
	if granted(a) {
		t.Error("the revoking daemon still grants")
	}
	waitFor(t, "the other daemon to honour the revocation", func() bool { return !granted(b) })
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second) // ends a hang only
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited 30s for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// racingStore plays a second daemon that changes a grant between this
// daemon's read and its write, once.
type racingStore struct {
	*keystest.Mem
	once  sync.Once
	other func()
}

func (r *racingStore) PutGrant(ctx context.Context, id string, gen uint64, body []byte) error {
	if gen > 1 {
		r.once.Do(r.other)
	}
	return r.Mem.PutGrant(ctx, id, gen, body)
}

// TestBreakglassConflictRedecides: when another daemon revokes a grant
// between this daemon's read and its approval's write, the write loses the
// compare-and-swap, and the approval is decided again: refused, as the
// request was withdrawn (its record removed at once, never approved).
func TestBreakglassConflictRedecides(t *testing.T) {
	store := &racingStore{Mem: keystest.NewMem()}
	a, other := bgService(t, store, time.Now), bgService(t, store.Mem, time.Now)
	id := bgRequest(t, a)
	store.other = func() {
		if _, err := other.BreakglassRevoke(asUID(bgReqUID), &pb.BreakglassGrantRequest{Id: id}); err != nil {
			t.Errorf("the other daemon's revoke: %v", err)
		}
	}
	_, err := a.BreakglassApprove(asUID(bgApprUID), &pb.BreakglassGrantRequest{Id: id})
	if reasonOfStatus(err) != pb.ErrorReason_PERMISSION_DENIED.String() {
		t.Fatalf("approve after a concurrent revoke: %v, want PERMISSION_DENIED (no such grant any more)", err)
	}
	if recs, err := store.Grants(t.Context()); err != nil || len(recs) != 0 {
		t.Fatalf("records after a request withdrawn: %v %v, want none", recs, err)
	}
}

// TestBreakglassRequestLimits: every field of a request is bounded and
// checked before anything is stored.
func TestBreakglassRequestLimits(t *testing.T) {
	store := keystest.NewMem()
	svc := bgService(t, store, time.Now)
	long := make([]byte, maxReason+1)
	for i := range long {
		long[i] = 'x'
	}
	for _, tc := range []struct {
		name string
		edit func(r *pb.BreakglassRequestRequest)
		want pb.ErrorReason
	}{
		{"unknown policy", func(r *pb.BreakglassRequestRequest) { r.Policy = "nope" }, pb.ErrorReason_PERMISSION_DENIED},
		{"admin op", func(r *pb.BreakglassRequestRequest) { r.Operation = "key.destroy" }, pb.ErrorReason_INVALID_REQUEST},
		{"op not in policy", func(r *pb.BreakglassRequestRequest) { r.Operation = "sign" }, pb.ErrorReason_INVALID_REQUEST},
		{"key not in policy", func(r *pb.BreakglassRequestRequest) { r.Key = "other/a" }, pb.ErrorReason_INVALID_REQUEST},
		{"bad key", func(r *pb.BreakglassRequestRequest) { r.Key = "DB/../a" }, pb.ErrorReason_INVALID_KEY_NAME},
		{"no duration", func(r *pb.BreakglassRequestRequest) { r.DurationSeconds = 0 }, pb.ErrorReason_INVALID_REQUEST},
		{"over max_duration", func(r *pb.BreakglassRequestRequest) { r.DurationSeconds = 3601 }, pb.ErrorReason_INVALID_REQUEST},
		{"huge duration", func(r *pb.BreakglassRequestRequest) { r.DurationSeconds = 1 << 63 }, pb.ErrorReason_INVALID_REQUEST},
		{"no reason", func(r *pb.BreakglassRequestRequest) { r.Reason = "" }, pb.ErrorReason_INVALID_REQUEST},
		{"long reason", func(r *pb.BreakglassRequestRequest) { r.Reason = string(long) }, pb.ErrorReason_INVALID_REQUEST},
		{"control in reason", func(r *pb.BreakglassRequestRequest) { r.Reason = "INC\n1" }, pb.ErrorReason_INVALID_REQUEST},
		{"reserved context", func(r *pb.BreakglassRequestRequest) {
			r.Context = map[string]string{keys.ReservedContextPrefix + "x": "y"}
		}, pb.ErrorReason_INVALID_REQUEST},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &pb.BreakglassRequestRequest{Policy: "db", Key: "db/a", Operation: "unwrap", DurationSeconds: 600, Reason: "INC-8"}
			tc.edit(r)
			if _, err := svc.BreakglassRequest(asUID(bgReqUID), r); reasonOfStatus(err) != tc.want.String() {
				t.Errorf("got %v, want %v", err, tc.want)
			}
		})
	}
	if recs, _ := store.Grants(t.Context()); len(recs) != 0 {
		t.Errorf("%d grants stored by refused requests", len(recs))
	}
	for range maxPendingPerRequester {
		bgRequest(t, svc)
	}
	r := &pb.BreakglassRequestRequest{Policy: "db", Key: "db/a", Operation: "unwrap", DurationSeconds: 600, Reason: "INC-9"}
	if _, err := svc.BreakglassRequest(asUID(bgReqUID), r); reasonOfStatus(err) != pb.ErrorReason_QUOTA_EXCEEDED.String() {
		t.Errorf("request past %d pending: %v", maxPendingPerRequester, err)
	}
	if _, err := svc.BreakglassRequest(asUID(bgApprUID), r); reasonOfStatus(err) != pb.ErrorReason_PERMISSION_DENIED.String() {
		t.Errorf("request by a non-requester: %v", err)
	}
}

// TestBreakglassPolicyRemoved: a reload that removes a grant's policy, or
// narrows it so that it no longer covers the grant, ends what the grant
// allows at once; putting the policy back restores it (the grant itself
// is unchanged in the store). A reload adding [[breakglass]] on a backend
// that keeps no grants is refused.
func TestBreakglassPolicyRemoved(t *testing.T) {
	svc := bgService(t, keystest.NewMem(), time.Now)
	id := bgRequest(t, svc)
	if _, err := svc.BreakglassApprove(asUID(bgApprUID), &pb.BreakglassGrantRequest{Id: id}); err != nil {
		t.Fatal(err)
	}
	granted := func() bool {
		g, err := svc.authorizeGrant(asUID(bgReqUID), policy.OpUnwrap, "db/a", nil)
		return err == nil && g == id
	}
	if !granted() {
		t.Fatal("not granted while active")
	}
	full := svc.pol.Load()
	narrowed, err := config.CompilePolicy(config.Config{Breakglass: []config.Breakglass{{Name: "db", Keys: []string{"db/other"},
		Operations: []string{"unwrap"}, Requesters: policy.Subjects{UIDs: []uint32{bgReqUID}},
		Approvers: policy.Subjects{UIDs: []uint32{bgApprUID}}, MaxDuration: config.Duration{Duration: time.Hour}}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, pol := range map[string]*policy.Policy{"removed": full.WithBreakglass(nil), "narrowed": narrowed} {
		svc.SetPolicy(pol)
		if granted() {
			t.Errorf("%s: the grant still allows", name)
		}
	}
	svc.SetPolicy(full)
	if !granted() {
		t.Error("the policy is back, the grant does not allow")
	}
	plain := NewService(noGrantStore{keystest.NewMem()}, "mem", "test", full, config.Defaults().Limits, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := plain.breakglassFits(full); !errors.Is(err, ErrBreakglassStore) {
		t.Errorf("reload with [[breakglass]] on a backend without grants: %v", err)
	}
}

// noGrantStore is a backend that keeps no grants.
type noGrantStore struct{ keys.Backend }
