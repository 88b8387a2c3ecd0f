package keys

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
)

// VerifySignature checks sig over message with pub as every backend signs:
// ECDSA (ASN.1 DER) and RSA-PSS (SHA-256, MGF1-SHA-256, any salt length)
// over SHA-256(message), Ed25519 over the message itself. Verification
// needs only the public key, so backends do it in software.
func VerifySignature(pub crypto.PublicKey, message, sig []byte) bool {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		d := sha256.Sum256(message)
		return ecdsa.VerifyASN1(k, d[:], sig)
	case *rsa.PublicKey:
		d := sha256.Sum256(message)
		return rsa.VerifyPSS(k, crypto.SHA256, d[:], sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto, Hash: crypto.SHA256}) == nil
	case ed25519.PublicKey:
		return len(sig) == ed25519.SignatureSize && ed25519.Verify(k, message, sig)
	}
	return false
}
