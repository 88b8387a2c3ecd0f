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

// Weak reports whether any finding is a protection problem.
func (r *Report) Weak() bool {
	for _, f := range r.Findings {
		if f.Weak {
			return true
		}
	}
	return false
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
// keyward-labelled key object no record references.
func (t *Token) Doctor(ctx context.Context) (Report, error) {
	rep := Report{Token: t.tokenName()}
	err := t.withSession(ctx, func(s *sess) error {
		rep.Findings, rep.Objects, rep.Keys = []Finding{}, 0, 0
		type want struct {
			ty    keys.Type
			key   string
			v     uint32
			label string
			id    string
			class uint
		}
		refs := map[string]want{} // class|label|id -> expectation
		// One search for every record (a search per key costs keys x
		// objects on SoftHSM2).
		byName, err := s.allStoredMeta()
		if err != nil {
			return err
		}
		for _, n := range sortedNames(byName) {
			rep.Keys++
			stored := byName[n]
			rec, err := s.pickMeta(n, stored, nil)
			if err != nil {
				rep.Findings = append(rep.Findings, Finding{Label: metaLabelPrefix + n, Class: "data", Key: n, Problem: err.Error(), Weak: true})
				continue
			}
			for _, r := range stored {
				if a, err := s.attrs(r.h, pkcs11.CKA_PRIVATE); err == nil && !boolAttr(a[pkcs11.CKA_PRIVATE]) {
					rep.Findings = append(rep.Findings, Finding{Label: metaLabelPrefix + n, Class: "data", Key: n, Problem: "key record is not private", Weak: true})
				}
				if other, err := s.parseMeta(n, r.raw); err == nil && other.Gen < rec.Gen {
					rep.Findings = append(rep.Findings, Finding{Label: metaLabelPrefix + n, Class: "data", Key: n,
						Problem: fmt.Sprintf("stale record generation %d (left by a crash during a change); the next change removes it", other.Gen)})
				}
			}
			for _, mv := range rec.Vers {
				if mv.State == keys.Destroyed {
					continue
				}
				if reservedLabel(n, mv) {
					rep.Findings = append(rep.Findings, Finding{Key: n, Version: mv.Version, Label: mv.Label, ID: mv.ID, Class: className[keyClass(rec.Type)],
						Problem: fmt.Sprintf("the record names %s, an object keyward uses itself (an adoption before that was refused?): whoever may use or destroy this key could use it; keyward refuses to, and destroying this version keeps the object", reservedWhat(mv.Label)), Weak: true})
					continue
				}
				classes := []uint{keyClass(rec.Type)}
				if rec.Type.Asymmetric() {
					classes = append(classes, pkcs11.CKO_PUBLIC_KEY)
				}
				for _, c := range classes {
					k := fmt.Sprintf("%d|%s|%s", c, mv.Label, mv.ID)
					if other, dup := refs[k]; dup && other.key != n && c != pkcs11.CKO_PUBLIC_KEY {
						rep.Findings = append(rep.Findings, Finding{Key: n, Version: mv.Version, Label: mv.Label, ID: mv.ID, Class: className[c],
							Problem: fmt.Sprintf("the object is also key %s v%d: whoever may use either key uses it (destroying one version keeps the object while the other names it)", other.key, other.v), Weak: true})
					}
					refs[k] = want{rec.Type, n, mv.Version, mv.Label, mv.ID, c}
				}
			}
		}
		if s.st.metaKey.Label == "" {
			if rep.Keys > 0 {
				rep.Findings = append(rep.Findings, Finding{Label: metaKeyLabel, Class: "secret-key", Problem: "key records exist but the keyring metadata key is missing: no record can be verified", Weak: true})
			}
		} else {
			refs[fmt.Sprintf("%d|%s|%x", uint(pkcs11.CKO_SECRET_KEY), metaKeyLabel, s.st.metaKey.ID)] = want{ty: keys.HMACSHA256}
		}
		seen := map[string]bool{}
		for _, class := range []uint{pkcs11.CKO_SECRET_KEY, pkcs11.CKO_PRIVATE_KEY, pkcs11.CKO_PUBLIC_KEY} {
			hs, err := s.find([]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, class), pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true)})
			if err != nil {
				return err
			}
			for _, h := range hs {
				a, err := s.attrs(h, pkcs11.CKA_LABEL, pkcs11.CKA_ID)
				if err != nil {
					return err
				}
				label, id := string(a[pkcs11.CKA_LABEL]), hex.EncodeToString(a[pkcs11.CKA_ID])
				k := fmt.Sprintf("%d|%s|%s", class, label, id)
				w, referenced := refs[k]
				if !referenced && !bytes.HasPrefix(a[pkcs11.CKA_LABEL], []byte(labelPrefix)) {
					continue // not keyward's
				}
				rep.Objects++
				seen[k] = true
				f := Finding{Label: label, ID: id, Class: className[class], Key: w.key, Version: w.v}
				if !referenced {
					f.Problem = "keyward object that no key record references (left by a crash or a lost race); safe to destroy after review"
					rep.Findings = append(rep.Findings, f)
				}
				for _, p := range s.inspect(h, w.ty, class) {
					f.Problem, f.Weak = p, true
					rep.Findings = append(rep.Findings, f)
				}
			}
		}
		// Claims (see storeMeta) outlive their writer only if it stopped
		// between its steps.
		claims, err := s.findStored([]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_DATA),
			pkcs11.NewAttribute(pkcs11.CKA_APPLICATION, pendingApplication),
		})
		if err != nil {
			return err
		}
		for _, c := range claims {
			a, err := s.attrs(c.h, pkcs11.CKA_LABEL)
			if err != nil {
				continue // removed by a writer meanwhile
			}
			label := string(a[pkcs11.CKA_LABEL])
			name := strings.TrimPrefix(label, pendingLabelPrefix)
			rep.Objects++
			f := Finding{Label: label, Class: "data", Key: name}
			switch other, err := s.parseMeta(name, c.raw); {
			case err != nil || other.Pending == nil || !strings.HasPrefix(label, pendingLabelPrefix):
				f.Problem, f.Weak = fmt.Sprintf("claim object that is not a keyward claim (%v); it blocks changes to the key", err), true
			default:
				f.Problem = fmt.Sprintf("claim on record generation %d made at %s (by its writer's clock) by %s, which did not finish (or is finishing now); it blocks changes to the key until a change finds its generation published, its writer gone (a process of this host), or has seen it for %v",
					other.Gen, other.Pending.Format(time.RFC3339), other.Claimant, staleClaim)
			}
			rep.Findings = append(rep.Findings, f)
		}
		for k, w := range refs {
			if !seen[k] && w.key != "" {
				rep.Findings = append(rep.Findings, Finding{Key: w.key, Version: w.v, Label: w.label, ID: w.id, Class: className[w.class],
					Problem: "object listed in the key record is missing from the token", Weak: true})
			}
		}
		sort.SliceStable(rep.Findings, func(i, j int) bool {
			a, b := rep.Findings[i], rep.Findings[j]
			if a.Key != b.Key {
				return a.Key < b.Key
			}
			if a.Version != b.Version {
				return a.Version < b.Version
			}
			return a.Problem < b.Problem
		})
		return nil
	})
	return rep, err
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
