package hsm

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/keyward/keyward/keys"
)

// A key's record, stored as the CKA_VALUE of a private CKO_DATA object
// labelled "keyward:meta:NAME": magic | HMAC-SHA256 (by the token's
// metadata key) | JSON. The MAC covers a domain tag and the JSON, which
// names the key, so a record copied onto another key is refused.
const (
	metaMagic  = "KWM1"
	metaDomain = "keyward/v1/meta\x00"
	maxMeta    = 1 << 20
)

type metaRecord struct {
	Format  int           `json:"format"`
	Name    string        `json:"name"`
	Type    keys.Type     `json:"type"`
	Created time.Time     `json:"created"`
	Gen     uint64        `json:"gen"`
	Min     uint32        `json:"min_decrypt_version"`
	Adopted bool          `json:"adopted,omitempty"`
	Vers    []metaVersion `json:"versions"`
	// Period is the scheduled rotation's period in seconds (0: none).
	Period int64 `json:"rotation_period_s,omitempty"`
	// DisableAfter is the delay in seconds after which the scheduler
	// disables a superseded version (0: never).
	DisableAfter int64 `json:"disable_after_s,omitempty"`
	// Pending is set only in a claim (see storeMeta): when its writer made
	// it, and who: "BOOTID/PID" (the host's boot_id, unique per host and
	// boot, and the process).
	Pending  *time.Time `json:"pending,omitempty"`
	Claimant string     `json:"claimant,omitempty"`
}

type metaVersion struct {
	Version uint32     `json:"version"`
	State   keys.State `json:"state"`
	Created time.Time  `json:"created"`
	Label   string     `json:"label"`
	ID      string     `json:"id"` // hex CKA_ID
}

func (r *metaRecord) info() keys.KeyInfo {
	ki := keys.KeyInfo{Name: r.Name, Type: r.Type, Created: r.Created, MinDecryptVersion: r.Min, Adopted: r.Adopted,
		RotationPeriod: time.Duration(r.Period) * time.Second, DisableAfter: time.Duration(r.DisableAfter) * time.Second}
	ki.Versions = make([]keys.VersionInfo, len(r.Vers))
	for i, v := range r.Vers {
		ki.Versions[i] = keys.VersionInfo{Version: v.Version, State: v.State, Created: v.Created}
	}
	return ki
}

// ref returns the reference of the object doing the private work for v.
// A version naming an object keyward uses for something else (see
// reservedLabel) is an integrity failure: never used.
func (r *metaRecord) ref(v uint32) (objRef, error) {
	mv := r.Vers[v-1]
	id, err := hex.DecodeString(mv.ID)
	if err != nil {
		return objRef{}, fmt.Errorf("key %s v%d: bad object id in record: %w", r.Name, v, keys.ErrIntegrity)
	}
	if reservedLabel(r.Name, mv) {
		return objRef{}, fmt.Errorf("key %s v%d: the record names %s, an object keyward uses itself: %w", r.Name, v, reservedWhat(mv.Label), keys.ErrIntegrity)
	}
	return objRef{Class: keyClass(r.Type), Label: mv.Label, ID: id}, nil
}

// reservedLabel reports whether version mv of key name names an object in
// keyward's label namespace other than the one keyward generates for that
// very version: the metadata MAC key, a record, a claim, another key's
// version. Adopted objects never carry a "keyward:" label (AdoptKey refuses
// them), so only a record from before that refusal, or one forged with the
// metadata key, can.
func reservedLabel(name string, mv metaVersion) bool {
	return strings.HasPrefix(mv.Label, labelPrefix) && !isVersionLabel(mv.Label, name, mv.Version)
}

// isVersionLabel is label == versionLabel(name, v) without building it:
// it runs on every data operation.
func isVersionLabel(label, name string, v uint32) bool {
	rest, ok := strings.CutPrefix(label, labelPrefix)
	if ok {
		rest, ok = strings.CutPrefix(rest, name)
	}
	if ok {
		rest, ok = strings.CutPrefix(rest, ":v")
	}
	return ok && rest == strconv.FormatUint(uint64(v), 10)
}

// reservedWhat names the keyward object a reserved label belongs to.
func reservedWhat(label string) string {
	switch {
	case label == metaKeyLabel:
		return "the keyring metadata MAC key"
	case strings.HasPrefix(label, pendingLabelPrefix), strings.HasPrefix(label, metaLabelPrefix):
		return fmt.Sprintf("%q (a key record)", label)
	case strings.HasPrefix(label, grantPendingPrefix), strings.HasPrefix(label, grantLabelPrefix) && !versionLike(label):
		return fmt.Sprintf("%q (a break-glass grant record)", label)
	}
	return fmt.Sprintf("%q (labelled by keyward: another key's version, or a leftover)", label)
}

// pubRef returns the public key object of an asymmetric version.
func (r *metaRecord) pubRef(v uint32) (objRef, error) {
	ref, err := r.ref(v)
	ref.Class = pkcs11.CKO_PUBLIC_KEY
	return ref, err
}

// validate checks the record's own consistency after its MAC verified.
func (r *metaRecord) validate(name string) error {
	if r.Format != 1 || r.Name != name || !r.Type.Valid() {
		return fmt.Errorf("record of %s: format, name or type wrong: %w", name, keys.ErrIntegrity)
	}
	if _, err := keys.PeriodFromSeconds(r.Period); err != nil {
		return fmt.Errorf("record of %s: rotation period %ds out of range: %w", name, r.Period, keys.ErrIntegrity)
	}
	if _, err := keys.DisableAfterFromSeconds(r.DisableAfter); err != nil {
		return fmt.Errorf("record of %s: disable-after %ds out of range: %w", name, r.DisableAfter, keys.ErrIntegrity)
	}
	for i, v := range r.Vers {
		if v.Version != uint32(i+1) {
			return fmt.Errorf("record of %s: versions out of order: %w", name, keys.ErrIntegrity)
		}
		switch v.State {
		case keys.Enabled, keys.Disabled, keys.Destroyed:
		default:
			return fmt.Errorf("record of %s: bad state %q: %w", name, v.State, keys.ErrIntegrity)
		}
	}
	if int(r.Min) > len(r.Vers) {
		return fmt.Errorf("record of %s: minimum version beyond the last: %w", name, keys.ErrIntegrity)
	}
	return nil
}

func metaRef(name string) objRef {
	return objRef{Class: pkcs11.CKO_DATA, Label: metaLabelPrefix + name}
}

type cachedMeta struct {
	raw   []byte
	rec   *metaRecord
	at    time.Time           // when raw was last confirmed
	st    *tokenState         // h is valid only within this state
	h     pkcs11.ObjectHandle // the record object raw was read from
	found time.Time           // when h was found
}

// refindEvery bounds how long a record object's handle is trusted without
// a new search. A newer record normally makes its writer destroy the old
// object, which makes the old handle fail; the search catches the case of
// a writer that crashed between creating the new record and destroying the
// old one.
const refindEvery = time.Second

func (t *Token) cached(name string) *cachedMeta {
	t.cacheMu.Lock()
	defer t.cacheMu.Unlock()
	return t.cache[name]
}

// ensureMetaKey finds the metadata MAC key or creates it. If two daemons
// created one at the same moment, both settle on the lowest CKA_ID.
func (s *sess) ensureMetaKey() (objRef, error) {
	t := s.t
	// Called while a state is made (at Open and after a re-initialisation),
	// before any object lock is held; it may create the key.
	defer t.mod.unlockObjects(true, t.mod.lockObjects(true))
	ref := objRef{Class: pkcs11.CKO_SECRET_KEY, Label: metaKeyLabel}
	tmpl := ref.protected()
	hs, err := s.find(tmpl)
	if err != nil {
		return objRef{}, fmt.Errorf("find metadata key: %w", err)
	}
	if len(hs) == 0 {
		// One without keyward's protections is never replaced by a new
		// key (every record would then fail its MAC for good): refused.
		if weak, err := s.find(ref.template()); err == nil && len(weak) > 0 {
			return objRef{}, fmt.Errorf("the token's %s is not private, sensitive and never extractable, as keyward makes it (replaced on the token?): %w",
				metaKeyLabel, keys.ErrIntegrity)
		}
	}
	if len(hs) == 0 && t.cfg.ReadOnly {
		return objRef{}, nil // a token keyward has not used yet; records cannot exist
	}
	if len(hs) == 0 {
		id := make([]byte, 16)
		rand.Read(id)
		if err := s.generate(keys.HMACSHA256, metaKeyLabel, id); err != nil {
			return objRef{}, fmt.Errorf("create metadata key: %w", err)
		}
		t.log.Info("created keyring metadata key", "token", t.tokenName())
		if hs, err = s.find(tmpl); err != nil {
			return objRef{}, fmt.Errorf("find metadata key: %w", err)
		}
	}
	var ids [][]byte
	for _, h := range hs {
		a, err := s.attrs(h, pkcs11.CKA_ID)
		if err != nil {
			return objRef{}, fmt.Errorf("read metadata key id: %w", err)
		}
		ids = append(ids, a[pkcs11.CKA_ID])
	}
	if len(ids) == 0 {
		return objRef{}, fmt.Errorf("metadata key vanished: %w", keys.ErrUnavailable)
	}
	sort.Slice(ids, func(i, j int) bool { return bytes.Compare(ids[i], ids[j]) < 0 })
	return objRef{Class: pkcs11.CKO_SECRET_KEY, Label: metaKeyLabel, ID: ids[0]}, nil
}

// metaMAC makes (mac nil) or checks the MAC of a key record's body.
func (s *sess) metaMAC(body []byte, mac []byte) ([]byte, error) {
	return s.recordMAC(metaDomain, body, mac)
}

// recordMAC makes (mac nil) or checks the metadata key's HMAC-SHA256 of
// domain || body: each kind of record has its own domain, so that one
// kind's record never verifies as another's.
func (s *sess) recordMAC(domain string, body []byte, mac []byte) ([]byte, error) {
	if s.st.metaKey.Label == "" {
		return nil, fmt.Errorf("token has no keyring metadata key: %w", keys.ErrIntegrity)
	}
	h, err := s.handle(s.st.metaKey)
	if err != nil {
		return nil, fmt.Errorf("metadata key: %w", err)
	}
	msg := append([]byte(domain), body...)
	if mac == nil {
		return s.sign(hmacSHA256, h, msg, sha256.Size)
	}
	return nil, s.verify(hmacSHA256, h, msg, mac)
}

// loadMeta returns name's record. Records are never modified in place
// (tokens refuse to change a data object's CKA_VALUE): each change creates a
// record object with the next generation and then destroys the older ones,
// so the newest generation is the record. Unless MetadataMaxAge allows a
// cached copy (and fresh is false), it reads the record object again: by
// its recently found handle (one C_GetAttributeValue; a search costs time
// linear in the token's objects), else by a search. Bytes equal to the
// cached ones are not verified again.
// Errors: keys.ErrKeyNotFound, keys.ErrIntegrity, keys.ErrUnavailable while
// two writers race.
func (s *sess) loadMeta(name string, fresh bool) (*metaRecord, error) {
	t := s.t
	c := t.cached(name)
	if c != nil && !fresh && t.age > 0 && time.Since(c.at) < t.age {
		return c.rec, nil
	}
	if c != nil && c.st == s.st && time.Since(c.found) < refindEvery {
		a, err := s.attrs(c.h, pkcs11.CKA_VALUE)
		if err == nil && bytes.Equal(a[pkcs11.CKA_VALUE], c.raw) {
			if t.age > 0 {
				s.remember(name, c.raw, c.rec, c.h, c.found)
			}
			return c.rec, nil
		}
		// Destroyed by a writer (a newer record exists) or gone: search.
	}
	return s.searchMeta(name)
}

// searchMeta is loadMeta by a search, never by a remembered handle: what a
// writer builds on (an older record a failed change left beside a newer
// one still answers by its handle).
func (s *sess) searchMeta(name string) (*metaRecord, error) {
	c := s.t.cached(name)
	recs, err := s.findMeta(name)
	if err != nil {
		return nil, err
	}
	if len(recs) == 0 {
		// A keyward token always holds its metadata key. If that is gone too,
		// the token itself went away (a deleted or replaced token directory
		// shows as an empty token): that is an outage, not a missing key.
		// Records are never deleted once published either, so a key this
		// process has seen that vanished means the same.
		if c != nil {
			return nil, pkcs11.Error(pkcs11.CKR_TOKEN_NOT_PRESENT)
		}
		if mk, err := s.find(s.st.metaKey.template()); err == nil && len(mk) == 0 {
			return nil, pkcs11.Error(pkcs11.CKR_TOKEN_NOT_PRESENT)
		}
		return nil, fmt.Errorf("key %s: %w", name, keys.ErrKeyNotFound)
	}
	return s.pickMeta(name, recs, c)
}

// pickMeta chooses name's record among its stored objects (non-empty): the
// newest generation, verified unless its bytes equal the cached ones.
func (s *sess) pickMeta(name string, recs []storedMeta, c *cachedMeta) (*metaRecord, error) {
	if len(recs) == 1 && c != nil && bytes.Equal(c.raw, recs[0].raw) {
		s.remember(name, c.raw, c.rec, recs[0].h, time.Now())
		return c.rec, nil
	}
	var top *metaRecord
	var topStored storedMeta
	tie := false
	for _, r := range recs {
		rec, err := s.parseMeta(name, r.raw)
		if err != nil {
			return nil, err
		}
		if rec.Pending != nil {
			return nil, fmt.Errorf("record of %s is a writer's claim, not a record: %w", name, keys.ErrIntegrity)
		}
		switch {
		case top == nil || rec.Gen > top.Gen:
			top, topStored, tie = rec, r, false
		case rec.Gen == top.Gen:
			tie = true
		}
	}
	if tie {
		return nil, fmt.Errorf("key %s: two records of generation %d (concurrent change); retry: %w", name, top.Gen, keys.ErrUnavailable)
	}
	s.remember(name, topStored.raw, top, topStored.h, time.Now())
	return top, nil
}

type storedMeta struct {
	h   pkcs11.ObjectHandle
	raw []byte
}

// findMeta returns name's record objects, unverified.
func (s *sess) findMeta(name string) ([]storedMeta, error) {
	return s.findStored(metaRef(name).template())
}

// findStored returns the values of the data objects tmpl matches.
func (s *sess) findStored(tmpl []*pkcs11.Attribute) ([]storedMeta, error) {
	hs, err := s.find(tmpl)
	if err != nil {
		return nil, err
	}
	out := make([]storedMeta, 0, len(hs))
	for _, h := range hs {
		a, err := s.attrs(h, pkcs11.CKA_VALUE)
		if err != nil {
			if errors.Is(err, pkcs11.Error(pkcs11.CKR_OBJECT_HANDLE_INVALID)) {
				continue // destroyed by a writer between find and read
			}
			return nil, err
		}
		out = append(out, storedMeta{h: h, raw: a[pkcs11.CKA_VALUE]})
	}
	return out, nil
}

func (s *sess) parseMeta(name string, raw []byte) (*metaRecord, error) {
	if len(raw) < len(metaMagic)+32 || string(raw[:len(metaMagic)]) != metaMagic || len(raw) > maxMeta {
		return nil, fmt.Errorf("record of %s is not a keyward record: %w", name, keys.ErrIntegrity)
	}
	mac, body := raw[len(metaMagic):len(metaMagic)+32], raw[len(metaMagic)+32:]
	if _, err := s.metaMAC(body, mac); err != nil {
		if errors.Is(err, pkcs11.Error(pkcs11.CKR_SIGNATURE_INVALID)) || errors.Is(err, pkcs11.Error(pkcs11.CKR_SIGNATURE_LEN_RANGE)) {
			return nil, fmt.Errorf("record of %s fails its MAC (edited or from another token): %w", name, keys.ErrIntegrity)
		}
		return nil, err
	}
	var rec metaRecord
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rec); err != nil {
		return nil, fmt.Errorf("record of %s: %v: %w", name, err, keys.ErrIntegrity)
	}
	if err := rec.validate(name); err != nil {
		return nil, err
	}
	return &rec, nil
}

func (s *sess) encodeMeta(rec *metaRecord) ([]byte, error) {
	body, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	mac, err := s.metaMAC(body, nil)
	if err != nil {
		return nil, fmt.Errorf("mac record: %w", err)
	}
	return append(append([]byte(metaMagic), mac...), body...), nil
}

// storeMeta publishes rec as generation prevGen+1 (prevGen 0: a new key)
// through publish.
func (s *sess) storeMeta(rec *metaRecord, prevGen uint64) error {
	rec.Gen = prevGen + 1
	start := s.t.claimClock()
	now := start.UTC()
	rec.Pending, rec.Claimant = &now, s.t.claimant()
	claimRaw, err := s.encodeMeta(rec)
	rec.Pending, rec.Claimant = nil, ""
	if err != nil {
		return err
	}
	raw, err := s.encodeMeta(rec)
	if err != nil {
		return err
	}
	p := &publication{
		kind: "key", name: rec.Name, hookName: rec.Name, start: start, gen: rec.Gen, prevGen: prevGen,
		record: metaRef(rec.Name), application: metaApplication,
		claim: pendingRef(rec.Name), claimApplication: pendingApplication,
		raw: raw, claimRaw: claimRaw,
		exists: fmt.Errorf("create %s: created concurrently elsewhere: %w", rec.Name, keys.ErrKeyExists),
		parse: func(raw []byte) (stamp, error) {
			other, err := s.parseMeta(rec.Name, raw)
			if err != nil {
				return stamp{}, err
			}
			return stamp{gen: other.Gen, pending: other.Pending, claimant: other.Claimant}, nil
		},
	}
	mine, err := s.publish(p)
	if err != nil {
		return err
	}
	s.remember(rec.Name, raw, rec, mine, time.Now())
	return nil
}

// publication is one change of a record (a key's, a grant's) as publish
// makes it: the record's bytes and those of its claim (the record marked
// pending, by whom and when), both MAC'd, and where each goes.
type publication struct {
	kind, name string // "key" and its name, "grant" and its id: for errors and logs
	hookName   string // the name claimStage passes to the test hook
	start      time.Time
	gen        uint64 // the generation published: prevGen+1
	prevGen    uint64 // the generation the writer read (0: none)
	// needPrev: a record of prevGen must still be there at the check (for
	// records that can be deleted: a deletion since the read wins).
	needPrev         bool
	record, claim    objRef // the labels of the record's and the claim's objects
	application      string // the record's CKA_APPLICATION
	claimApplication string // the claim's
	raw, claimRaw    []byte
	exists           error // returned when prevGen is 0 and a record exists
	parse            func(raw []byte) (stamp, error)
}

// stamp is what publish needs of a stored record or claim: its generation,
// and for a claim when and by whom it was made.
type stamp struct {
	gen      uint64
	pending  *time.Time
	claimant string
}

// publish stores p's record as generation p.gen, in two steps so that no
// reader ever sees a record that may be withdrawn:
//
//  1. It creates a claim: the record, marked pending, in an object that
//     readers never search (labelled like p.claim, under its own
//     CKA_APPLICATION).
//  2. It looks for competitors: a record of that generation or newer, or
//     another writer's claim of it. If there is one it destroys its claim
//     and returns errConcurrent (p.exists when the record is new).
//  3. It creates the record itself, then destroys its claim and the older
//     generations.
//
// Of two writers of one generation, whoever checks second sees the other's
// claim or record (a claim is destroyed only once its record exists), so at
// most one publishes; both may back off, and retry. A crash after step 3
// leaves a claim no newer than the record, which the next writer removes; a
// crash before it leaves a claim with no record, which blocks changes to
// that record until its writer is known gone or it is stale (see
// competitor). Readers always take the newest record, and only ever see
// checked ones. It returns the new record's object.
func (s *sess) publish(p *publication) (pkcs11.ObjectHandle, error) {
	claim, err := s.createMeta(p.claim.Label, p.claimApplication, p.claimRaw)
	if err != nil {
		return 0, fmt.Errorf("write the claim for the record of %s %s: %w", p.kind, p.name, err)
	}
	s.t.claimStage("claimed", p.hookName)
	recs, err := s.findStored(p.record.template())
	var claims []storedMeta
	if err == nil {
		claims, err = s.findStored(p.claim.template())
	}
	if err != nil {
		s.p.DestroyObject(s.sh, claim)
		return 0, err
	}
	if cerr := s.competitor(p, recs, claims, claim); cerr != nil {
		s.p.DestroyObject(s.sh, claim)
		return 0, cerr
	}
	s.t.claimStage("checked", p.hookName)
	// Others may take a claim this old for abandoned: past half of that,
	// do not publish on it. The wall clock too: the monotonic one stops
	// while the machine is suspended, the others' clocks do not.
	end := s.t.claimClock()
	if took := max(end.Sub(p.start), end.Round(0).Sub(p.start.Round(0))); took > staleClaim/2 {
		s.p.DestroyObject(s.sh, claim)
		return 0, fmt.Errorf("%s %s: %v passed between claiming and publishing the record: %w", p.kind, p.name, took.Round(time.Millisecond), errConcurrent)
	}
	mine, err := s.createMeta(p.record.Label, p.application, p.raw)
	if err == nil && s.t.test.publishFault != nil {
		err = s.t.test.publishFault() // the record is made, its response lost
	}
	if err != nil {
		s.p.DestroyObject(s.sh, claim)
		return 0, fmt.Errorf("write record of %s %s: %w", p.kind, p.name, err)
	}
	s.p.DestroyObject(s.sh, claim)
	for _, r := range recs {
		s.p.DestroyObject(s.sh, r.h)
	}
	return mine, nil
}

// staleClaim: a claim with no record that a writer has seen for this long
// (on its own clock: hosts sharing an HSM need not agree on the time) was
// left by a writer that stopped between its steps 1 and 3, which take
// milliseconds; the writer removes it. A writer never publishes on a claim
// older than half of it.
var staleClaim = 2 * time.Minute

// claimClock reads the time for the claim rules (how long a claim has been
// seen, how long a writer took); tests replace it to move time by hand.
func (t *Token) claimClock() time.Time {
	if t.test.now != nil {
		return t.test.now()
	}
	return time.Now()
}

// claimStage runs the test hook at a stage of a record's publication.
func (t *Token) claimStage(stage, name string) {
	if t.test.claimHook != nil {
		t.test.claimHook(stage, name)
	}
}

// competitor checks the records and claims of p's record (other than own)
// for one that forbids publishing generation p.gen, and removes claims
// that no longer matter: older than p.gen (their record was published and
// replaced), or stale.
func (s *sess) competitor(p *publication, recs, claims []storedMeta, own pkcs11.ObjectHandle) error {
	prevSeen := false
	for _, r := range recs {
		other, err := p.parse(r.raw)
		if p.prevGen == 0 {
			return p.exists
		}
		if err != nil || other.gen >= p.gen {
			return errConcurrent
		}
		prevSeen = prevSeen || other.gen == p.prevGen
	}
	if p.needPrev && p.prevGen > 0 && !prevSeen {
		return errConcurrent
	}
	for _, c := range claims {
		if c.h == own {
			continue
		}
		if err := s.otherClaim(p, c); err != nil {
			return err
		}
	}
	return nil
}

// otherClaim checks another writer's claim c on p's record: it forbids
// publishing unless it is older than p.gen, its writer is known gone or it
// is stale (then it is removed).
func (s *sess) otherClaim(p *publication, c storedMeta) error {
	other, err := p.parse(c.raw)
	switch {
	case err != nil || other.pending == nil:
		return fmt.Errorf("%s %s: a claim object that is not a keyward claim (%v) blocks changes: %w", p.kind, p.name, err, errConcurrent)
	case other.gen < p.gen:
		s.p.DestroyObject(s.sh, c.h) // its record was published, and replaced since
	case s.t.claimantGone(other.claimant):
		s.t.log.Warn("removing a claim on a "+p.kind+" record left by a process of this host that is gone", p.kind, p.name, "gen", other.gen, "claimant", other.claimant)
		s.p.DestroyObject(s.sh, c.h)
		s.t.forgetClaim(c.raw)
	default:
		seen := s.t.claimSeen(c.raw)
		if s.t.claimClock().Sub(seen) >= staleClaim {
			s.t.log.Warn("removing a stale claim on a "+p.kind+" record: a writer stopped between claiming and publishing", p.kind, p.name, "gen", other.gen,
				"claimed", other.pending.Format(time.RFC3339), "claimant", other.claimant, "seen_since", seen.Format(time.RFC3339))
			s.p.DestroyObject(s.sh, c.h)
			s.t.forgetClaim(c.raw)
			return nil
		}
		return fmt.Errorf("another writer (%s) claimed generation %d of the record at %s by its clock; this process takes the claim for abandoned %v after it first saw it: %w",
			other.claimant, other.gen, other.pending.Format(time.RFC3339), staleClaim, errConcurrent)
	}
	return nil
}

// createMeta creates a private, unmodifiable data object holding raw.
func (s *sess) createMeta(label, application string, raw []byte) (pkcs11.ObjectHandle, error) {
	return s.p.CreateObject(s.sh, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_DATA),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_APPLICATION, application),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, raw),
	})
}

// claimant names this Token's claims:
// "BOOTID/PIDNS/PID/STARTTIME/NONCE": the host's boot, the pid namespace
// (containers on one host share the boot id, not their pids), the process
// and its start time (a reused pid is another process), and a nonce of the
// Token (its own claims; its admin lock serialises them).
func (t *Token) claimant() string {
	return fmt.Sprintf("%s/%s/%d/%s/%s", bootID(), pidNS(), os.Getpid(), startTime(os.Getpid()), t.claimNonce)
}

// claimantGone reports whether a claim's writer is known to be gone: this
// Token itself (a claim it left when its destroy failed), or a process of
// this host, boot and pid namespace that no longer exists (kill(pid, 0):
// ESRCH), or whose pid now belongs to a process started at another time.
// Any other writer is never known gone: its claim waits until stale. (Under
// ProcSubset=pid the boot id is hidden: then only the first.)
func (t *Token) claimantGone(c string) bool {
	f := strings.Split(c, "/")
	if len(f) != 5 {
		return false
	}
	if f[4] == t.claimNonce {
		return true
	}
	if f[0] == "" || f[0] != bootID() || f[1] == "" || f[1] != pidNS() {
		return false
	}
	pid, err := strconv.Atoi(f[2])
	if err != nil || pid <= 0 {
		return false
	}
	if errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
		return true
	}
	// Alive, or not ours to signal (EPERM): another process only if its
	// start time can be read and differs (hidepid can hide it).
	st := startTime(pid)
	return st != "" && st != f[3]
}

// claimSeen returns when this Token first saw the claim raw (now, the first
// time). Forgotten at restart: a claim then waits staleClaim again.
func (t *Token) claimSeen(raw []byte) time.Time {
	k := sha256.Sum256(raw)
	t.cacheMu.Lock()
	defer t.cacheMu.Unlock()
	if t.claimsSeen == nil {
		t.claimsSeen = map[[32]byte]time.Time{}
	}
	seen, ok := t.claimsSeen[k]
	if !ok {
		seen = t.claimClock()
		t.claimsSeen[k] = seen
	}
	return seen
}

// forgetClaim drops a removed claim from claimsSeen.
func (t *Token) forgetClaim(raw []byte) {
	k := sha256.Sum256(raw)
	t.cacheMu.Lock()
	delete(t.claimsSeen, k)
	t.cacheMu.Unlock()
}

var bootID = sync.OnceValue(func() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
})

// pidNS is this process's pid namespace ("pid:[4026531836]"), "" if unknown.
var pidNS = sync.OnceValue(func() string {
	ns, err := os.Readlink("/proc/self/ns/pid")
	if err != nil {
		return ""
	}
	return ns
})

// startTime is field 22 of /proc/PID/stat (clock ticks since boot), "" if
// the process does not exist.
func startTime(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	// The command name (field 2) may hold spaces and parentheses: count
	// the fields after its last closing parenthesis (field 3 first).
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return ""
	}
	return f[19]
}

func pendingRef(name string) objRef {
	return objRef{Class: pkcs11.CKO_DATA, Label: pendingLabelPrefix + name}
}

func (s *sess) remember(name string, raw []byte, rec *metaRecord, h pkcs11.ObjectHandle, found time.Time) {
	c := &cachedMeta{raw: raw, rec: rec, at: time.Now(), st: s.st, h: h, found: found}
	s.t.cacheMu.Lock()
	s.t.cache[name] = c
	s.t.cacheMu.Unlock()
}

// namedBy returns a key other than except whose record names the object
// with this label and id, or "" (one search over every record). Destroyed
// versions count only with destroyed set: their objects are gone, unless a
// failed destroy left them (which a repeated destroy removes).
func (s *sess) namedBy(label, id, except string, destroyed bool) (string, error) {
	recs, err := s.loadAllMeta()
	if err != nil {
		return "", err
	}
	for _, r := range recs {
		if r.Name == except {
			continue
		}
		for _, v := range r.Vers {
			if v.Label == label && v.ID == id && (destroyed || v.State != keys.Destroyed) {
				return r.Name, nil
			}
		}
	}
	return "", nil
}

// dropOlder destroys name's records older than gen (what storeMeta does
// after publishing, when a failure cut it short).
func (s *sess) dropOlder(name string, gen uint64) {
	recs, err := s.findMeta(name)
	if err != nil {
		return
	}
	for _, r := range recs {
		if rec, err := s.parseMeta(name, r.raw); err == nil && rec.Gen < gen {
			s.p.DestroyObject(s.sh, r.h)
		}
	}
}

// published reports whether a record of name, found by a search (not a
// remembered handle), references version mv's objects. When it cannot tell
// (the search or a record's check fails, other than as a damaged record) it
// says yes: objects wrongly kept are housekeeping for doctor; objects
// wrongly withdrawn lose blobs.
func (s *sess) published(name string, mv metaVersion) bool {
	recs, err := s.findMeta(name)
	if err != nil {
		return true
	}
	for _, r := range recs {
		rec, err := s.parseMeta(name, r.raw)
		if errors.Is(err, keys.ErrIntegrity) {
			continue
		}
		if err != nil {
			return true
		}
		for _, v := range rec.Vers {
			if v.ID == mv.ID && v.Label == mv.Label {
				return true
			}
		}
	}
	return false
}

// concurrentErr is the caller's error for a change that lost a race with
// another process and was not retried (creates, adopts: retrying would
// find the key made, or not).
func concurrentErr(name string, err error) error {
	if errors.Is(err, errConcurrent) {
		return fmt.Errorf("another process is changing key %s at this moment; retry: %w: %w", name, err, keys.ErrBusy)
	}
	return err
}

// loadAllMeta returns every key's record, sorted by name, with one search
// for all record objects (a search per key costs keys x objects on tokens
// whose searches are linear, as SoftHSM2's are).
func (s *sess) loadAllMeta() ([]*metaRecord, error) {
	byName, err := s.allStoredMeta()
	if err != nil {
		return nil, err
	}
	out := make([]*metaRecord, 0, len(byName))
	for _, n := range sortedNames(byName) {
		rec, err := s.pickMeta(n, byName[n], s.t.cached(n))
		if err != nil {
			return nil, err
		}
		out = append(out, rec)
	}
	return out, nil
}

// allStoredMeta returns every record object, unverified, by key name, from
// one search. Objects whose label names no valid key are passed over.
func (s *sess) allStoredMeta() (map[string][]storedMeta, error) {
	return s.recordObjects(metaApplication, func(label []byte) (string, error) {
		name, ok := bytes.CutPrefix(label, []byte(metaLabelPrefix))
		if !ok || keys.ValidateName(string(name)) != nil {
			return "", nil
		}
		return string(name), nil
	})
}

// recordObjects returns the data objects of application app, unverified,
// from one search, grouped by the key keyOf finds in each one's label ("":
// passed over; an error ends the search).
func (s *sess) recordObjects(app string, keyOf func(label []byte) (string, error)) (map[string][]storedMeta, error) {
	hs, err := s.find([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_DATA),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true), // keyward's records are (objRef.template)
		pkcs11.NewAttribute(pkcs11.CKA_APPLICATION, app),
	})
	if err != nil {
		return nil, err
	}
	out := map[string][]storedMeta{}
	for _, h := range hs {
		a, err := s.attrs(h, pkcs11.CKA_LABEL, pkcs11.CKA_VALUE)
		if err != nil {
			if errors.Is(err, pkcs11.Error(pkcs11.CKR_OBJECT_HANDLE_INVALID)) {
				continue // destroyed by a writer between find and read
			}
			return nil, err
		}
		k, err := keyOf(a[pkcs11.CKA_LABEL])
		if err != nil {
			return nil, err
		}
		if k != "" {
			out[k] = append(out[k], storedMeta{h: h, raw: a[pkcs11.CKA_VALUE]})
		}
	}
	return out, nil
}

func sortedNames(m map[string][]storedMeta) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// cloneRecord copies a record so a cached one is never mutated.
func cloneRecord(r *metaRecord) *metaRecord {
	c := *r
	c.Vers = append([]metaVersion(nil), r.Vers...)
	return &c
}
