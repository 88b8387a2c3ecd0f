package daemon

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/keys/keystest"
	"github.com/keyward/keyward/policy"
)

// strangerUID is named by no rule and no break-glass policy.
const strangerUID = 3999

// heldStore is the in-memory store whose reads wait, once armed, until
// the test releases them: a slow device, without depending on time.
type heldStore struct {
	*keystest.Mem
	mu      sync.Mutex
	hold    chan struct{}
	entered chan struct{}
}

func (h *heldStore) arm() (release func(), entered <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.hold, h.entered = make(chan struct{}), make(chan struct{}, 1)
	hold := h.hold
	return func() { close(hold) }, h.entered
}

func (h *heldStore) Grants(ctx context.Context) ([]keys.GrantRecord, error) {
	h.mu.Lock()
	hold, entered := h.hold, h.entered
	h.mu.Unlock()
	if hold != nil {
		select {
		case entered <- struct{}{}:
		default:
		}
		<-hold
	}
	return h.Mem.Grants(ctx)
}

// within fails t unless fn returns within 30 s (a bound that only ends a
// hang: fn must not wait for anything the test holds).
func within(t *testing.T, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { fn(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s waited 30 s: blocked behind the store read", what)
	}
}

// TestBreakglassStrangerNoRead: approve, deny and revoke by a caller no
// party to the grant are answered from the daemon's view, with no store
// read, for an unknown id and for an existing grant alike; ids of another
// form are refused as invalid; each refusal counts towards
// max_denied_per_minute. A party's change reads the store.
func TestBreakglassStrangerNoRead(t *testing.T) {
	svc := bgService(t, keystest.NewMem(), time.Now)
	id := bgRequest(t, svc)
	reads := func() int64 { return svc.bg.grants.test.reads.Load() }
	before := reads()
	stranger := asUID(strangerUID)
	calls := map[string]func(context.Context, *pb.BreakglassGrantRequest) (*pb.BreakglassGrant, error){
		"approve": svc.BreakglassApprove, "deny": svc.BreakglassDeny, "revoke": svc.BreakglassRevoke,
	}
	for name, call := range calls {
		for _, gid := range []string{newGrantID(), id} {
			if _, err := call(stranger, &pb.BreakglassGrantRequest{Id: gid}); reasonOfStatus(err) != pb.ErrorReason_PERMISSION_DENIED.String() {
				t.Errorf("stranger's %s of %s: %v, want PERMISSION_DENIED", name, gid, err)
			}
		}
		for _, bad := range []string{"", "x", strings.ToUpper(id), id + "0", "hsm-0123456789abcdef0123456789ab", strings.Repeat("a", 64)} {
			if _, err := call(stranger, &pb.BreakglassGrantRequest{Id: bad}); reasonOfStatus(err) != pb.ErrorReason_INVALID_REQUEST.String() {
				t.Errorf("%s of id %q: %v, want INVALID_REQUEST", name, bad, err)
			}
		}
	}
	if got := reads() - before; got != 0 {
		t.Errorf("a stranger's changes read the store %d times, want 0", got)
	}
	if _, err := svc.BreakglassRevoke(asUID(bgReqUID), &pb.BreakglassGrantRequest{Id: id}); err != nil {
		t.Fatal(err)
	}
	if reads() == before {
		t.Error("the requester's revoke did not read the store (the counter counts nothing)")
	}
	limit := svc.lim.Load().MaxDeniedPerMinute
	n := 2 * len(calls) // refused above
	for ; !svc.abuse.over(callerOf(identityOf(t, stranger)), abuseDenied, limit) && n <= 2*limit; n++ {
		svc.BreakglassApprove(stranger, &pb.BreakglassGrantRequest{Id: newGrantID()})
	}
	if n > limit+1 {
		t.Errorf("a stranger refused %d times is not over max_denied_per_minute (%d)", n, limit)
	}
}

func identityOf(t *testing.T, ctx context.Context) policy.Identity {
	t.Helper()
	id, ok := identityFrom(ctx)
	if !ok {
		t.Fatal("no identity")
	}
	return id
}

// TestBreakglassReadNotBlocking: while a store read is in flight (held by
// the test), a call that depends on the grants is decided from the young
// view at once, and the gauges read without waiting; a second change that
// needs a fresh read joins the one in flight.
func TestBreakglassReadNotBlocking(t *testing.T) {
	store := &heldStore{Mem: keystest.NewMem()}
	svc := bgService(t, store, time.Now)
	svc.bg.grants.test.maxAge = time.Hour // the view stays young whatever the machine's speed
	id := bgRequest(t, svc)
	if err := approveAs(svc, id); err != nil {
		t.Fatal(err)
	}
	before := svc.bg.grants.test.reads.Load()
	release, entered := store.arm()
	revoked := make(chan error, 1)
	go func() { revoked <- revokeAs(svc, id) }()
	select {
	case <-entered:
	case <-time.After(30 * time.Second):
		t.Fatal("the revoke never read the store")
	}
	within(t, "a data call", func() {
		if !grantedTo(svc, id) {
			t.Error("the active grant was not honoured during the read")
		}
	})
	within(t, "the view's state", func() {
		if _, young, err := svc.bg.grants.cached(); !young || err != nil {
			t.Errorf("view young %v, err %v", young, err)
		}
	})
	release()
	if err := <-revoked; err != nil {
		t.Fatal(err)
	}
	if grantedTo(svc, id) {
		t.Error("still granted after the revocation")
	}
	if got := svc.bg.grants.test.reads.Load() - before; got != 1 {
		t.Errorf("%d store reads for one change, want 1", got)
	}
}

// TestBreakglassContextBounds: a grant fixes at most 8 context pairs of
// at most 256 bytes each; past that the request is refused before
// anything is recorded or stored.
func TestBreakglassContextBounds(t *testing.T) {
	pairs := func(n, size int) map[string]string {
		c := map[string]string{}
		for i := range n {
			k := fmt.Sprintf("k%d", i)
			c[k+strings.Repeat("k", max(0, size-len(k)))] = strings.Repeat("v", size)
		}
		return c
	}
	for _, tc := range []struct {
		name string
		ctx  map[string]string
		want pb.ErrorReason
	}{
		{"8 pairs of 256 bytes", pairs(8, 256), pb.ErrorReason_ERROR_REASON_UNSPECIFIED},
		{"9 pairs", pairs(9, 4), pb.ErrorReason_INVALID_REQUEST},
		{"a 257-byte key", map[string]string{strings.Repeat("k", 257): "v"}, pb.ErrorReason_INVALID_REQUEST},
		{"a 257-byte value", map[string]string{"app": strings.Repeat("v", 257)}, pb.ErrorReason_INVALID_REQUEST},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := keystest.NewMem()
			svc := bgService(t, store, time.Now)
			_, err := svc.BreakglassRequest(asUID(bgReqUID), &pb.BreakglassRequestRequest{Policy: "db", Key: "db/a", Operation: "unwrap",
				DurationSeconds: 600, Reason: "INC-11", Context: tc.ctx})
			want := "OK"
			if tc.want != pb.ErrorReason_ERROR_REASON_UNSPECIFIED {
				want = tc.want.String()
			}
			if got := reasonOfStatus(err); got != want {
				t.Fatalf("got %v, want %s", err, want)
			}
			recs, _ := store.Grants(t.Context())
			if stored := len(recs) == 1; stored != (want == "OK") {
				t.Errorf("%d grants stored", len(recs))
			}
			if want != "OK" && len(svc.audit.(*memTrail).results()) != 0 {
				t.Errorf("records of a refused request: %q", svc.audit.(*memTrail).results())
			}
		})
	}
}
