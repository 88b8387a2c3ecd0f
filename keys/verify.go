package keys

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
)

// PSSSaltLength is the RSA-PSS salt length of every keyward signature: the
// SHA-256 digest length (what PKCS#11 is asked for, and what TPMs that
// follow the current TPM 2.0 library specification use).
const PSSSaltLength = sha256.Size

// p256HalfN is n/2 for P-256: a signature's s above it is the "high-S" twin
// (r, n-s) of a valid signature, which verifies under the same key.
var p256HalfN = new(big.Int).Rsh(elliptic.P256().Params().N, 1)

type ecdsaSig struct{ R, S *big.Int }

// ECDSASignature encodes a P-256 signature (r, s) as keyward returns every
// ECDSA signature: ASN.1 DER with s in the low half (s replaced by n-s when a
// device returns it high), so each message and nonce has one encoding.
func ECDSASignature(r, s *big.Int) ([]byte, error) {
	n := elliptic.P256().Params().N
	if r.Sign() <= 0 || s.Sign() <= 0 || r.Cmp(n) >= 0 || s.Cmp(n) >= 0 {
		return nil, errors.New("device returned an ECDSA signature out of range")
	}
	if s.Cmp(p256HalfN) > 0 {
		s = new(big.Int).Sub(n, s)
	}
	return asn1.Marshal(ecdsaSig{r, s})
}

// VerifySignature checks sig over message with pub exactly as every backend
// signs, and nothing looser: ECDSA over SHA-256(message) in DER with a low s
// (high-S twins are refused: they are malleable copies of a signature),
// RSA-PSS over SHA-256(message) with MGF1-SHA-256 and a salt of exactly
// PSSSaltLength bytes, Ed25519 over the message itself. Verification needs
// only the public key, so backends do it in software.
func VerifySignature(pub crypto.PublicKey, message, sig []byte) bool {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if !lowS(sig) {
			return false
		}
		d := sha256.Sum256(message)
		return ecdsa.VerifyASN1(k, d[:], sig)
	case *rsa.PublicKey:
		d := sha256.Sum256(message)
		return rsa.VerifyPSS(k, crypto.SHA256, d[:], sig, &rsa.PSSOptions{SaltLength: PSSSaltLength, Hash: crypto.SHA256}) == nil
	case ed25519.PublicKey:
		return len(sig) == ed25519.SignatureSize && ed25519.Verify(k, message, sig)
	}
	return false
}

// lowS reports whether sig is one DER ECDSA signature whose s is at most n/2.
func lowS(sig []byte) bool {
	var v ecdsaSig
	rest, err := asn1.Unmarshal(sig, &v)
	return err == nil && len(rest) == 0 && v.S != nil && v.S.Sign() > 0 && v.S.Cmp(p256HalfN) <= 0
}

// CheckSigned checks a signature a device just made with the same rules as
// VerifySignature, so that keyward never returns a signature it would refuse
// (a device that signs PSS with another salt length, or a faulty one).
func CheckSigned(pub crypto.PublicKey, message, sig []byte) error {
	if !VerifySignature(pub, message, sig) {
		return fmt.Errorf("the device's signature does not verify as keyward verifies (ECDSA low-S, PSS salt %d): %w", PSSSaltLength, ErrUnsupported)
	}
	return nil
}
