package hsm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"strings"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/keyward/keyward/keys"
)

// Grant records (keys.GrantStore) are private, unmodifiable CKO_DATA
// objects labelled "keyward:grant:ID" under their own CKA_APPLICATION:
// magic | HMAC-SHA256 by the token's metadata key | JSON naming the id and
// the generation. The MAC covers a domain tag of its own, so a key record
// never verifies as a grant record nor the reverse, and the JSON, so one
// grant's record copied onto another id or passed off as another
// generation is refused. They change as key records do (publish: a claim,
// a check, then the record), so of two daemons sharing the token that
// store one generation of one grant at once, at most one succeeds. Key
// records are found by CKA_APPLICATION "keyward", claims by
// "keyward-pending": a grant object is neither.
const (
	grantLabelPrefix        = "keyward:grant:"
	grantPendingPrefix      = "keyward:grant-pending:"
	grantApplication        = "keyward-grant"
	grantPendingApplication = "keyward-grant-pending"
	grantMagic              = "KWG1"
	grantDomain             = "keyward/v1/grant\x00"
	grantFormat             = 1
	// maxGrantRecord bounds a stored grant object read back: the body in
	// base64 and the fields around it.
	maxGrantRecord = 2*keys.MaxGrantBody + 4096
)

var _ keys.GrantStore = (*Token)(nil)

type grantRecord struct {
	Format int    `json:"format"`
	ID     string `json:"id"`
	Gen    uint64 `json:"gen"`
	Body   []byte `json:"body"`
	// Pending and Claimant are set only in a claim (see publish).
	Pending  *time.Time `json:"pending,omitempty"`
	Claimant string     `json:"claimant,omitempty"`
}

func grantRef(id string) objRef {
	return objRef{Class: pkcs11.CKO_DATA, Label: grantLabelPrefix + id}
}

func grantPendingRef(id string) objRef {
	return objRef{Class: pkcs11.CKO_DATA, Label: grantPendingPrefix + id}
}

// versionLike reports whether a "keyward:grant:" label could also be the
// version label of a key named "grant" ("keyward:grant:v3"): the object's
// class tells them apart, the label alone does not.
func versionLike(label string) bool {
	rest := strings.TrimPrefix(label, grantLabelPrefix)
	if len(rest) < 2 || rest[0] != 'v' {
		return false
	}
	return strings.Trim(rest[1:], "0123456789") == ""
}

func (s *sess) encodeGrant(g *grantRecord) ([]byte, error) {
	body, err := json.Marshal(g)
	if err != nil {
		return nil, err
	}
	mac, err := s.recordMAC(grantDomain, body, nil)
	if err != nil {
		return nil, fmt.Errorf("mac grant record: %w", err)
	}
	return append(append([]byte(grantMagic), mac...), body...), nil
}

// parseGrant verifies and decodes a stored grant object of id (a record
// or a claim). Every failure is keys.ErrIntegrity but the token's own.
func (s *sess) parseGrant(id string, raw []byte) (*grantRecord, error) {
	if len(raw) < len(grantMagic)+32 || string(raw[:len(grantMagic)]) != grantMagic || len(raw) > maxGrantRecord {
		return nil, fmt.Errorf("record of grant %s is not a keyward grant record: %w", id, keys.ErrIntegrity)
	}
	mac, body := raw[len(grantMagic):len(grantMagic)+32], raw[len(grantMagic)+32:]
	if _, err := s.recordMAC(grantDomain, body, mac); err != nil {
		if errors.Is(err, pkcs11.Error(pkcs11.CKR_SIGNATURE_INVALID)) || errors.Is(err, pkcs11.Error(pkcs11.CKR_SIGNATURE_LEN_RANGE)) {
			return nil, fmt.Errorf("record of grant %s fails its MAC (edited, or from another token): %w", id, keys.ErrIntegrity)
		}
		return nil, err
	}
	var g grantRecord
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&g); err != nil {
		return nil, fmt.Errorf("record of grant %s: %v: %w", id, err, keys.ErrIntegrity)
	}
	if g.Format != grantFormat || g.ID != id || g.Gen == 0 || len(g.Body) > keys.MaxGrantBody {
		return nil, fmt.Errorf("record of grant %s: format, id, generation or size wrong: %w", id, keys.ErrIntegrity)
	}
	return &g, nil
}

// newestGrant returns the newest of id's stored records (nil: none), each
// verified. A claim among records, or two records of one generation, is
// an integrity failure: publish never leaves either.
func (s *sess) newestGrant(id string, stored []storedMeta) (*grantRecord, error) {
	var top *grantRecord
	for _, r := range stored {
		g, err := s.parseGrant(id, r.raw)
		if err != nil {
			return nil, err
		}
		switch {
		case g.Pending != nil:
			return nil, fmt.Errorf("record of grant %s is a writer's claim, not a record: %w", id, keys.ErrIntegrity)
		case top != nil && g.Gen == top.Gen:
			return nil, fmt.Errorf("grant %s: two records of generation %d: %w", id, g.Gen, keys.ErrIntegrity)
		case top == nil || g.Gen > top.Gen:
			top = g
		}
	}
	return top, nil
}

// PutGrant implements keys.GrantStore: it stores body as generation gen of
// grant id if the newest stored generation is gen-1, through the same
// claim-and-check publication as key records, so that two daemons sharing
// the token cannot both store one generation. A change that backed off
// because another writer's claim was there is retried from a fresh read.
func (t *Token) PutGrant(ctx context.Context, id string, gen uint64, body []byte) error {
	if err := keys.CheckGrantPut(id, gen, body); err != nil {
		return err
	}
	if err := t.writable(); err != nil {
		return err
	}
	t.adminMu.Lock()
	defer t.adminMu.Unlock()
	var err error
	for attempt := range maxAdminRetries {
		ran := false
		err = t.withObjectChanges(ctx, func(s *sess) error {
			again := ran // run again after a re-initialisation
			ran = true
			return s.putGrant(id, gen, body, again)
		})
		if !errors.Is(err, errConcurrent) {
			break
		}
		time.Sleep(time.Duration(1+mrand.IntN(10*(attempt+1))) * time.Millisecond)
	}
	if errors.Is(err, errConcurrent) {
		return fmt.Errorf("grant %s generation %d: another writer is storing it: %w", id, gen, keys.ErrGrantConflict)
	}
	return err
}

// putGrant is one attempt of PutGrant. again: an earlier attempt's record
// create may have taken effect though it failed (a lost response).
func (s *sess) putGrant(id string, gen uint64, body []byte, again bool) error {
	stored, err := s.findStored(grantRef(id).template())
	if err != nil {
		return err
	}
	cur, err := s.newestGrant(id, stored)
	if err != nil {
		return err
	}
	var have uint64
	if cur != nil {
		have = cur.Gen
	}
	if again && have == gen && bytes.Equal(cur.Body, body) {
		s.dropOlderGrants(id, gen)
		return nil
	}
	if have != gen-1 {
		return fmt.Errorf("grant %s: generation %d stored, %d asked: %w", id, have, gen, keys.ErrGrantConflict)
	}
	if have == 0 {
		if err := s.grantRoom(); err != nil {
			return err
		}
	}
	return s.publishGrant(&grantRecord{Format: grantFormat, ID: id, Gen: gen, Body: body}, have)
}

// publishGrant publishes g (generation prevGen+1) through publish.
func (s *sess) publishGrant(g *grantRecord, prevGen uint64) error {
	start := s.t.claimClock()
	now := start.UTC()
	g.Pending, g.Claimant = &now, s.t.claimant()
	claimRaw, err := s.encodeGrant(g)
	g.Pending, g.Claimant = nil, ""
	if err != nil {
		return err
	}
	raw, err := s.encodeGrant(g)
	if err != nil {
		return err
	}
	p := &publication{
		kind: "grant", name: g.ID, hookName: "grant:" + g.ID, start: start, gen: g.Gen, prevGen: prevGen, needPrev: true,
		record: grantRef(g.ID), application: grantApplication,
		claim: grantPendingRef(g.ID), claimApplication: grantPendingApplication,
		raw: raw, claimRaw: claimRaw,
		exists: fmt.Errorf("grant %s: generation 1 stored concurrently elsewhere: %w", g.ID, keys.ErrGrantConflict),
		parse: func(raw []byte) (stamp, error) {
			other, err := s.parseGrant(g.ID, raw)
			if err != nil {
				return stamp{}, err
			}
			return stamp{gen: other.Gen, pending: other.Pending, claimant: other.Claimant}, nil
		},
	}
	_, err = s.publish(p)
	return err
}

// dropOlderGrants destroys id's records older than gen (what publish does
// after publishing, when a failure cut it short).
func (s *sess) dropOlderGrants(id string, gen uint64) {
	stored, err := s.findStored(grantRef(id).template())
	if err != nil {
		return
	}
	for _, r := range stored {
		if g, err := s.parseGrant(id, r.raw); err == nil && g.Gen < gen {
			s.p.DestroyObject(s.sh, r.h)
		}
	}
}

// grantRoom refuses a new grant id when the token holds the most grant
// record objects it keeps (keys.MaxGrants; a test may lower it): counted
// from one search, with no object read (on a network HSM each read is a
// round trip). A grant's older generation, until its next change removes
// it, takes a place too. Two daemons adding at once may each take the
// last place.
func (s *sess) grantRoom() error {
	limit := keys.MaxGrants
	if s.t.test.grantLimit > 0 {
		limit = s.t.test.grantLimit
	}
	hs, err := s.find([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_DATA),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true), // keyward's records are (objRef.template)
		pkcs11.NewAttribute(pkcs11.CKA_APPLICATION, grantApplication),
	})
	if err != nil {
		return err
	}
	if len(hs) >= limit {
		return fmt.Errorf("the token holds %d grant records, at most %d: %w", len(hs), limit, keys.ErrInvalidArgument)
	}
	return nil
}

// grantObjects returns every grant record object, unverified, by id, from
// one search. An object under the grant application whose label is not a
// grant's is an integrity failure: nothing of keyward's makes one.
func (s *sess) grantObjects() (map[string][]storedMeta, error) {
	return s.recordObjects(grantApplication, func(label []byte) (string, error) {
		id, ok := bytes.CutPrefix(label, []byte(grantLabelPrefix))
		if !ok || keys.ValidGrantID(string(id)) != nil {
			return "", fmt.Errorf("a grant record object labelled %q: %w", label, keys.ErrIntegrity)
		}
		return string(id), nil
	})
}

// Grants implements keys.GrantStore: every grant's newest record, sorted
// by id, read from the token (never from a cache: another daemon may have
// changed them) and each verified. One record that fails its check fails
// the whole call with keys.ErrIntegrity.
func (t *Token) Grants(ctx context.Context) ([]keys.GrantRecord, error) {
	var out []keys.GrantRecord
	err := t.withSession(ctx, func(s *sess) error {
		byID, err := s.grantObjects()
		if err != nil {
			return err
		}
		out = make([]keys.GrantRecord, 0, len(byID))
		for _, id := range sortedNames(byID) {
			g, err := s.newestGrant(id, byID[id])
			if err != nil {
				return err
			}
			out = append(out, keys.GrantRecord{ID: id, Gen: g.Gen, Body: g.Body})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("grant records: %w", err)
	}
	return out, nil
}

// DeleteGrant implements keys.GrantStore: it destroys every record object
// of id, verified or not (how a damaged grant is cleared). Another
// writer's claim is left to that writer, whose check then finds the
// generation it built on gone and backs off.
func (t *Token) DeleteGrant(ctx context.Context, id string) error {
	if err := keys.ValidGrantID(id); err != nil {
		return err
	}
	if err := t.writable(); err != nil {
		return err
	}
	t.adminMu.Lock()
	defer t.adminMu.Unlock()
	return t.withObjectChanges(ctx, func(s *sess) error {
		stored, err := s.findStored(grantRef(id).template())
		if err != nil {
			return err
		}
		for _, r := range stored {
			if err := s.p.DestroyObject(s.sh, r.h); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_OBJECT_HANDLE_INVALID)) {
				return fmt.Errorf("delete grant %s: %w", id, err)
			}
		}
		return nil
	})
}

// grants reports, for Doctor, grant records that fail their check, older
// generations a crash left beside the newest, and grant claims (see
// publish): they outlive their writer only if it stopped between steps.
func (d *doctorRun) grants() error {
	byID, err := d.s.grantObjects()
	if errors.Is(err, keys.ErrIntegrity) {
		d.add(Finding{Class: "data", Problem: err.Error(), Weak: true})
		return nil
	}
	if err != nil {
		return err
	}
	for _, id := range sortedNames(byID) {
		d.rep.Objects += len(byID[id])
		f := Finding{Label: grantLabelPrefix + id, Class: "data"}
		top, err := d.s.newestGrant(id, byID[id])
		if err != nil {
			f.Problem, f.Weak = err.Error(), true
			d.add(f)
			continue
		}
		for _, r := range byID[id] {
			if g, err := d.s.parseGrant(id, r.raw); err == nil && g.Gen < top.Gen {
				f.Problem = fmt.Sprintf("stale grant record generation %d (left by a crash during a change); the next change of the grant removes it", g.Gen)
				d.add(f)
			}
		}
	}
	claims, err := d.s.findStored([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_DATA),
		pkcs11.NewAttribute(pkcs11.CKA_APPLICATION, grantPendingApplication),
	})
	if err != nil {
		return err
	}
	for _, c := range claims {
		a, err := d.s.attrs(c.h, pkcs11.CKA_LABEL)
		if err != nil {
			continue // removed by a writer meanwhile
		}
		d.rep.Objects++
		f := Finding{Label: string(a[pkcs11.CKA_LABEL]), Class: "data"}
		id, ok := strings.CutPrefix(f.Label, grantPendingPrefix)
		g, err := d.s.parseGrant(id, c.raw)
		switch {
		case !ok || err != nil || g.Pending == nil:
			f.Problem, f.Weak = fmt.Sprintf("grant claim object that is not a keyward claim (%v); it blocks changes to the grant", err), true
		default:
			f.Problem = fmt.Sprintf("claim on grant record generation %d made at %s (by its writer's clock) by %s, which did not finish (or is finishing now); it blocks changes to the grant until a change finds its generation published, its writer gone (a process of this host), or has seen it for %v",
				g.Gen, g.Pending.Format(time.RFC3339), g.Claimant, staleClaim)
		}
		d.add(f)
	}
	return nil
}
