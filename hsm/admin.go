package hsm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/keyward/keyward/keys"
)

// writable refuses changes through a read-only Token.
func (t *Token) writable() error {
	if t.cfg.ReadOnly {
		return fmt.Errorf("token: %w", keys.ErrReadOnly)
	}
	return nil
}

// maxAdminRetries bounds retries after a concurrent change by another process.
const maxAdminRetries = 5

// CreateKey generates version 1 of a new key inside the token.
func (t *Token) CreateKey(ctx context.Context, name string, ty keys.Type) (keys.KeyInfo, error) {
	if err := keys.ValidateName(name); err != nil {
		return keys.KeyInfo{}, err
	}
	if !ty.Valid() {
		return keys.KeyInfo{}, fmt.Errorf("create %s: key type %q: %w", name, ty, keys.ErrInvalidArgument)
	}
	if err := t.writable(); err != nil {
		return keys.KeyInfo{}, err
	}
	t.adminMu.Lock()
	defer t.adminMu.Unlock()
	var out keys.KeyInfo
	var made *metaVersion
	err := t.withObjectChanges(ctx, func(s *sess) error {
		if !s.supports(ty) {
			return fmt.Errorf("create %s: token lacks the mechanisms for %s: %w", name, ty, keys.ErrUnsupported)
		}
		if cur, err := s.searchMeta(name); err == nil {
			// Run again after a re-initialisation: a record create that
			// failed may have taken effect (a lost response).
			if made != nil && len(cur.Vers) > 0 && cur.Vers[0].ID == made.ID {
				out = cur.info()
				return nil
			}
			return fmt.Errorf("create %s: %w", name, keys.ErrKeyExists)
		} else if !errors.Is(err, keys.ErrKeyNotFound) {
			return err
		}
		now := time.Now().UTC().Truncate(time.Second)
		mv, err := s.newVersion(name, ty, 1, now)
		if err != nil {
			return err
		}
		made = &mv
		rec := &metaRecord{Format: 1, Name: name, Type: ty, Created: now, Vers: []metaVersion{mv}}
		// Another process may create the same name at the same moment:
		// whoever sees two records withdraws its own before anyone uses it.
		if err := s.storeMeta(rec, 0); err != nil {
			if !s.published(name, mv) {
				s.withdraw(name, ty, mv)
			}
			return concurrentErr(name, err)
		}
		out = rec.info()
		return nil
	})
	if err == nil {
		t.log.Info("key created", "key", name, "type", string(ty))
	}
	return out, err
}

// newVersion generates the object(s) of version v. Objects are found by
// label and CKA_ID (random), so another process's objects of the same
// version, or ones a crash left, do not matter: storeMeta's claim decides
// which version is published, and the loser withdraws its own.
func (s *sess) newVersion(name string, ty keys.Type, v uint32, now time.Time) (metaVersion, error) {
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return metaVersion{}, err
	}
	label := versionLabel(name, v)
	if err := s.generate(ty, label, id); err != nil {
		return metaVersion{}, fmt.Errorf("generate %s v%d in token: %w", name, v, err)
	}
	return metaVersion{Version: v, State: keys.Enabled, Created: now, Label: label, ID: hex.EncodeToString(id)}, nil
}

// withdraw destroys the objects of version mv of key name: one never
// published, or one being destroyed. An object keyward uses for anything
// else (see reservedLabel) is never destroyed through a key's version.
func (s *sess) withdraw(name string, ty keys.Type, mv metaVersion) {
	if reservedLabel(name, mv) {
		s.t.log.Warn("destroyed version's object kept: it is keyward's own", "key", name, "version", mv.Version, "object", reservedWhat(mv.Label))
		return
	}
	id, _ := hex.DecodeString(mv.ID)
	classes := []uint{keyClass(ty)}
	if ty.Asymmetric() {
		classes = append(classes, pkcs11.CKO_PUBLIC_KEY)
	}
	for _, c := range classes {
		r := objRef{Class: c, Label: mv.Label, ID: id}
		if h, err := s.handle(r); err == nil {
			s.p.DestroyObject(s.sh, h)
		}
		s.forget(r)
	}
}

// update applies change to a fresh copy of name's record and stores it,
// retrying from a fresh read when another process changed it meanwhile.
func (t *Token) update(ctx context.Context, op, name string, change func(s *sess, rec *metaRecord) error) (keys.KeyInfo, error) {
	if err := keys.ValidateName(name); err != nil {
		return keys.KeyInfo{}, err
	}
	if err := t.writable(); err != nil {
		return keys.KeyInfo{}, err
	}
	t.adminMu.Lock()
	defer t.adminMu.Unlock()
	var out keys.KeyInfo
	var err error
	for attempt := range maxAdminRetries {
		err = t.withObjectChanges(ctx, func(s *sess) error {
			cur, err := s.searchMeta(name)
			if err != nil {
				return err
			}
			rec := cloneRecord(cur)
			if err := change(s, rec); err != nil {
				if errors.Is(err, errApplied) {
					s.dropOlder(name, cur.Gen)
					out = cur.info()
					return nil
				}
				return err
			}
			if err := s.storeMeta(rec, cur.Gen); err != nil {
				return err
			}
			out = rec.info()
			return nil
		})
		if !errors.Is(err, errConcurrent) {
			break
		}
		// Two writers that saw each other both back off: let them retry
		// at different moments.
		time.Sleep(time.Duration(1+mrand.IntN(10*(attempt+1))) * time.Millisecond)
	}
	if errors.Is(err, errConcurrent) {
		return keys.KeyInfo{}, fmt.Errorf("%s %s: %w: %w", op, name, err, keys.ErrBusy)
	}
	if err != nil {
		return keys.KeyInfo{}, fmt.Errorf("%s %s: %w", op, name, err)
	}
	t.log.Info("key changed", "op", op, "key", name)
	return out, nil
}

// RotateKey adds a new version, which becomes the one wrap, sign and mac use.
func (t *Token) RotateKey(ctx context.Context, name string) (keys.KeyInfo, error) {
	info, _, err := t.rotate(ctx, name, nil)
	return info, err
}

// RotateIfDue rotates the key if the record read for the change says it is
// due at now: a retry after another writer's change reads that change, so
// of several daemons on one token only the first rotates.
func (t *Token) RotateIfDue(ctx context.Context, name string, now time.Time) (keys.KeyInfo, bool, error) {
	return t.rotate(ctx, name, func(rec *metaRecord) bool { ki := rec.info(); return ki.DueAt(now) })
}

// rotate adds a version when due (nil: always) accepts the current record.
func (t *Token) rotate(ctx context.Context, name string, due func(*metaRecord) bool) (keys.KeyInfo, bool, error) {
	var made *metaVersion
	var ty keys.Type
	info, err := t.update(ctx, "rotate", name, func(s *sess, rec *metaRecord) error {
		if made != nil {
			// A previous attempt: it lost a race (its objects were never
			// published), or its record create took effect though it
			// failed (a lost response), and this run follows a
			// re-initialisation: then the rotation is done.
			if int(made.Version) <= len(rec.Vers) && rec.Vers[made.Version-1].ID == made.ID {
				return errApplied
			}
			if !s.published(name, *made) {
				s.withdraw(name, ty, *made)
			}
			made = nil
		}
		ty = rec.Type
		if due != nil && !due(rec) {
			return errNotDue
		}
		if rec.Adopted && len(rec.Vers) == 0 {
			return fmt.Errorf("adopted key without versions: %w", keys.ErrIntegrity)
		}
		if len(rec.Vers) >= keys.MaxVersion {
			return fmt.Errorf("version limit reached: %w", keys.ErrInvalidArgument)
		}
		if !s.supports(rec.Type) {
			return fmt.Errorf("token lacks the mechanisms for %s: %w", rec.Type, keys.ErrUnsupported)
		}
		mv, err := s.newVersion(name, rec.Type, uint32(len(rec.Vers)+1), time.Now().UTC().Truncate(time.Second))
		if err != nil {
			return err
		}
		made = &mv
		rec.Vers = append(rec.Vers, mv)
		return nil
	})
	if err != nil && made != nil {
		// Unless a record references them after all, the new objects are
		// unpublished.
		t.withObjectChanges(context.WithoutCancel(ctx), func(s *sess) error {
			if !s.published(name, *made) {
				s.withdraw(name, ty, *made)
			}
			return nil
		})
	}
	if errors.Is(err, errNotDue) {
		info, err = t.DescribeKey(ctx, name)
		return info, false, err
	}
	return info, err == nil, err
}

// SetRotationPeriod stores the key's scheduled rotation period (0: none).
func (t *Token) SetRotationPeriod(ctx context.Context, name string, period time.Duration) (keys.KeyInfo, error) {
	if err := keys.CheckRotationPeriod(period); err != nil {
		return keys.KeyInfo{}, err
	}
	return t.update(ctx, "set-rotation", name, func(s *sess, rec *metaRecord) error {
		rec.Period = int64(period / time.Second)
		return nil
	})
}

// DescribeKey returns the key's record.
func (t *Token) DescribeKey(ctx context.Context, name string) (keys.KeyInfo, error) {
	if err := keys.ValidateName(name); err != nil {
		return keys.KeyInfo{}, err
	}
	var out keys.KeyInfo
	err := t.withSession(ctx, func(s *sess) error {
		rec, err := s.loadMeta(name, true)
		if err != nil {
			return err
		}
		out = rec.info()
		return nil
	})
	return out, err
}

// ListKeys returns every key's record, sorted by name. A record that fails
// its integrity check fails the whole listing: it is never silently skipped.
func (t *Token) ListKeys(ctx context.Context) ([]keys.KeyInfo, error) {
	var out []keys.KeyInfo
	err := t.withSession(ctx, func(s *sess) error {
		recs, err := s.loadAllMeta()
		if err != nil {
			return err
		}
		out = make([]keys.KeyInfo, len(recs))
		for i, r := range recs {
			out[i] = r.info()
		}
		return nil
	})
	return out, err
}

// SetVersionState enables or disables a version. Destroyed versions stay destroyed.
func (t *Token) SetVersionState(ctx context.Context, name string, v uint32, st keys.State) (keys.KeyInfo, error) {
	if st != keys.Enabled && st != keys.Disabled {
		return keys.KeyInfo{}, fmt.Errorf("state %q: use enabled or disabled (DestroyVersion destroys): %w", st, keys.ErrInvalidArgument)
	}
	return t.update(ctx, "set-state", name, func(s *sess, rec *metaRecord) error {
		ki := rec.info()
		if err := ki.CheckChangeable(v); err != nil {
			return err
		}
		rec.Vers[v-1].State = st
		return nil
	})
}

// DestroyVersion marks a version destroyed in the record, then deletes its
// objects. A crash between the two leaves an unreferenced object that
// Doctor reports; the version is never usable again either way.
func (t *Token) DestroyVersion(ctx context.Context, name string, v uint32) (keys.KeyInfo, error) {
	var victim metaVersion
	var ty keys.Type
	info, err := t.update(ctx, "destroy", name, func(s *sess, rec *metaRecord) error {
		if victim.ID != "" && int(v) <= len(rec.Vers) && rec.Vers[v-1].ID == victim.ID && rec.Vers[v-1].State == keys.Destroyed {
			return errApplied // run again after a record create whose response was lost
		}
		ki := rec.info()
		if err := ki.CheckChangeable(v); err != nil {
			if errors.Is(err, keys.ErrVersionDestroyed) {
				// Destroyed before: its objects too, unless a failure
				// left them (they go now).
				victim, ty = rec.Vers[v-1], rec.Type
			}
			return err
		}
		victim, ty = rec.Vers[v-1], rec.Type
		rec.Vers[v-1].State = keys.Destroyed
		return nil
	})
	if err != nil && !errors.Is(err, keys.ErrVersionDestroyed) || victim.ID == "" {
		return info, err
	}
	if werr := t.withObjectChanges(context.WithoutCancel(ctx), func(s *sess) error {
		// An object another key's record still names (one adopted twice
		// before that was refused) stays: it is that key's too.
		if other, err := s.namedBy(victim.Label, victim.ID, name, false); err != nil {
			return err
		} else if other != "" {
			t.log.Warn("destroyed version's object kept: another key's record names it", "key", name, "version", v, "other_key", other)
			return nil
		}
		s.withdraw(name, ty, victim)
		return nil
	}); err == nil {
		err = werr
	}
	return info, err
}

// SetMinDecryptVersion refuses decryption and verification below v.
func (t *Token) SetMinDecryptVersion(ctx context.Context, name string, v uint32) (keys.KeyInfo, error) {
	return t.update(ctx, "set-min-version", name, func(s *sess, rec *metaRecord) error {
		if int(v) > len(rec.Vers) {
			return fmt.Errorf("minimum decrypt version %d is beyond the newest version %d: %w", v, len(rec.Vers), keys.ErrInvalidArgument)
		}
		rec.Min = v
		return nil
	})
}
