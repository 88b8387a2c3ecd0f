package keystest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"testing"

	"github.com/keyward/keyward/keys"
)

// signer says how Go checks one asymmetric type: the shape of its public key
// and of its signatures, independently of the backend.
type signer struct {
	typ keys.Type
	// check returns an error unless pub is the right kind and size of key.
	check func(pub crypto.PublicKey) error
	// verify checks sig over msg with Go's crypto.
	verify func(pub crypto.PublicKey, msg, sig []byte) error
}

var signers = []signer{
	{
		typ: keys.ECDSAP256,
		check: func(pub crypto.PublicKey) error {
			k, ok := pub.(*ecdsa.PublicKey)
			if !ok {
				return fmt.Errorf("public key is %T, want *ecdsa.PublicKey", pub)
			}
			if k.Curve != elliptic.P256() {
				return fmt.Errorf("curve is %s, want P-256", k.Curve.Params().Name)
			}
			return nil
		},
		verify: func(pub crypto.PublicKey, msg, sig []byte) error {
			d := sha256.Sum256(msg)
			if !ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), d[:], sig) {
				return errors.New("ecdsa.VerifyASN1 refuses the signature (want ASN.1 DER over SHA-256)")
			}
			return nil
		},
	},
	{
		typ: keys.RSA3072PSS,
		check: func(pub crypto.PublicKey) error {
			k, ok := pub.(*rsa.PublicKey)
			if !ok {
				return fmt.Errorf("public key is %T, want *rsa.PublicKey", pub)
			}
			if k.N.BitLen() != 3072 {
				return fmt.Errorf("modulus of %d bits, want 3072", k.N.BitLen())
			}
			return nil
		},
		verify: func(pub crypto.PublicKey, msg, sig []byte) error {
			d := sha256.Sum256(msg)
			opts := &rsa.PSSOptions{SaltLength: keys.PSSSaltLength, Hash: crypto.SHA256}
			return rsa.VerifyPSS(pub.(*rsa.PublicKey), crypto.SHA256, d[:], sig, opts)
		},
	},
	{
		typ: keys.Ed25519,
		check: func(pub crypto.PublicKey) error {
			if k, ok := pub.(ed25519.PublicKey); !ok || len(k) != ed25519.PublicKeySize {
				return fmt.Errorf("public key is %T, want a %d-byte ed25519.PublicKey", pub, ed25519.PublicKeySize)
			}
			return nil
		},
		verify: func(pub crypto.PublicKey, msg, sig []byte) error {
			if len(sig) != ed25519.SignatureSize {
				return fmt.Errorf("signature of %d bytes, want %d", len(sig), ed25519.SignatureSize)
			}
			if !ed25519.Verify(pub.(ed25519.PublicKey), msg, sig) {
				return errors.New("ed25519.Verify refuses the signature")
			}
			return nil
		},
	},
}

// equalKey reports whether two public keys are the same; every public key
// type of the standard library has this method.
func equalKey(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

func testSign(t *testing.T, be keys.Backend) {
	for _, s := range signers {
		t.Run(string(s.typ), func(t *testing.T) { testSigner(t, be, s) })
	}
}

// Long on purpose: a list of t.Run conformance cases, each a few lines, read top to bottom.
func testSigner(t *testing.T, be keys.Backend, s signer) {
	name := create(t, be, s.typ).Name
	msg := []byte("sign me")

	// sign signs msg and checks the signature with Go under pub.
	sign := func(t *testing.T, msg []byte, wantVersion uint32, pub crypto.PublicKey) []byte {
		t.Helper()
		sig, err := be.Sign(t.Context(), name, msg)
		must(t, err, "Sign(%s)", name)
		if sig.Name != name || sig.Version != wantVersion {
			t.Fatalf("Sign gave %s v%d, want %s v%d", sig.Name, sig.Version, name, wantVersion)
		}
		if err := s.verify(pub, msg, sig.Bytes); err != nil {
			t.Fatalf("Go's crypto does not verify the v%d signature: %v", wantVersion, err)
		}
		return sig.Bytes
	}
	publicKey := func(t *testing.T, v, wantVersion uint32) crypto.PublicKey {
		t.Helper()
		pub, got, err := be.PublicKey(t.Context(), name, v)
		must(t, err, "PublicKey(%s, %d)", name, v)
		if got != wantVersion {
			t.Errorf("PublicKey(%s, %d) returned v%d, want v%d", name, v, got, wantVersion)
		}
		if err := s.check(pub); err != nil {
			t.Fatalf("PublicKey(%s, %d): %v", name, v, err)
		}
		return pub
	}

	pub1 := publicKey(t, 0, 1)
	if !equalKey(publicKey(t, 1, 1), pub1) {
		t.Error("PublicKey(name, 1) differs from PublicKey(name, 0) on a one-version key")
	}
	sig1 := sign(t, msg, 1, pub1)

	t.Run("verify", func(t *testing.T) {
		must(t, be.Verify(t.Context(), name, 1, msg, sig1), "backend Verify of its own signature")
		empty := sign(t, []byte{}, 1, pub1)
		must(t, be.Verify(t.Context(), name, 1, []byte{}, empty), "backend Verify over an empty message")
	})

	t.Run("bad_signature", func(t *testing.T) {
		for _, tc := range []struct {
			name     string
			msg, sig []byte
			want     []error
		}{
			{"wrong_message", []byte("sign m3"), sig1, []error{keys.ErrInvalidSignature}},
			// A flipped byte may break the DER framing of an ECDSA signature.
			{"flipped_last_byte", msg, flip(sig1, len(sig1)-1), []error{keys.ErrInvalidSignature, keys.ErrMalformed}},
			{"flipped_middle_byte", msg, flip(sig1, len(sig1)/2), []error{keys.ErrInvalidSignature, keys.ErrMalformed}},
			{"truncated", msg, sig1[:len(sig1)-1], []error{keys.ErrInvalidSignature, keys.ErrMalformed}},
			{"empty", msg, nil, []error{keys.ErrInvalidSignature, keys.ErrMalformed}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				wantErr(t, be.Verify(t.Context(), name, 1, tc.msg, tc.sig), "Verify", tc.want...)
			})
		}
	})

	t.Run("one_encoding", func(t *testing.T) {
		if s.typ != keys.ECDSAP256 {
			t.Skip("only ECDSA signatures have a second valid form (s and n-s)")
		}
		// Devices return s in either half; keyward returns the low one,
		// and refuses the other (a second valid form of one signature).
		for i := range 16 {
			sig := sign(t, msg, 1, pub1)
			twin, high := ecdsaTwin(t, sig)
			if high {
				t.Fatalf("signature %d has s > n/2: keyward's signatures have a low s", i)
			}
			wantErr(t, be.Verify(t.Context(), name, 1, msg, twin), "Verify of the high-S twin of a valid signature", keys.ErrInvalidSignature)
		}
	})

	t.Run("retired_versions", func(t *testing.T) { testRetiredSigner(t, be, s) })

	t.Run("unknown_version", func(t *testing.T) {
		_, _, err := be.PublicKey(t.Context(), name, 9)
		wantErr(t, err, "PublicKey of a version that does not exist", keys.ErrKeyNotFound)
		wantErr(t, be.Verify(t.Context(), name, 9, msg, sig1), "Verify with a version that does not exist", keys.ErrKeyNotFound)
	})

	t.Run("rotation", func(t *testing.T) {
		rotate(t, be, name)
		pub2 := publicKey(t, 0, 2)
		if equalKey(pub2, pub1) {
			t.Fatal("v2 has the same public key as v1")
		}
		if !equalKey(publicKey(t, 1, 1), pub1) {
			t.Error("PublicKey(name, 1) changed after rotation")
		}
		if !equalKey(publicKey(t, 2, 2), pub2) {
			t.Error("PublicKey(name, 2) differs from PublicKey(name, 0)")
		}
		sig2 := sign(t, msg, 2, pub2)
		if s.verify(pub1, msg, sig2) == nil {
			t.Error("a v2 signature verifies under the v1 public key")
		}
		must(t, be.Verify(t.Context(), name, 2, msg, sig2), "backend Verify of a v2 signature")
		must(t, be.Verify(t.Context(), name, 1, msg, sig1), "backend Verify of a v1 signature after rotation")
		wantErr(t, be.Verify(t.Context(), name, 1, msg, sig2), "Verify of a v2 signature as v1", keys.ErrInvalidSignature)

		setState(t, be, name, 1, keys.Disabled)
		wantErr(t, be.Verify(t.Context(), name, 1, msg, sig1), "Verify with a disabled version", keys.ErrVersionDisabled)
		setState(t, be, name, 1, keys.Enabled)
	})
}

// ecdsaTwin returns the other valid form of an ECDSA signature, (r, n-s),
// and whether sig's own s is in the high half.
func ecdsaTwin(t *testing.T, sig []byte) (twin []byte, high bool) {
	t.Helper()
	var v struct{ R, S *big.Int }
	if rest, err := asn1.Unmarshal(sig, &v); err != nil || len(rest) != 0 {
		t.Fatalf("signature is not one DER ECDSA signature: %v", err)
	}
	n := elliptic.P256().Params().N
	other := new(big.Int).Sub(n, v.S)
	twin, err := asn1.Marshal(struct{ R, S *big.Int }{v.R, other})
	must(t, err, "encode the twin")
	return twin, v.S.Cmp(other) > 0
}

// testRetiredSigner: the public key of a version below the minimum decrypt
// version is still served (it is public, and old signatures may be checked
// without keyward), but Verify refuses it; a disabled version serves
// neither, a destroyed one neither, for good.
func testRetiredSigner(t *testing.T, be keys.Backend, s signer) {
	name := create(t, be, s.typ).Name
	msg := []byte("retire me")
	pub1, _, err := be.PublicKey(t.Context(), name, 1)
	must(t, err, "PublicKey(%s, 1)", name)
	sig1, err := be.Sign(t.Context(), name, msg)
	must(t, err, "Sign(%s)", name)
	rotate(t, be, name)
	_, err = be.SetMinDecryptVersion(t.Context(), name, 2)
	must(t, err, "SetMinDecryptVersion(%s, 2)", name)

	got, v, err := be.PublicKey(t.Context(), name, 1)
	must(t, err, "PublicKey of a version below the minimum decrypt version")
	if v != 1 || !equalKey(got, pub1) {
		t.Errorf("PublicKey(%s, 1) below the minimum = v%d, another key: want v1's key", name, v)
	}
	if _, v, err := be.PublicKey(t.Context(), name, 0); err != nil || v != 2 {
		t.Errorf("PublicKey(%s, 0) = v%d, %v; want v2", name, v, err)
	}
	wantErr(t, be.Verify(t.Context(), name, 1, msg, sig1.Bytes), "Verify below the minimum decrypt version", keys.ErrBelowMinVersion)

	setState(t, be, name, 1, keys.Disabled)
	_, _, err = be.PublicKey(t.Context(), name, 1)
	wantErr(t, err, "PublicKey of a disabled version", keys.ErrVersionDisabled)
	setState(t, be, name, 1, keys.Enabled)

	destroy(t, be, name, 1)
	_, _, err = be.PublicKey(t.Context(), name, 1)
	wantErr(t, err, "PublicKey of a destroyed version", keys.ErrVersionDestroyed)
	wantErr(t, be.Verify(t.Context(), name, 1, msg, sig1.Bytes), "Verify with a destroyed version", keys.ErrVersionDestroyed, keys.ErrBelowMinVersion)
}
