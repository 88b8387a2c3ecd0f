package hsm

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/keyward/keyward/keys"
)

// ActAsSharedHSM makes this process's Tokens on t's module behave as on a
// network HSM shared by several hosts, where nothing serialises key changes
// between processes: no cross-process flock for t, no object lock for the
// module (restored when the test ends). Tests using it must not overlap
// another session's object creation with a search on SoftHSM2 (see
// module.objects).
func (t *Token) ActAsSharedHSM(tb testing.TB) {
	tb.Helper()
	cross, serial := t.cross, t.mod.serialObjects
	t.cross, t.mod.serialObjects = nil, false
	tb.Cleanup(func() { t.cross, t.mod.serialObjects = cross, serial })
}

// LoseRecordResponse makes t's next n record publications fail after the
// record is made, with a recoverable error, as a lost response would.
func (t *Token) LoseRecordResponse(tb testing.TB, n int) {
	tb.Cleanup(func() { t.test.publishFault = nil })
	t.test.publishFault = func() error {
		if n <= 0 {
			return nil
		}
		n--
		return pkcs11.Error(pkcs11.CKR_DEVICE_ERROR)
	}
}

// PlantVersionObject generates an object of name's version v that no
// record names, as a writer killed between generating and publishing
// leaves.
func (t *Token) PlantVersionObject(ctx context.Context, name string, v uint32) error {
	return t.withObjectChanges(ctx, func(s *sess) error {
		cur, err := s.searchMeta(name)
		if err != nil {
			return err
		}
		_, err = s.newVersion(name, cur.Type, v, time.Now())
		return err
	})
}

// SetClaimHook runs fn at the stages of t's record publications (nil:
// none).
func (t *Token) SetClaimHook(fn func(stage, name string)) { t.test.claimHook = fn }

// PlantClaim leaves a claim on name's next generation made at the given
// time by claimant ("BOOTID/PID"; "" for one of another host), as a writer
// that stopped after step 1 of storeMeta would.
func (t *Token) PlantClaim(ctx context.Context, name string, at time.Time, claimant string) error {
	return t.withObjectChanges(ctx, func(s *sess) error {
		cur, err := s.loadMeta(name, true)
		if err != nil {
			return err
		}
		rec := cloneRecord(cur)
		rec.Gen++
		rec.Pending, rec.Claimant = &at, claimant
		raw, err := s.encodeMeta(rec)
		if err != nil {
			return err
		}
		_, err = s.createMeta(pendingLabelPrefix+name, pendingApplication, raw)
		return err
	})
}

// ClaimantOf names pid's claims as a process of this host would (another
// Token: another nonce); start "" takes pid's real start time.
func ClaimantOf(pid int, start string) string {
	if start == "" {
		start = startTime(pid)
	}
	return fmt.Sprintf("%s/%s/%d/%s/%s", bootID(), pidNS(), pid, start, "other-token")
}

// Claimant is how t names its own claims.
func (t *Token) Claimant() string { return t.claimant() }

// StaleClaim is how long a claim is seen before it counts as stale.
func StaleClaim() time.Duration { return staleClaim }

// SetClaimClock makes t's claim rules read the time from now, until the
// test ends.
func (t *Token) SetClaimClock(tb testing.TB, now func() time.Time) {
	t.test.now = now
	tb.Cleanup(func() { t.test.now = nil })
}

// CopyRecordAs publishes a record for key to naming from's objects, as
// adopting one object twice did before that was refused.
func (t *Token) CopyRecordAs(ctx context.Context, from, to string) error {
	return t.withObjectChanges(ctx, func(s *sess) error {
		cur, err := s.searchMeta(from)
		if err != nil {
			return err
		}
		rec := cloneRecord(cur)
		rec.Name = to
		return s.storeMeta(rec, 0)
	})
}

// PlantAdoptedRecord publishes a record of key name whose version 1 names
// the object with this label and id, whatever it is, as AdoptKey did before
// it refused keyward's own objects.
func (t *Token) PlantAdoptedRecord(ctx context.Context, name string, ty keys.Type, label string, id []byte) error {
	return t.withObjectChanges(ctx, func(s *sess) error {
		now := time.Now().UTC().Truncate(time.Second)
		rec := &metaRecord{Format: 1, Name: name, Type: ty, Created: now, Adopted: true, Vers: []metaVersion{{
			Version: 1, State: keys.Enabled, Created: now, Label: label, ID: hex.EncodeToString(id),
		}}}
		return s.storeMeta(rec, 0)
	})
}

// HoldSessions lends n sessions at once, each to a callback that waits for
// release; it returns once all n are lent. release returns once all n are
// back in the pool.
func (t *Token) HoldSessions(tb testing.TB, n int) (release func()) {
	tb.Helper()
	done, held := make(chan struct{}), make(chan error, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			err := t.withSession(context.Background(), func(*sess) error {
				held <- nil
				<-done
				return nil
			})
			if err != nil {
				held <- err
			}
		})
	}
	for range n {
		if err := <-held; err != nil {
			tb.Fatal(err)
		}
	}
	return sync.OnceFunc(func() { close(done); wg.Wait() })
}

// SweepSessions runs one sweep of idle sessions now.
func (t *Token) SweepSessions() { t.sweepSessions() }

// PretendOpening counts n sessions as being opened (C_OpenSession not yet
// returned), as concurrent calls that found no idle session do, until undo.
func (t *Token) PretendOpening(n int) (undo func()) {
	st := t.state.Load()
	st.openMu.Lock()
	st.open += n
	st.opening += n
	st.openMu.Unlock()
	return func() {
		st.openMu.Lock()
		st.open -= n
		st.opening -= n
		st.openMu.Unlock()
	}
}

// SetGrantLimit makes t refuse a new grant id while n grants are stored
// (keys.MaxGrants otherwise), until the test ends.
func (t *Token) SetGrantLimit(tb testing.TB, n int) {
	t.test.grantLimit = n
	tb.Cleanup(func() { t.test.grantLimit = 0 })
}

// TamperGrant replaces the newest record object of grant id with a copy
// whose JSON has one byte changed (the MAC kept), as someone who can write
// the token's objects but has not its metadata key could.
func (t *Token) TamperGrant(ctx context.Context, id string) error {
	return t.withObjectChanges(ctx, func(s *sess) error {
		stored, err := s.findStored(grantRef(id).template())
		if err != nil {
			return err
		}
		if len(stored) == 0 {
			return fmt.Errorf("grant %s has no record", id)
		}
		newest := stored[0]
		for _, r := range stored[1:] {
			if g, err := s.parseGrant(id, r.raw); err == nil && g.Gen > 0 {
				if n, err := s.parseGrant(id, newest.raw); err != nil || g.Gen > n.Gen {
					newest = r
				}
			}
		}
		raw := append([]byte(nil), newest.raw...)
		i := bytes.Index(raw, []byte(`"body":"`)) + len(`"body":"`)
		raw[i] ^= 0x01 // a base64 letter becomes another
		if _, err := s.createMeta(grantRef(id).Label, grantApplication, raw); err != nil {
			return err
		}
		return s.p.DestroyObject(s.sh, newest.h)
	})
}

// PlantGrantRecord stores a grant object of id holding raw, as found on
// the token (a key record's bytes, another grant's), for the checks that
// must refuse it.
func (t *Token) PlantGrantRecord(ctx context.Context, id string, raw []byte) error {
	return t.withObjectChanges(ctx, func(s *sess) error {
		_, err := s.createMeta(grantRef(id).Label, grantApplication, raw)
		return err
	})
}

// StoredGrant returns the bytes of id's record objects.
func (t *Token) StoredGrant(ctx context.Context, id string) ([][]byte, error) {
	var out [][]byte
	err := t.withSession(ctx, func(s *sess) error {
		stored, err := s.findStored(grantRef(id).template())
		for _, r := range stored {
			out = append(out, r.raw)
		}
		return err
	})
	return out, err
}

// StoredRecord returns the bytes of key name's record objects.
func (t *Token) StoredRecord(ctx context.Context, name string) ([][]byte, error) {
	var out [][]byte
	err := t.withSession(ctx, func(s *sess) error {
		stored, err := s.findMeta(name)
		for _, r := range stored {
			out = append(out, r.raw)
		}
		return err
	})
	return out, err
}

// PlantKeyRecord stores a key record object of name holding raw, removed
// when the test ends.
func (t *Token) PlantKeyRecord(tb testing.TB, ctx context.Context, name string, raw []byte) error {
	tb.Cleanup(func() {
		t.withObjectChanges(context.Background(), func(s *sess) error {
			stored, err := s.findMeta(name)
			for _, r := range stored {
				s.p.DestroyObject(s.sh, r.h)
			}
			return err
		})
	})
	return t.withObjectChanges(ctx, func(s *sess) error {
		_, err := s.createMeta(metaRef(name).Label, metaApplication, raw)
		return err
	})
}

// PlantGrantClaim leaves a claim on generation gen of grant id made at the
// given time by claimant, as a writer that stopped after step 1 of publish
// would.
func (t *Token) PlantGrantClaim(ctx context.Context, id string, gen uint64, at time.Time, claimant string) error {
	return t.withObjectChanges(ctx, func(s *sess) error {
		raw, err := s.encodeGrant(&grantRecord{Format: grantFormat, ID: id, Gen: gen, Body: []byte("claimed"), Pending: &at, Claimant: claimant})
		if err != nil {
			return err
		}
		_, err = s.createMeta(grantPendingRef(id).Label, grantPendingApplication, raw)
		return err
	})
}
