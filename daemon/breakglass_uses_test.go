package daemon

import (
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/internal/testutil"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/keys/keystest"
	"github.com/keyward/keyward/policy"
)

// TestGrantUsesSummary: the first use of a grant is its own line; later
// uses are one summary line per grant and sweep, with their count; a quiet
// grant gets no line; a grant gone from the view is forgotten.
func TestGrantUsesSummary(t *testing.T) {
	var buf testutil.SyncBuffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	var u grantUses
	g1 := &grant{id: "g1", Policy: "db", Key: "db/a"}
	g2 := &grant{id: "g2", Policy: "db", Key: "db/b"}
	if !u.used(g1, 7, policy.OpUnwrap) || u.used(g1, 7, policy.OpUnwrap) || u.used(g1, 7, policy.OpUnwrap) {
		t.Fatal("only the first use of g1 is a first")
	}
	if !u.used(g2, 7, policy.OpUnwrap) {
		t.Fatal("g2's first use")
	}
	u.flush(log, []*grant{g1, g2}, 15*time.Second)
	out := buf.String()
	if strings.Count(out, msgBreakglassUsed) != 1 || !strings.Contains(out, "grant=g1") || !strings.Contains(out, "uses=2") {
		t.Errorf("summary after 2 more uses of g1 and none of g2:\n%s", out)
	}
	u.flush(log, []*grant{g1}, 15*time.Second)
	if strings.Count(buf.String(), msgBreakglassUsed) != 1 {
		t.Errorf("a quiet sweep wrote a line:\n%s", buf.String())
	}
	if _, ok := u.seen["g2"]; ok {
		t.Error("g2, gone from the view, is remembered")
	}
	if u.used(g1, 7, policy.OpUnwrap) {
		t.Error("g1's use after a summary counted as a first")
	}
}

// TestWithdrawnOnSharedStore: a request withdrawn through another daemon
// (its records removed at once) is not tampering for a daemon that saw it
// pending, while a grant it saw active going missing still is; and the
// withdrawn one put back is refused.
func TestWithdrawnOnSharedStore(t *testing.T) {
	store := keystest.NewMem()
	a, other := bgService(t, store, time.Now), bgService(t, store, time.Now)
	id := bgRequest(t, a)
	recs, _ := store.Grants(t.Context())
	if _, err := other.BreakglassRevoke(asUID(bgReqUID), &pb.BreakglassGrantRequest{Id: id}); err != nil {
		t.Fatal(err)
	}
	if left, _ := store.Grants(t.Context()); len(left) != 0 {
		t.Fatalf("withdrawn request still stored: %v", left)
	}
	if _, err := a.bg.grants.current(t.Context(), true); err != nil {
		t.Fatalf("the daemon that saw it pending: %v", err)
	}
	if err := store.PutGrant(t.Context(), id, 1, recs[0].Body); err != nil {
		t.Fatal(err)
	}
	if _, err := a.bg.grants.current(t.Context(), true); !errors.Is(err, keys.ErrIntegrity) {
		t.Errorf("a withdrawn request put back: %v, want an integrity failure", err)
	}
	store.DeleteGrant(t.Context(), id)

	id2 := bgRequest(t, a)
	if _, err := a.BreakglassApprove(asUID(bgApprUID), &pb.BreakglassGrantRequest{Id: id2}); err != nil {
		t.Fatal(err)
	}
	store.DeleteGrant(t.Context(), id2)
	if _, err := a.bg.grants.current(t.Context(), true); !errors.Is(err, keys.ErrIntegrity) {
		t.Errorf("an active grant's records deleted: %v, want an integrity failure", err)
	}
}
