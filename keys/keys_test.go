package keys_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/asn1"
	"errors"
	"math/big"
	"testing"

	"github.com/keyward/keyward/keys"
)

func TestPublicVersion(t *testing.T) {
	k := &keys.KeyInfo{Name: "k", MinDecryptVersion: 2, Versions: []keys.VersionInfo{
		{Version: 1, State: keys.Enabled}, {Version: 2, State: keys.Disabled}, {Version: 3, State: keys.Enabled}, {Version: 4, State: keys.Destroyed},
	}}
	tests := []struct {
		name      string
		v         uint32
		forVerify bool
		want      uint32
		wantErr   error
	}{
		{"public key, newest", 0, false, 3, nil},
		{"public key v1 (below the minimum is fine)", 1, false, 1, nil},
		{"public key, disabled", 2, false, 0, keys.ErrVersionDisabled},
		{"public key, destroyed", 4, false, 0, keys.ErrVersionDestroyed},
		{"public key, no such version", 5, false, 0, keys.ErrKeyNotFound},
		{"verify needs a version", 0, true, 0, keys.ErrInvalidArgument},
		{"verify below the minimum", 1, true, 0, keys.ErrBelowMinVersion},
		{"verify disabled", 2, true, 0, keys.ErrVersionDisabled},
		{"verify ok", 3, true, 3, nil},
		{"verify destroyed", 4, true, 0, keys.ErrVersionDestroyed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := k.PublicVersion(tt.v, tt.forVerify)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && got != tt.want) {
				t.Fatalf("PublicVersion(%d, %v) = %d, %v; want %d, %v", tt.v, tt.forVerify, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestVerifySignature(t *testing.T) {
	msg := []byte("message")
	d := sha256.Sum256(msg)
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecSig, _ := ecdsa.SignASN1(rand.Reader, ec, d[:])
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	rsaSig, _ := rsa.SignPSS(rand.Reader, rk, crypto.SHA256, d[:], &rsa.PSSOptions{SaltLength: 32})
	pss := func(salt int) []byte {
		sig, err := rsa.SignPSS(rand.Reader, rk, crypto.SHA256, d[:], &rsa.PSSOptions{SaltLength: salt})
		if err != nil {
			t.Fatal(err)
		}
		return sig
	}
	low, high := ecdsaTwins(t, ec, d[:])
	edPub, edPriv, _ := ed25519.GenerateKey(rand.Reader)
	edSig := ed25519.Sign(edPriv, msg)
	tests := []struct {
		name string
		pub  any
		msg  []byte
		sig  []byte
		want bool
	}{
		{"ecdsa", &ec.PublicKey, msg, low, true},
		{"ecdsa, other message", &ec.PublicKey, []byte("other"), ecSig, false},
		{"rsa-pss", &rk.PublicKey, msg, rsaSig, true},
		{"rsa-pss, truncated", &rk.PublicKey, msg, rsaSig[:10], false},
		{"rsa-pss, salt 0", &rk.PublicKey, msg, pss(0), false},
		{"rsa-pss, salt 20", &rk.PublicKey, msg, pss(20), false},
		{"rsa-pss, salt 33", &rk.PublicKey, msg, pss(33), false},
		{"rsa-pss, longest salt", &rk.PublicKey, msg, pss(rsa.PSSSaltLengthAuto), false},
		{"ecdsa, low s", &ec.PublicKey, msg, low, true},
		{"ecdsa, high-S twin", &ec.PublicKey, msg, high, false},
		{"ecdsa, trailing bytes", &ec.PublicKey, msg, append(bytes.Clone(low), 0), false},
		{"ed25519", edPub, msg, edSig, true},
		{"ed25519, short signature", edPub, msg, edSig[:63], false},
		{"not a signing key", []byte("x"), msg, ecSig, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := keys.VerifySignature(tt.pub, tt.msg, tt.sig); got != tt.want {
				t.Fatalf("VerifySignature = %v, want %v", got, tt.want)
			}
		})
	}
}

// ecdsaTwins signs digest and returns the signature in its two valid forms,
// with s in the low and in the high half of [1, n-1].
func ecdsaTwins(t *testing.T, k *ecdsa.PrivateKey, digest []byte) (low, high []byte) {
	t.Helper()
	der, err := ecdsa.SignASN1(rand.Reader, k, digest)
	if err != nil {
		t.Fatal(err)
	}
	var sig struct{ R, S *big.Int }
	if _, err := asn1.Unmarshal(der, &sig); err != nil {
		t.Fatal(err)
	}
	n := elliptic.P256().Params().N
	other := new(big.Int).Sub(n, sig.S)
	a, _ := asn1.Marshal(struct{ R, S *big.Int }{sig.R, sig.S})
	b, _ := asn1.Marshal(struct{ R, S *big.Int }{sig.R, other})
	if sig.S.Cmp(other) > 0 {
		a, b = b, a
	}
	if !ecdsa.VerifyASN1(&k.PublicKey, digest, b) {
		t.Fatal("the high-S twin does not verify with Go's ecdsa: the test is wrong")
	}
	return a, b
}

// TestECDSASignature: whichever half a device returns s in, keyward's
// encoding has it low, and verifies.
func TestECDSASignature(t *testing.T) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	d := sha256.Sum256([]byte("m"))
	low, high := ecdsaTwins(t, k, d[:])
	for name, der := range map[string][]byte{"low": low, "high": high} {
		var sig struct{ R, S *big.Int }
		if _, err := asn1.Unmarshal(der, &sig); err != nil {
			t.Fatal(err)
		}
		got, err := keys.ECDSASignature(sig.R, sig.S)
		if err != nil || !bytes.Equal(got, low) {
			t.Errorf("ECDSASignature of the %s form = %x, %v; want the low form %x", name, got, err, low)
		}
		if !keys.VerifySignature(&k.PublicKey, []byte("m"), got) {
			t.Errorf("the encoding of the %s form does not verify", name)
		}
	}
	n := elliptic.P256().Params().N
	for _, rs := range [][2]*big.Int{{big.NewInt(0), big.NewInt(1)}, {big.NewInt(1), big.NewInt(0)}, {n, big.NewInt(1)}, {big.NewInt(1), n}} {
		if _, err := keys.ECDSASignature(rs[0], rs[1]); err == nil {
			t.Errorf("ECDSASignature(%v, %v) accepted a value out of range", rs[0], rs[1])
		}
	}
}

func TestCheckChangeable(t *testing.T) {
	k := &keys.KeyInfo{Name: "k", Versions: []keys.VersionInfo{{Version: 1, State: keys.Disabled}, {Version: 2, State: keys.Destroyed}}}
	for _, tt := range []struct {
		v       uint32
		wantErr error
	}{{0, keys.ErrKeyNotFound}, {1, nil}, {2, keys.ErrVersionDestroyed}, {3, keys.ErrKeyNotFound}} {
		if err := k.CheckChangeable(tt.v); !errors.Is(err, tt.wantErr) {
			t.Errorf("CheckChangeable(%d) = %v, want %v", tt.v, err, tt.wantErr)
		}
	}
}
