package hsm

import (
	"encoding/hex"
	"fmt"

	"github.com/miekg/pkcs11"

	"github.com/keyward/keyward/keys"
)

// Vendor-neutral constants that miekg/pkcs11 v1.1.2 does not define (PKCS#11 3.0).
const (
	ckkECEdwards           = 0x40
	ckmECEdwardsKeyPairGen = 0x1055
	ckmEdDSA               = 0x1057
	labelPrefix            = "keyward:"
	metaApplication        = "keyward"
	metaKeyLabel           = "keyward:meta-mac-key"
	metaLabelPrefix        = "keyward:meta:"
	pendingLabelPrefix     = "keyward:meta-pending:"
	pendingApplication     = "keyward-pending"
	findBatch              = 64
	maxObjectsPerFind      = 4096
)

// OIDs as DER, for CKA_EC_PARAMS.
var (
	oidP256    = []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}
	oidEd25519 = []byte{0x06, 0x03, 0x2b, 0x65, 0x70}
)

// objRef names one token object: class, label and CKA_ID. Exactly one object
// must match it.
type objRef struct {
	Class uint
	Label string
	ID    []byte
}

// objKey names an object by class, label and hex id, as a map key.
type objKey struct {
	class uint
	label string
	id    string // hex
}

func (r objRef) key() objKey { return objKey{r.Class, r.Label, hex.EncodeToString(r.ID)} }

// template is the search for r. keyward's data objects (records, grants,
// claims) are all private: a public one with the same label, which anyone
// who can open a session may create without the PIN, is never one of them.
func (r objRef) template() []*pkcs11.Attribute {
	a := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, r.Class), pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true)}
	if r.Class == pkcs11.CKO_DATA {
		a = append(a, pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true))
	}
	if r.Label != "" {
		a = append(a, pkcs11.NewAttribute(pkcs11.CKA_LABEL, r.Label))
	}
	if len(r.ID) > 0 {
		a = append(a, pkcs11.NewAttribute(pkcs11.CKA_ID, r.ID))
	}
	return a
}

// protected is the search for r as a key keyward uses: a secret or private
// key object must also be private, sensitive, not extractable, and never
// have been otherwise (as keyward makes them, and as adopt requires). A
// PIN holder who put a key of known value (imported: not always
// sensitive) in a version's place is refused, not used.
func (r objRef) protected() []*pkcs11.Attribute {
	a := r.template()
	if r.Class == pkcs11.CKO_SECRET_KEY || r.Class == pkcs11.CKO_PRIVATE_KEY {
		a = append(a, pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true), pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false), pkcs11.NewAttribute(pkcs11.CKA_ALWAYS_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_NEVER_EXTRACTABLE, true))
	}
	return a
}

// find returns all handles matching tmpl, up to maxObjectsPerFind.
func (s *sess) find(tmpl []*pkcs11.Attribute) ([]pkcs11.ObjectHandle, error) {
	if err := s.p.FindObjectsInit(s.sh, tmpl); err != nil {
		return nil, err
	}
	var all []pkcs11.ObjectHandle
	for len(all) < maxObjectsPerFind {
		hs, _, err := s.p.FindObjects(s.sh, findBatch)
		if err != nil {
			s.p.FindObjectsFinal(s.sh)
			return nil, err
		}
		if len(hs) == 0 {
			break
		}
		all = append(all, hs...)
	}
	if err := s.p.FindObjectsFinal(s.sh); err != nil {
		return nil, err
	}
	return all, nil
}

// handle returns the one object matching r (protected), from the
// per-generation cache or by a find that must match exactly one object.
func (s *sess) handle(r objRef) (pkcs11.ObjectHandle, error) {
	k := r.key()
	if h, ok := s.st.handles.Load(k); ok {
		return h.(pkcs11.ObjectHandle), nil
	}
	hs, err := s.find(r.protected())
	if err != nil {
		return 0, err
	}
	switch len(hs) {
	case 0:
		if weak, err := s.find(r.template()); err == nil && len(weak) > 0 {
			return 0, fmt.Errorf("%s: the token's object is not private, sensitive and never extractable, as keyward's keys are (replaced on the token?): %w",
				r.Label, keys.ErrIntegrity)
		}
		return 0, fmt.Errorf("%s: %w", r.Label, errObjectMissing)
	case 1:
	default:
		return 0, fmt.Errorf("%s: %d objects: %w", r.Label, len(hs), errObjectAmbiguous)
	}
	s.st.handles.Store(k, hs[0])
	return hs[0], nil
}

// forget drops a cached handle (after the object was destroyed).
func (s *sess) forget(r objRef) { s.st.handles.Delete(r.key()) }

// attrs reads attributes of h.
func (s *sess) attrs(h pkcs11.ObjectHandle, types ...uint) (map[uint][]byte, error) {
	tmpl := make([]*pkcs11.Attribute, len(types))
	for i, ty := range types {
		tmpl[i] = pkcs11.NewAttribute(ty, nil)
	}
	got, err := s.p.GetAttributeValue(s.sh, h, tmpl)
	if err != nil {
		return nil, err
	}
	m := make(map[uint][]byte, len(got))
	for _, a := range got {
		m[a.Type] = a.Value
	}
	return m, nil
}

func boolAttr(b []byte) bool { return len(b) > 0 && b[0] != 0 }

// mechanism requirements per key type: generation, use.
var typeMechs = map[keys.Type][]uint{
	keys.AES256GCM:  {pkcs11.CKM_AES_KEY_GEN, pkcs11.CKM_AES_GCM},
	keys.HMACSHA256: {pkcs11.CKM_GENERIC_SECRET_KEY_GEN, pkcs11.CKM_SHA256_HMAC},
	keys.ECDSAP256:  {pkcs11.CKM_EC_KEY_PAIR_GEN, pkcs11.CKM_ECDSA},
	keys.RSA3072PSS: {pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, pkcs11.CKM_SHA256_RSA_PKCS_PSS},
	keys.Ed25519:    {ckmECEdwardsKeyPairGen, ckmEdDSA},
}

// supports reports whether the token offers every mechanism type ty needs.
func (s *sess) supports(ty keys.Type) bool {
	for _, m := range typeMechs[ty] {
		if !s.st.mechs[m] {
			return false
		}
	}
	return true
}

// usage lists the usage attributes a key object may have set, per type and
// class; everything else in usageAttrs must be false.
var usageAttrs = []uint{
	pkcs11.CKA_ENCRYPT, pkcs11.CKA_DECRYPT, pkcs11.CKA_SIGN, pkcs11.CKA_VERIFY,
	pkcs11.CKA_WRAP, pkcs11.CKA_UNWRAP, pkcs11.CKA_DERIVE, pkcs11.CKA_SIGN_RECOVER, pkcs11.CKA_VERIFY_RECOVER,
}

func allowedUsage(ty keys.Type, class uint) map[uint]bool {
	switch {
	case ty == keys.AES256GCM:
		return map[uint]bool{pkcs11.CKA_ENCRYPT: true, pkcs11.CKA_DECRYPT: true}
	case ty == keys.HMACSHA256:
		return map[uint]bool{pkcs11.CKA_SIGN: true, pkcs11.CKA_VERIFY: true}
	case class == pkcs11.CKO_PRIVATE_KEY:
		return map[uint]bool{pkcs11.CKA_SIGN: true}
	default: // public key of a signing pair
		return map[uint]bool{pkcs11.CKA_VERIFY: true}
	}
}

// usageTemplate sets every usage attribute: the allowed ones true, the rest false.
func usageTemplate(ty keys.Type, class uint) []*pkcs11.Attribute {
	allowed := allowedUsage(ty, class)
	var a []*pkcs11.Attribute
	for _, u := range usageAttrs {
		if class == pkcs11.CKO_PUBLIC_KEY && (u == pkcs11.CKA_DECRYPT || u == pkcs11.CKA_SIGN || u == pkcs11.CKA_UNWRAP || u == pkcs11.CKA_SIGN_RECOVER) {
			continue // not applicable to public keys
		}
		if class == pkcs11.CKO_PRIVATE_KEY && (u == pkcs11.CKA_ENCRYPT || u == pkcs11.CKA_VERIFY || u == pkcs11.CKA_WRAP || u == pkcs11.CKA_VERIFY_RECOVER) {
			continue // not applicable to private keys
		}
		if class == pkcs11.CKO_SECRET_KEY && (u == pkcs11.CKA_SIGN_RECOVER || u == pkcs11.CKA_VERIFY_RECOVER) {
			continue // not applicable to secret keys (SoftHSM2 refuses them)
		}
		a = append(a, pkcs11.NewAttribute(u, allowed[u]))
	}
	return a
}

// protectTemplate holds the attributes every secret or private key object gets.
func protectTemplate(label string, id []byte) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
	}
}

// keyClass is the class of the object that does the private work for ty.
func keyClass(ty keys.Type) uint {
	if ty.Asymmetric() {
		return pkcs11.CKO_PRIVATE_KEY
	}
	return pkcs11.CKO_SECRET_KEY
}

// generate makes the object(s) for one key version inside the token.
func (s *sess) generate(ty keys.Type, label string, id []byte) error {
	switch ty {
	case keys.AES256GCM, keys.HMACSHA256:
		mech, kt := uint(pkcs11.CKM_AES_KEY_GEN), uint(pkcs11.CKK_AES)
		if ty == keys.HMACSHA256 {
			mech, kt = pkcs11.CKM_GENERIC_SECRET_KEY_GEN, pkcs11.CKK_GENERIC_SECRET
		}
		tmpl := append([]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, kt),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
		}, protectTemplate(label, id)...)
		tmpl = append(tmpl, usageTemplate(ty, pkcs11.CKO_SECRET_KEY)...)
		_, err := s.p.GenerateKey(s.sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, tmpl)
		return err
	}
	var mech uint
	var pubExtra, privExtra []*pkcs11.Attribute
	switch ty {
	case keys.ECDSAP256:
		mech = pkcs11.CKM_EC_KEY_PAIR_GEN
		pubExtra = []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC), pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, oidP256)}
		privExtra = []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC)}
	case keys.Ed25519:
		mech = ckmECEdwardsKeyPairGen
		pubExtra = []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, ckkECEdwards), pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, oidEd25519)}
		privExtra = []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, ckkECEdwards)}
	case keys.RSA3072PSS:
		mech = pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN
		pubExtra = []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, 3072),
			pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}),
		}
		privExtra = []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA)}
	default:
		return fmt.Errorf("key type %q: %w", ty, keys.ErrUnsupported)
	}
	pub := append([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
		pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
	}, pubExtra...)
	pub = append(pub, usageTemplate(ty, pkcs11.CKO_PUBLIC_KEY)...)
	priv := append([]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY)}, privExtra...)
	priv = append(priv, protectTemplate(label, id)...)
	priv = append(priv, usageTemplate(ty, pkcs11.CKO_PRIVATE_KEY)...)
	_, _, err := s.p.GenerateKeyPair(s.sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, pub, priv)
	return err
}

// versionLabel is the CKA_LABEL of a generated key version.
func versionLabel(name string, v uint32) string { return fmt.Sprintf("%s%s:v%d", labelPrefix, name, v) }
