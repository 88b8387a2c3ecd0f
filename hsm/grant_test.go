package hsm_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/keyward/keyward/hsm"
	"github.com/keyward/keyward/keys"
)

// grantID returns a fresh grant id, deleted through tk when t ends.
func grantID(t *testing.T, tk *hsm.Token) string {
	t.Helper()
	id := fmt.Sprintf("hsm-%016x", rand.Uint64())
	t.Cleanup(func() {
		if err := tk.DeleteGrant(context.Background(), id); err != nil {
			t.Errorf("DeleteGrant(%s): %v", id, err)
		}
	})
	return id
}

// grantOf returns id's record as tk reads it.
func grantOf(t *testing.T, tk *hsm.Token, id string) (keys.GrantRecord, bool) {
	t.Helper()
	all, err := tk.Grants(t.Context())
	if err != nil {
		t.Fatalf("Grants: %v", err)
	}
	for _, g := range all {
		if g.ID == id {
			return g, true
		}
	}
	return keys.GrantRecord{}, false
}

func wantGrantAt(t *testing.T, tk *hsm.Token, id string, gen uint64, body string) {
	t.Helper()
	if g, ok := grantOf(t, tk, id); !ok || g.Gen != gen || string(g.Body) != body {
		t.Fatalf("grant %s = %+v (found %v), want generation %d %q", id, g, ok, gen, body)
	}
}

// TestGrantsSharedHSM: two daemons on one HSM (nothing serialising their
// changes) see each other's grants at once, and a generation one stored
// is a conflict for the other.
func TestGrantsSharedHSM(t *testing.T) {
	ctx := t.Context()
	a, b := open(t, nil), open(t, nil)
	a.ActAsSharedHSM(t)
	b.ActAsSharedHSM(t)
	id := grantID(t, a)
	if err := a.PutGrant(ctx, id, 1, []byte("requested")); err != nil {
		t.Fatal(err)
	}
	wantGrantAt(t, b, id, 1, "requested")
	if err := b.PutGrant(ctx, id, 2, []byte("approved")); err != nil {
		t.Fatal(err)
	}
	wantGrantAt(t, a, id, 2, "approved")
	if err := a.PutGrant(ctx, id, 2, []byte("denied")); !errors.Is(err, keys.ErrGrantConflict) {
		t.Fatalf("A stores generation 2 over B's: %v, want ErrGrantConflict", err)
	}
	if err := a.PutGrant(ctx, id, 3, []byte("revoked")); err != nil {
		t.Fatal(err)
	}
	wantGrantAt(t, b, id, 3, "revoked")
	if err := b.DeleteGrant(ctx, id); err != nil {
		t.Fatal(err)
	}
	if g, ok := grantOf(t, a, id); ok {
		t.Fatalf("A still sees %+v after B deleted it", g)
	}
}

// TestGrantClaims: of two daemons on a shared HSM storing one generation
// of one grant at once, exactly one succeeds. Daemon B stores while daemon
// A is between the steps of its publication (claimed, checked): B backs off
// with ErrGrantConflict, A's record is the one both read. A change that
// built on a generation deleted meanwhile backs off too.
func TestGrantClaims(t *testing.T) {
	ctx := t.Context()
	a, b := open(t, nil), open(t, nil)
	a.ActAsSharedHSM(t)
	b.ActAsSharedHSM(t)
	defer a.SetClaimHook(nil)
	for _, tc := range []struct {
		stage string
		gen   uint64
	}{{"claimed", 1}, {"checked", 1}, {"claimed", 2}, {"checked", 2}} {
		t.Run(fmt.Sprintf("%s_gen%d", tc.stage, tc.gen), func(t *testing.T) {
			id := grantID(t, a)
			if tc.gen == 2 {
				if err := a.PutGrant(ctx, id, 1, []byte("one")); err != nil {
					t.Fatal(err)
				}
			}
			var bErr error
			fired := false
			a.SetClaimHook(func(stage, name string) {
				if stage != tc.stage || name != "grant:"+id || fired {
					return
				}
				fired = true
				bErr = b.PutGrant(ctx, id, tc.gen, []byte("from b"))
			})
			aErr := a.PutGrant(ctx, id, tc.gen, []byte("from a"))
			a.SetClaimHook(nil)
			if !fired {
				t.Fatal("the hook never ran")
			}
			if aErr != nil || !errors.Is(bErr, keys.ErrGrantConflict) {
				t.Fatalf("A: %v, B: %v; want A to win and B ErrGrantConflict", aErr, bErr)
			}
			for _, tk := range []*hsm.Token{a, b} {
				wantGrantAt(t, tk, id, tc.gen, "from a")
			}
		})
	}
	t.Run("deleted_meanwhile", func(t *testing.T) {
		id := grantID(t, a)
		if err := a.PutGrant(ctx, id, 1, []byte("one")); err != nil {
			t.Fatal(err)
		}
		var delErr error
		a.SetClaimHook(func(stage, name string) {
			if stage == "claimed" && name == "grant:"+id && delErr == nil {
				delErr = b.DeleteGrant(ctx, id)
				if delErr == nil {
					delErr = errors.New("done")
				}
			}
		})
		err := a.PutGrant(ctx, id, 2, []byte("two"))
		a.SetClaimHook(nil)
		if !errors.Is(err, keys.ErrGrantConflict) || delErr.Error() != "done" {
			t.Fatalf("A stores generation 2 of a grant B deleted meanwhile: %v (delete: %v), want ErrGrantConflict", err, delErr)
		}
		if g, ok := grantOf(t, b, id); ok {
			t.Fatalf("deleted grant back: %+v", g)
		}
	})
}

// TestGrantRecordsBound: a grant record verifies only as the record of its
// own id, under the grant label, as a record (not a claim); a key record's
// bytes are never a grant record, nor a grant record's a key record. Any
// such object fails Grants as a whole with ErrIntegrity.
func TestGrantRecordsBound(t *testing.T) {
	ctx := t.Context()
	tk := open(t, func(c *hsm.Config) { c.MetadataMaxAge = -1 })
	src := grantID(t, tk)
	if err := tk.PutGrant(ctx, src, 1, []byte(`{"grant":"source"}`)); err != nil {
		t.Fatal(err)
	}
	grantRaw, err := tk.StoredGrant(ctx, src)
	if err != nil || len(grantRaw) != 1 {
		t.Fatalf("stored grant: %d objects, %v", len(grantRaw), err)
	}
	key := fmt.Sprintf("grantbound%d/k", rand.Uint32())
	if _, err := tk.CreateKey(ctx, key, keys.AES256GCM); err != nil {
		t.Fatal(err)
	}
	keyRaw, err := tk.StoredRecord(ctx, key)
	if err != nil || len(keyRaw) != 1 {
		t.Fatalf("stored key record: %d objects, %v", len(keyRaw), err)
	}
	for _, tc := range []struct {
		name string
		raw  []byte
	}{
		{"another_grants_record", grantRaw[0]},
		{"key_record", keyRaw[0]},
		{"magic_of_a_grant_on_a_key_record", append([]byte("KWG1"), keyRaw[0][4:]...)},
		{"empty", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := grantID(t, tk)
			if err := tk.PlantGrantRecord(ctx, id, tc.raw); err != nil {
				t.Fatal(err)
			}
			if _, err := tk.Grants(ctx); !errors.Is(err, keys.ErrIntegrity) {
				t.Fatalf("Grants with a planted record: %v, want ErrIntegrity", err)
			}
			if err := tk.PutGrant(ctx, id, 1, []byte("x")); !errors.Is(err, keys.ErrIntegrity) {
				t.Fatalf("PutGrant over a planted record: %v, want ErrIntegrity", err)
			}
			if f, ok := doctorFinding(t, tk, "keyward:grant:"+id); !ok || !f.Weak {
				t.Fatalf("doctor on a planted grant record: %+v (found %v), want a weak finding", f, ok)
			}
			if err := tk.DeleteGrant(ctx, id); err != nil {
				t.Fatal(err)
			}
			if _, err := tk.Grants(ctx); err != nil {
				t.Fatalf("Grants once the planted record is deleted: %v", err)
			}
		})
	}
	t.Run("grant_record_as_key_record", func(t *testing.T) {
		name := fmt.Sprintf("grantbound%d/k", rand.Uint32())
		if err := tk.PlantKeyRecord(t, ctx, name, grantRaw[0]); err != nil {
			t.Fatal(err)
		}
		if _, err := tk.DescribeKey(ctx, name); !errors.Is(err, keys.ErrIntegrity) {
			t.Fatalf("DescribeKey of a grant record planted as a key record: %v, want ErrIntegrity", err)
		}
	})
	if infos, err := tk.ListKeys(ctx); err != nil {
		t.Fatal(err)
	} else {
		for _, ki := range infos {
			if bytes.Contains([]byte(ki.Name), []byte(src)) {
				t.Fatalf("a grant listed as key %s", ki.Name)
			}
		}
	}
}

// TestLostGrantResponse: a grant record whose create took effect but whose
// response was lost makes the token re-initialise and the change run
// again; the rerun finds it stored and reports success, not a conflict
// with itself.
func TestLostGrantResponse(t *testing.T) {
	ctx := t.Context()
	tk := open(t, nil)
	id := grantID(t, tk)
	for gen := uint64(1); gen <= 2; gen++ {
		tk.LoseRecordResponse(t, 1)
		if err := tk.PutGrant(ctx, id, gen, fmt.Appendf(nil, "gen %d", gen)); err != nil {
			t.Fatalf("PutGrant(gen %d) with its record's response lost: %v", gen, err)
		}
	}
	wantGrantAt(t, tk, id, 2, "gen 2")
	raw, err := tk.StoredGrant(ctx, id)
	if err != nil || len(raw) != 1 {
		t.Fatalf("after the rerun: %d record objects (%v), want the newest only", len(raw), err)
	}
}

// doctorFinding returns Doctor's finding on the object labelled label.
func doctorFinding(t *testing.T, tk *hsm.Token, label string) (hsm.Finding, bool) {
	t.Helper()
	rep, err := tk.Doctor(t.Context())
	if err != nil {
		t.Fatalf("Doctor: %v", err)
	}
	for _, f := range rep.Findings {
		if f.Label == label {
			return f, true
		}
	}
	return hsm.Finding{}, false
}

// TestStaleGrantClaim: a grant claim left by a writer of another host that
// stopped between claiming and publishing blocks that grant's changes
// (ErrGrantConflict), never its reading, until this writer has seen it for
// the stale time on its own clock (moved by hand); then the next change
// removes it. Doctor lists it meanwhile as housekeeping.
func TestStaleGrantClaim(t *testing.T) {
	ctx := t.Context()
	a := open(t, nil)
	clock := &manualClock{now: time.Now().Round(0)}
	a.SetClaimClock(t, clock.Now)
	id := grantID(t, a)
	if err := a.PutGrant(ctx, id, 1, []byte("one")); err != nil {
		t.Fatal(err)
	}
	if err := a.PlantGrantClaim(ctx, id, 2, clock.Now(), "other-host/1"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { clock.Add(2 * hsm.StaleClaim()); a.PutGrant(context.Background(), id, 2, []byte("cleanup")) })
	label := "keyward:grant-pending:" + id
	if f, ok := doctorFinding(t, a, label); !ok || f.Weak || !strings.Contains(f.Problem, "claim on grant record generation 2") {
		t.Fatalf("doctor on a left claim: %+v (found %v)", f, ok)
	}
	if err := a.PutGrant(ctx, id, 2, []byte("two")); !errors.Is(err, keys.ErrGrantConflict) {
		t.Fatalf("PutGrant beside another writer's claim: %v, want ErrGrantConflict", err)
	}
	wantGrantAt(t, a, id, 1, "one")
	clock.Add(hsm.StaleClaim() - time.Second)
	if err := a.PutGrant(ctx, id, 2, []byte("two")); !errors.Is(err, keys.ErrGrantConflict) {
		t.Fatalf("PutGrant a second before the claim is stale: %v, want ErrGrantConflict", err)
	}
	clock.Add(time.Second)
	if err := a.PutGrant(ctx, id, 2, []byte("two")); err != nil {
		t.Fatalf("PutGrant once the claim is stale: %v", err)
	}
	wantGrantAt(t, a, id, 2, "two")
	if f, ok := doctorFinding(t, a, label); ok {
		t.Fatalf("doctor after the stale claim's removal: %+v", f)
	}
}
