package hsm_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/asn1"
	"errors"
	"testing"

	"github.com/miekg/pkcs11"

	"github.com/keyward/keyward/hsm"
	"github.com/keyward/keyward/keys"
)

// TestSwappedObjectsRefused: objects put in the place of a key's version
// on the token are refused, not used, by a backend that has not seen the
// originals (a restart):
//   - a public key object with another key's point (a public object: anyone
//     who can open a session may destroy and create it, without the PIN):
//     the version's private key must sign what it verifies;
//   - a secret key of known value, imported with the same label and id
//     (sensitive and private, but not always sensitive nor never
//     extractable, as no imported key can be);
//   - a public data object labelled as a key's record (which anyone may
//     create) is not taken for the record: the key still works.
func TestSwappedObjectsRefused(t *testing.T) {
	ctx := context.Background()
	b := open(t, nil)
	for _, k := range []struct {
		name string
		ty   keys.Type
	}{{"swap/sig", keys.ECDSAP256}, {"swap/aes", keys.AES256GCM}, {"swap/mac", keys.HMACSHA256}} {
		if _, err := b.CreateKey(ctx, k.name, k.ty); err != nil {
			t.Fatal(err)
		}
	}
	p, sh := rawSession(t)
	swap := func(class uint, label string, extra ...*pkcs11.Attribute) {
		t.Helper()
		hs := rawFind(t, p, sh, pkcs11.NewAttribute(pkcs11.CKA_CLASS, class), pkcs11.NewAttribute(pkcs11.CKA_LABEL, label))
		if len(hs) != 1 {
			t.Fatalf("%d objects labelled %s", len(hs), label)
		}
		a, err := p.GetAttributeValue(sh, hs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, nil)})
		if err != nil {
			t.Fatal(err)
		}
		if err := p.DestroyObject(sh, hs[0]); err != nil {
			t.Fatal(err)
		}
		tmpl := append([]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, class), pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label), pkcs11.NewAttribute(pkcs11.CKA_ID, a[0].Value),
			pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false)}, extra...)
		if _, err := p.CreateObject(sh, tmpl); err != nil {
			t.Fatalf("create %s: %v", label, err)
		}
	}
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	point, _ := asn1.Marshal(elliptic.Marshal(elliptic.P256(), other.X, other.Y)) //nolint:staticcheck // the encoding PKCS#11 asks for
	p256, _ := asn1.Marshal(asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7})
	swap(pkcs11.CKO_PUBLIC_KEY, "keyward:swap/sig:v1", pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false), pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, p256), pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, point))
	swap(pkcs11.CKO_SECRET_KEY, "keyward:swap/aes:v1", pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, make([]byte, 32)), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true), pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true))
	if _, err := p.CreateObject(sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_DATA),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, "keyward:meta:swap/mac"), pkcs11.NewAttribute(pkcs11.CKA_APPLICATION, "keyward"),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, []byte("junk"))}); err != nil {
		t.Fatal(err)
	}

	fresh := open(t, func(c *hsm.Config) { c.MetadataMaxAge = -1 })
	if _, _, err := fresh.PublicKey(ctx, "swap/sig", 0); !errors.Is(err, keys.ErrIntegrity) {
		t.Errorf("public key of a swapped public object: %v, want an integrity failure", err)
	}
	if _, err := fresh.Wrap(ctx, "swap/aes", []byte("secret"), nil); !errors.Is(err, keys.ErrIntegrity) {
		t.Errorf("wrap under an imported key in a version's place: %v, want an integrity failure", err)
	}
	if _, err := fresh.MAC(ctx, "swap/mac", []byte("m")); err != nil {
		t.Errorf("mac with a public lookalike of the record on the token: %v", err)
	}
}
