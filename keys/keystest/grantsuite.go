package keystest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/keyward/keyward/keys"
)

// testGrants checks keys.GrantStore, skipped on a backend without it. Each
// case uses grant ids of its own and deletes them when it ends: the store
// may be shared with other groups, tests and test binaries, and its records
// count towards keys.MaxGrants.
//
// Long on purpose: a list of t.Run conformance cases, read top to bottom.
// testGrants checks keys.GrantStore, skipped on a backend without it. Each
// case uses grant ids of its own and deletes them when it ends: the store
// may be shared with other groups, tests and test binaries, and its records
// count towards keys.MaxGrants.
func testGrants(t *testing.T, be keys.Backend, h Hooks) {
	if _, ok := be.(keys.GrantStore); !ok {
		t.Skip("backend keeps no grant records (no keys.GrantStore)")
	}
	gs := func() keys.GrantStore { return be.(keys.GrantStore) }
	// A case gets the backend by reference: reopening replaces it for the
	// cases after it, as for gs.
	for _, c := range []struct {
		name string
		run  func(t *testing.T, be *keys.Backend, gs func() keys.GrantStore, h Hooks)
	}{
		{"round_trip", grantRoundTrip},
		{"generation_conflict", grantGenerationConflict},
		{"one_of_concurrent_wins", grantOneOfConcurrentWins},
		{"delete", grantDelete},
		{"invalid", grantInvalid},
		{"count_limit", grantCountLimit},
		{"reopen", grantReopen},
		{"read_only", grantReadOnly},
		{"tampered", grantTampered},
	} {
		t.Run(c.name, func(t *testing.T) { c.run(t, &be, gs, h) })
	}
}

func grantRoundTrip(t *testing.T, be *keys.Backend, gs func() keys.GrantStore, h Hooks) {
	id := newGrantID(t, gs)
	putGrant(t, gs(), id, 1, []byte(`{"state":"pending"}`))
	wantGrant(t, gs(), id, 1, []byte(`{"state":"pending"}`))
	putGrant(t, gs(), id, 2, []byte(`{"state":"active"}`))
	wantGrant(t, gs(), id, 2, []byte(`{"state":"active"}`)) // only the newest
	big := bytes.Repeat([]byte{0, 0xff, '"', '\n'}, keys.MaxGrantBody/4)
	putGrant(t, gs(), id, 3, big)
	wantGrant(t, gs(), id, 3, big)
	empty := newGrantID(t, gs)
	putGrant(t, gs(), empty, 1, nil)
	wantGrant(t, gs(), empty, 1, []byte{})
}

func grantGenerationConflict(t *testing.T, be *keys.Backend, gs func() keys.GrantStore, h Hooks) {
	id := newGrantID(t, gs)
	for _, gen := range []uint64{0, 2, 1 << 63} {
		err := gs().PutGrant(t.Context(), id, gen, []byte("x"))
		wantErr(t, err, fmt.Sprintf("PutGrant of a new id at generation %d", gen), keys.ErrGrantConflict)
	}
	wantNoGrant(t, gs(), id)
	putGrant(t, gs(), id, 1, []byte("one"))
	for _, gen := range []uint64{0, 1, 3} {
		err := gs().PutGrant(t.Context(), id, gen, []byte("stale"))
		wantErr(t, err, fmt.Sprintf("PutGrant at generation %d over generation 1", gen), keys.ErrGrantConflict)
	}
	wantGrant(t, gs(), id, 1, []byte("one"))
	putGrant(t, gs(), id, 2, []byte("two"))
	wantGrant(t, gs(), id, 2, []byte("two"))
}

func grantOneOfConcurrentWins(t *testing.T, be *keys.Backend, gs func() keys.GrantStore, h Hooks) {
	id := newGrantID(t, gs)
	const writers = 6
	errs := make([]error, writers)
	var wg sync.WaitGroup
	for i := range writers {
		wg.Go(func() { errs[i] = gs().PutGrant(t.Context(), id, 1, fmt.Appendf(nil, "writer %d", i)) })
	}
	wg.Wait()
	won := -1
	for i, err := range errs {
		switch {
		case err == nil && won >= 0:
			t.Errorf("writers %d and %d both stored generation 1", won, i)
		case err == nil:
			won = i
		default:
			wantErr(t, err, fmt.Sprintf("writer %d, which lost", i), keys.ErrGrantConflict)
		}
	}
	if won < 0 {
		t.Fatal("no writer stored generation 1")
	}
	wantGrant(t, gs(), id, 1, fmt.Appendf(nil, "writer %d", won))
}

func grantDelete(t *testing.T, be *keys.Backend, gs func() keys.GrantStore, h Hooks) {
	id, other := newGrantID(t, gs), newGrantID(t, gs)
	putGrant(t, gs(), id, 1, []byte("one"))
	putGrant(t, gs(), id, 2, []byte("two"))
	putGrant(t, gs(), other, 1, []byte("kept"))
	must(t, gs().DeleteGrant(t.Context(), id), "DeleteGrant(%s)", id)
	wantNoGrant(t, gs(), id)
	wantGrant(t, gs(), other, 1, []byte("kept"))
	must(t, gs().DeleteGrant(t.Context(), id), "DeleteGrant of a deleted id")
	must(t, gs().DeleteGrant(t.Context(), newGrantID(t, gs)), "DeleteGrant of an id never stored")
	err := gs().PutGrant(t.Context(), id, 3, []byte("three"))
	wantErr(t, err, "PutGrant(gen 3) after DeleteGrant", keys.ErrGrantConflict)
	putGrant(t, gs(), id, 1, []byte("again")) // a deleted id starts over
	wantGrant(t, gs(), id, 1, []byte("again"))
}

func grantInvalid(t *testing.T, be *keys.Backend, gs func() keys.GrantStore, h Hooks) {
	for _, id := range []string{"", "A", "a_b", "a/b", "../x", "a.b", "a b", "é", strings.Repeat("a", keys.MaxGrantID+1)} {
		err := gs().PutGrant(t.Context(), id, 1, []byte("x"))
		wantErr(t, err, fmt.Sprintf("PutGrant(%q)", id), keys.ErrInvalidArgument)
		err = gs().DeleteGrant(t.Context(), id)
		wantErr(t, err, fmt.Sprintf("DeleteGrant(%q)", id), keys.ErrInvalidArgument)
	}
	longest := strings.Repeat("a", keys.MaxGrantID-9) + fmt.Sprintf("-%08x", rand.Uint32())
	t.Cleanup(func() { gs().DeleteGrant(context.Background(), longest) })
	putGrant(t, gs(), longest, 1, []byte("longest id"))
	wantGrant(t, gs(), longest, 1, []byte("longest id"))
	id := newGrantID(t, gs)
	err := gs().PutGrant(t.Context(), id, 1, make([]byte, keys.MaxGrantBody+1))
	wantErr(t, err, "PutGrant of keys.MaxGrantBody+1 bytes", keys.ErrInvalidArgument)
	wantNoGrant(t, gs(), id)
}

func grantCountLimit(t *testing.T, be *keys.Backend, gs func() keys.GrantStore, h Hooks) {
	if h.LimitGrants == nil {
		t.Skip("no LimitGrants hook")
	}
	stored, err := gs().Grants(t.Context())
	must(t, err, "Grants")
	a, b := newGrantID(t, gs), newGrantID(t, gs)
	h.LimitGrants(t, *be, len(stored)+1)
	putGrant(t, gs(), a, 1, []byte("a"))
	err = gs().PutGrant(t.Context(), b, 1, []byte("b"))
	wantErr(t, err, "PutGrant of a new id over the limit", keys.ErrInvalidArgument)
	wantNoGrant(t, gs(), b)
	putGrant(t, gs(), a, 2, []byte("a2")) // a stored id still changes
	must(t, gs().DeleteGrant(t.Context(), a), "DeleteGrant(%s)", a)
	putGrant(t, gs(), b, 1, []byte("b"))
}

func grantReopen(t *testing.T, be *keys.Backend, gs func() keys.GrantStore, h Hooks) {
	if h.Reopen == nil {
		t.Skip("no Reopen hook")
	}
	id, gone := newGrantID(t, gs), newGrantID(t, gs)
	putGrant(t, gs(), id, 1, []byte("one"))
	putGrant(t, gs(), id, 2, []byte("two"))
	putGrant(t, gs(), gone, 1, []byte("deleted"))
	must(t, gs().DeleteGrant(t.Context(), gone), "DeleteGrant(%s)", gone)
	*be = h.Reopen(t, *be) // gs reads the reopened backend
	wantGrant(t, gs(), id, 2, []byte("two"))
	wantNoGrant(t, gs(), gone)
	err := gs().PutGrant(t.Context(), id, 2, []byte("stale"))
	wantErr(t, err, "PutGrant(gen 2) after reopening", keys.ErrGrantConflict)
	putGrant(t, gs(), id, 3, []byte("three"))
	wantGrant(t, gs(), id, 3, []byte("three"))
}

func grantReadOnly(t *testing.T, be *keys.Backend, gs func() keys.GrantStore, h Hooks) {
	if h.ReadOnly == nil {
		t.Skip("no ReadOnly hook")
	}
	id := newGrantID(t, gs)
	putGrant(t, gs(), id, 1, []byte("one"))
	ro, ok := h.ReadOnly(t, *be).(keys.GrantStore)
	if !ok {
		t.Fatal("the read-only instance keeps no grants")
	}
	wantGrant(t, ro, id, 1, []byte("one"))
	wantErr(t, ro.PutGrant(t.Context(), id, 2, []byte("two")), "PutGrant read-only", keys.ErrReadOnly)
	wantErr(t, ro.DeleteGrant(t.Context(), id), "DeleteGrant read-only", keys.ErrReadOnly)
	wantGrant(t, gs(), id, 1, []byte("one"))
}

func grantTampered(t *testing.T, be *keys.Backend, gs func() keys.GrantStore, h Hooks) {
	if h.TamperGrant == nil {
		t.Skip("no TamperGrant hook")
	}
	id := newGrantID(t, gs)
	putGrant(t, gs(), id, 1, []byte(`{"until":"2026-01-01T00:00:00Z"}`))
	putGrant(t, gs(), id, 2, []byte(`{"revoked":true}`))
	h.TamperGrant(t, *be, id)
	_, err := gs().Grants(t.Context())
	wantErr(t, err, "Grants with a tampered record", keys.ErrIntegrity)
	// Deleting the damaged grant is how an operator clears it.
	must(t, gs().DeleteGrant(t.Context(), id), "DeleteGrant of the tampered grant")
	wantNoGrant(t, gs(), id)
}
func newGrantID(t *testing.T, gs func() keys.GrantStore) string {
	t.Helper()
	id := fmt.Sprintf("keystest-%016x", rand.Uint64())
	if err := keys.ValidGrantID(id); err != nil {
		t.Fatalf("keystest made an invalid grant id: %v", err)
	}
	t.Cleanup(func() {
		if err := gs().DeleteGrant(context.Background(), id); err != nil && !errors.Is(err, keys.ErrReadOnly) {
			t.Errorf("DeleteGrant(%s) at the end: %v", id, err)
		}
	})
	return id
}

func putGrant(t *testing.T, gs keys.GrantStore, id string, gen uint64, body []byte) {
	t.Helper()
	must(t, gs.PutGrant(t.Context(), id, gen, body), "PutGrant(%s, gen %d)", id, gen)
}

// findGrant returns id's record among every stored grant.
func findGrant(t *testing.T, gs keys.GrantStore, id string) (keys.GrantRecord, bool) {
	t.Helper()
	all, err := gs.Grants(t.Context())
	must(t, err, "Grants")
	seen := map[string]bool{}
	var out keys.GrantRecord
	found := false
	for _, g := range all {
		if seen[g.ID] {
			t.Errorf("Grants lists %s twice", g.ID)
		}
		seen[g.ID] = true
		if g.ID == id {
			out, found = g, true
		}
	}
	return out, found
}

func wantGrant(t *testing.T, gs keys.GrantStore, id string, gen uint64, body []byte) {
	t.Helper()
	g, ok := findGrant(t, gs, id)
	switch {
	case !ok:
		t.Errorf("Grants: %s missing, want generation %d", id, gen)
	case g.Gen != gen || !bytes.Equal(g.Body, body):
		t.Errorf("Grants: %s at generation %d with %d bytes, want generation %d with %d bytes (%q)", id, g.Gen, len(g.Body), gen, len(body), trim(body))
	}
}

func wantNoGrant(t *testing.T, gs keys.GrantStore, id string) {
	t.Helper()
	if g, ok := findGrant(t, gs, id); ok {
		t.Errorf("Grants: %s present at generation %d, want none", id, g.Gen)
	}
}

func trim(b []byte) []byte {
	if len(b) > 32 {
		return b[:32]
	}
	return b
}
