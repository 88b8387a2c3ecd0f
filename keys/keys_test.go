package keys_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
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
	edPub, edPriv, _ := ed25519.GenerateKey(rand.Reader)
	edSig := ed25519.Sign(edPriv, msg)
	tests := []struct {
		name string
		pub  any
		msg  []byte
		sig  []byte
		want bool
	}{
		{"ecdsa", &ec.PublicKey, msg, ecSig, true},
		{"ecdsa, other message", &ec.PublicKey, []byte("other"), ecSig, false},
		{"rsa-pss", &rk.PublicKey, msg, rsaSig, true},
		{"rsa-pss, truncated", &rk.PublicKey, msg, rsaSig[:10], false},
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
