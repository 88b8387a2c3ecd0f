package hsm

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/keyward/keyward/keys"
)

// Finding is one problem Doctor found with a token object.
type Finding struct {
	Label   string `json:"label"`
	ID      string `json:"id"` // hex CKA_ID
	Class   string `json:"class"`
	Key     string `json:"key,omitempty"` // keyward key name, when referenced by a record
	Version uint32 `json:"version,omitempty"`
	Problem string `json:"problem"`
	// Weak is true for a protection problem (the object could leak or be
	// misused); false for housekeeping (an unreferenced object).
	Weak bool `json:"weak"`
}

// Report is Doctor's result.
type Report struct {
	Token    string    `json:"token"`
	Keys     int       `json:"keys"`
	Objects  int       `json:"objects_checked"`
	Findings []Finding `json:"findings"`
}

// Weak is the number of findings that are protection problems.
func (r *Report) Weak() int {
	n := 0
	for _, f := range r.Findings {
		if f.Weak {
			n++
		}
	}
	return n
}

var className = map[uint]string{
	pkcs11.CKO_SECRET_KEY: "secret-key", pkcs11.CKO_PRIVATE_KEY: "private-key",
	pkcs11.CKO_PUBLIC_KEY: "public-key", pkcs11.CKO_DATA: "data",
}

// Doctor inspects every keyward object in the token (generated versions,
// adopted objects, the metadata key and the key records) and reports any
// that is extractable, not sensitive, not private, modifiable, has a usage
// attribute beyond its type, or fails its integrity check, any record
// naming an object keyward uses itself or another record names, and any
// keyward-labelled key object no record references; and grant records
// that fail their check, or that a crash left (older generations, claims).
func (t *Token) Doctor(ctx context.Context) (Report, error) {
	rep := Report{Token: t.tokenName(), Findings: []Finding{}}
	err := t.withSession(ctx, func(s *sess) error {
		rep.Findings, rep.Objects, rep.Keys = []Finding{}, 0, 0
		d := &doctorRun{s: s, rep: &rep, refs: map[objKey]expected{}, seen: map[objKey]bool{}}
		if err := d.records(); err != nil {
			return err
		}
		d.metaKey()
		if err := d.keyObjects(); err != nil {
			return err
		}
		if err := d.claims(); err != nil {
			return err
		}
		if err := d.grants(); err != nil {
			return err
		}
		d.missing()
		sortFindings(rep.Findings)
		return nil
	})
	return rep, err
}

// expected is what a record says of an object it names.
type expected struct {
	ty  keys.Type
	key string
	v   uint32
}

// doctorRun is one Doctor pass: the objects the records name (refs), those
// found on the token (seen) and the report being written.
type doctorRun struct {
	s    *sess
	rep  *Report
	refs map[objKey]expected
	seen map[objKey]bool
}

func (d *doctorRun) add(f Finding) { d.rep.Findings = append(d.rep.Findings, f) }

// records checks every key record and notes the objects each names. One
// search for every record (a search per key costs keys x objects on
// SoftHSM2).
func (d *doctorRun) records() error {
	byName, err := d.s.allStoredMeta()
	if err != nil {
		return err
	}
	for _, n := range sortedNames(byName) {
		d.rep.Keys++
		stored := byName[n]
		rec, err := d.s.pickMeta(n, stored, nil)
		if err != nil {
			d.add(Finding{Label: metaLabelPrefix + n, Class: "data", Key: n, Problem: err.Error(), Weak: true})
			continue
		}
		d.recordObjects(n, rec, stored)
		for _, mv := range rec.Vers {
			if mv.State != keys.Destroyed {
				d.version(n, rec.Type, mv)
			}
		}
	}
	return nil
}

// recordObjects checks the stored copies of key n's record, rec the one
// in force.
func (d *doctorRun) recordObjects(n string, rec *metaRecord, stored []storedMeta) {
	for _, r := range stored {
		if a, err := d.s.attrs(r.h, pkcs11.CKA_PRIVATE); err == nil && !boolAttr(a[pkcs11.CKA_PRIVATE]) {
			d.add(Finding{Label: metaLabelPrefix + n, Class: "data", Key: n, Problem: "key record is not private", Weak: true})
		}
		if other, err := d.s.parseMeta(n, r.raw); err == nil && other.Gen < rec.Gen {
			d.add(Finding{Label: metaLabelPrefix + n, Class: "data", Key: n,
				Problem: fmt.Sprintf("stale record generation %d (left by a crash during a change); the next change removes it", other.Gen)})
		}
	}
}

// version notes the objects of key n's version mv, and reports one that
// keyward uses itself or another key names.
func (d *doctorRun) version(n string, ty keys.Type, mv metaVersion) {
	if reservedLabel(n, mv) {
		d.add(Finding{Key: n, Version: mv.Version, Label: mv.Label, ID: mv.ID, Class: className[keyClass(ty)],
			Problem: fmt.Sprintf("the record names %s, an object keyward uses itself (an adoption before that was refused?): whoever may use or destroy this key could use it; keyward refuses to, and destroying this version keeps the object", reservedWhat(mv.Label)), Weak: true})
		return
	}
	classes := []uint{keyClass(ty)}
	if ty.Asymmetric() {
		classes = append(classes, pkcs11.CKO_PUBLIC_KEY)
	}
	for _, c := range classes {
		k := objKey{c, mv.Label, mv.ID}
		if other, dup := d.refs[k]; dup && other.key != n && c != pkcs11.CKO_PUBLIC_KEY {
			d.add(Finding{Key: n, Version: mv.Version, Label: mv.Label, ID: mv.ID, Class: className[c],
				Problem: fmt.Sprintf("the object is also key %s v%d: whoever may use either key uses it (destroying one version keeps the object while the other names it)", other.key, other.v), Weak: true})
		}
		d.refs[k] = expected{ty, n, mv.Version}
	}
}

// metaKey notes the keyring metadata key, or reports it missing.
func (d *doctorRun) metaKey() {
	if mk := d.s.st.metaKey; mk.Label != "" {
		d.refs[objKey{pkcs11.CKO_SECRET_KEY, metaKeyLabel, hex.EncodeToString(mk.ID)}] = expected{ty: keys.HMACSHA256}
	} else if d.rep.Keys > 0 {
		d.add(Finding{Label: metaKeyLabel, Class: "secret-key", Problem: "key records exist but the keyring metadata key is missing: no record can be verified", Weak: true})
	}
}

// keyObjects inspects every key object that a record names or that has
// keyward's label prefix.
func (d *doctorRun) keyObjects() error {
	for _, class := range []uint{pkcs11.CKO_SECRET_KEY, pkcs11.CKO_PRIVATE_KEY, pkcs11.CKO_PUBLIC_KEY} {
		hs, err := d.s.find([]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, class), pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true)})
		if err != nil {
			return err
		}
		for _, h := range hs {
			if err := d.keyObject(h, class); err != nil {
				return err
			}
		}
	}
	return nil
}

func (d *doctorRun) keyObject(h pkcs11.ObjectHandle, class uint) error {
	a, err := d.s.attrs(h, pkcs11.CKA_LABEL, pkcs11.CKA_ID)
	if err != nil {
		return err
	}
	k := objKey{class, string(a[pkcs11.CKA_LABEL]), hex.EncodeToString(a[pkcs11.CKA_ID])}
	w, referenced := d.refs[k]
	if !referenced && !bytes.HasPrefix(a[pkcs11.CKA_LABEL], []byte(labelPrefix)) {
		return nil // not keyward's
	}
	d.rep.Objects++
	d.seen[k] = true
	f := Finding{Label: k.label, ID: k.id, Class: className[class], Key: w.key, Version: w.v}
	if !referenced {
		f.Problem = "keyward object that no key record references (left by a crash or a lost race); safe to destroy after review"
		d.add(f)
	}
	for _, p := range d.s.inspect(h, w.ty, class) {
		f.Problem, f.Weak = p, true
		d.add(f)
	}
	return nil
}

// claims reports the claims (see storeMeta) on the token: they outlive
// their writer only if it stopped between its steps.
func (d *doctorRun) claims() error {
	claims, err := d.s.findStored([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_DATA),
		pkcs11.NewAttribute(pkcs11.CKA_APPLICATION, pendingApplication),
	})
	if err != nil {
		return err
	}
	for _, c := range claims {
		a, err := d.s.attrs(c.h, pkcs11.CKA_LABEL)
		if err != nil {
			continue // removed by a writer meanwhile
		}
		label := string(a[pkcs11.CKA_LABEL])
		name := strings.TrimPrefix(label, pendingLabelPrefix)
		d.rep.Objects++
		f := Finding{Label: label, Class: "data", Key: name}
		switch other, err := d.s.parseMeta(name, c.raw); {
		case err != nil || other.Pending == nil || !strings.HasPrefix(label, pendingLabelPrefix):
			f.Problem, f.Weak = fmt.Sprintf("claim object that is not a keyward claim (%v); it blocks changes to the key", err), true
		default:
			f.Problem = fmt.Sprintf("claim on record generation %d made at %s (by its writer's clock) by %s, which did not finish (or is finishing now); it blocks changes to the key until a change finds its generation published, its writer gone (a process of this host), or has seen it for %v",
				other.Gen, other.Pending.Format(time.RFC3339), other.Claimant, staleClaim)
		}
		d.add(f)
	}
	return nil
}

// missing reports the objects records name that the token lacks.
func (d *doctorRun) missing() {
	for k, w := range d.refs {
		if !d.seen[k] && w.key != "" {
			d.add(Finding{Key: w.key, Version: w.v, Label: k.label, ID: k.id, Class: className[k.class],
				Problem: "object listed in the key record is missing from the token", Weak: true})
		}
	}
}

// sortFindings orders findings by key, version and problem.
func sortFindings(fs []Finding) {
	sort.SliceStable(fs, func(i, j int) bool {
		a, b := fs[i], fs[j]
		if a.Key != b.Key {
			return a.Key < b.Key
		}
		if a.Version != b.Version {
			return a.Version < b.Version
		}
		return a.Problem < b.Problem
	})
}

// inspect lists the protection problems of one object.
func (s *sess) inspect(h pkcs11.ObjectHandle, ty keys.Type, class uint) []string {
	var probs []string
	types := append([]uint{pkcs11.CKA_MODIFIABLE}, usageAttrs...)
	if class != pkcs11.CKO_PUBLIC_KEY {
		types = append(types, pkcs11.CKA_PRIVATE, pkcs11.CKA_SENSITIVE, pkcs11.CKA_EXTRACTABLE,
			pkcs11.CKA_ALWAYS_SENSITIVE, pkcs11.CKA_NEVER_EXTRACTABLE)
	}
	got := map[uint][]byte{}
	for _, ty := range types { // one by one: a token may refuse an attribute that does not apply
		if a, err := s.attrs(h, ty); err == nil {
			got[ty] = a[ty]
		}
	}
	if class != pkcs11.CKO_PUBLIC_KEY {
		if !boolAttr(got[pkcs11.CKA_PRIVATE]) {
			probs = append(probs, "not private (CKA_PRIVATE=false)")
		}
		if !boolAttr(got[pkcs11.CKA_SENSITIVE]) {
			probs = append(probs, "not sensitive (CKA_SENSITIVE=false)")
		}
		if boolAttr(got[pkcs11.CKA_EXTRACTABLE]) {
			probs = append(probs, "extractable (CKA_EXTRACTABLE=true)")
		}
		if !boolAttr(got[pkcs11.CKA_ALWAYS_SENSITIVE]) || !boolAttr(got[pkcs11.CKA_NEVER_EXTRACTABLE]) {
			probs = append(probs, "was not always sensitive or was once extractable")
		}
	}
	if boolAttr(got[pkcs11.CKA_MODIFIABLE]) {
		probs = append(probs, "modifiable (CKA_MODIFIABLE=true: usage attributes can be changed later)")
	}
	if ty == "" {
		return probs // unreferenced object: its type is unknown
	}
	allowed := allowedUsage(ty, class)
	for _, u := range usageAttrs {
		if boolAttr(got[u]) && !allowed[u] {
			probs = append(probs, fmt.Sprintf("usage %s beyond what a %s key needs", attrName[u], ty))
		}
	}
	return probs
}

var attrName = map[uint]string{
	pkcs11.CKA_ENCRYPT: "CKA_ENCRYPT", pkcs11.CKA_DECRYPT: "CKA_DECRYPT", pkcs11.CKA_SIGN: "CKA_SIGN",
	pkcs11.CKA_VERIFY: "CKA_VERIFY", pkcs11.CKA_WRAP: "CKA_WRAP", pkcs11.CKA_UNWRAP: "CKA_UNWRAP",
	pkcs11.CKA_DERIVE: "CKA_DERIVE", pkcs11.CKA_SIGN_RECOVER: "CKA_SIGN_RECOVER", pkcs11.CKA_VERIFY_RECOVER: "CKA_VERIFY_RECOVER",
}
