package hsm_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/keyward/keyward/keys"
)

// TestVerifyOnlyKeywardsPSS: a PSS signature by keyward's own key, made in
// the token with a salt other than keys.PSSSaltLength, does not verify; the
// same signature with keyward's salt length does.
func TestVerifyOnlyKeywardsPSS(t *testing.T) {
	ctx := context.Background()
	tk := open(t, nil)
	name := fmt.Sprintf("pss%d/k", time.Now().UnixNano()%1e9)
	if _, err := tk.CreateKey(ctx, name, keys.RSA3072PSS); err != nil {
		t.Fatal(err)
	}
	p, sh := rawSession(t)
	hs := rawFind(t, p, sh, pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY), pkcs11.NewAttribute(pkcs11.CKA_LABEL, "keyward:"+name+":v1"))
	if len(hs) != 1 {
		t.Fatalf("%d private key objects for %s v1", len(hs), name)
	}
	msg := []byte("signed outside keyward")
	longest := 3072/8 - sha256.Size - 2
	for _, tc := range []struct {
		salt    uint
		wantErr error
	}{
		{keys.PSSSaltLength, nil},
		{0, keys.ErrInvalidSignature},
		{20, keys.ErrInvalidSignature},
		{keys.PSSSaltLength + 1, keys.ErrInvalidSignature},
		{uint(longest), keys.ErrInvalidSignature},
	} {
		t.Run(fmt.Sprintf("salt_%d", tc.salt), func(t *testing.T) {
			mech := pkcs11.NewMechanism(pkcs11.CKM_SHA256_RSA_PKCS_PSS, pkcs11.NewPSSParams(pkcs11.CKM_SHA256, pkcs11.CKG_MGF1_SHA256, tc.salt))
			if err := p.SignInit(sh, []*pkcs11.Mechanism{mech}, hs[0]); err != nil {
				t.Fatal(err)
			}
			sig, err := p.Sign(sh, msg)
			if err != nil {
				t.Fatal(err)
			}
			if err := tk.Verify(ctx, name, 1, msg, sig); !errors.Is(err, tc.wantErr) {
				t.Fatalf("Verify of a PSS signature with salt %d: %v, want %v", tc.salt, err, tc.wantErr)
			}
		})
	}
}
