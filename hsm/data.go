package hsm

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"

	"github.com/miekg/pkcs11"

	"github.com/keyward/keyward/envelope"
	"github.com/keyward/keyward/keys"
)

const (
	gcmIVSize  = 12
	gcmTagBits = 128
)

// tokenDevice is the Token as the keys.Frontend's Device: the PKCS#11 half
// of the data operations. Each method resolves its keys.Use inside one
// session, against the record it reads there.
type tokenDevice Token

var _ keys.Device = (*tokenDevice)(nil)

func (d *tokenDevice) token() *Token { return (*Token)(d) }

// KeyName, KeyType, MinDecrypt, NumVersions and StateOf make a record a
// keys.Record.
func (r *metaRecord) KeyName() string             { return r.Name }
func (r *metaRecord) KeyType() keys.Type          { return r.Type }
func (r *metaRecord) MinDecrypt() uint32          { return r.Min }
func (r *metaRecord) NumVersions() int            { return len(r.Vers) }
func (r *metaRecord) StateOf(v uint32) keys.State { return r.Vers[v-1].State }

// resolve reads u's key record and returns it, the version u resolves to
// and the handle of that version's object of class. A version the record
// lists but the token lacks is an integrity failure, never a reason to use
// another object.
func (s *sess) resolve(u keys.Use, class uint) (*metaRecord, uint32, pkcs11.ObjectHandle, error) {
	rec, err := s.loadMeta(u.Name, false)
	if err != nil {
		return nil, 0, 0, err
	}
	v, err := u.Resolve(rec)
	if err != nil {
		return nil, 0, 0, err
	}
	h, err := s.objectFor(rec, v, class)
	return rec, v, h, err
}

// objectFor returns the handle of version v's object of class.
func (s *sess) objectFor(rec *metaRecord, v uint32, class uint) (pkcs11.ObjectHandle, error) {
	ref, err := rec.ref(v)
	if err != nil {
		return 0, err
	}
	ref.Class = class
	h, err := s.handle(ref)
	switch {
	case errors.Is(err, errObjectMissing):
		// Published versions are only deleted after being marked destroyed,
		// so this is a token in trouble (being restored, or edited outside
		// keyward): re-initialise and retry, then report it unavailable.
		// Never fall back to another object.
		return 0, &missingError{fmt.Sprintf("key %s v%d: object missing from the token", rec.Name, v)}
	case errors.Is(err, errObjectAmbiguous):
		return 0, fmt.Errorf("key %s v%d: %w: %w", rec.Name, v, err, keys.ErrIntegrity)
	}
	return h, err
}

// Seal encrypts in the token (CKM_AES_GCM, a fresh 96-bit IV from
// crypto/rand, 128-bit tag) and returns an envelope v1 blob.
func (d *tokenDevice) Seal(ctx context.Context, u keys.Use, plaintext []byte, c keys.Context) ([]byte, error) {
	var blob []byte
	err := d.token().withSession(ctx, func(s *sess) error {
		_, v, h, err := s.resolve(u, pkcs11.CKO_SECRET_KEY)
		if err != nil {
			return err
		}
		hdr := envelope.Header{Alg: envelope.AlgPKCS11GCM, Name: u.Name, Version: v, Nonce: make([]byte, gcmIVSize)}
		if _, err := rand.Read(hdr.Nonce); err != nil {
			return err
		}
		aad, err := hdr.AAD(c)
		if err != nil {
			return err
		}
		ct, err := s.encryptGCM(h, hdr.Nonce, aad, plaintext)
		if err != nil {
			return err
		}
		blob, err = envelope.Encode(hdr, ct)
		return err
	})
	return blob, err
}

// encryptGCM runs one C_Encrypt with CKM_AES_GCM and checks what the token
// returns.
func (s *sess) encryptGCM(h pkcs11.ObjectHandle, iv, aad, plaintext []byte) ([]byte, error) {
	m := gcm(iv, aad)
	ct, err := s.encrypt(m, h, plaintext, len(plaintext)+gcmTagBits/8)
	if err != nil {
		return nil, err
	}
	// A token that substitutes its own IV would make the blob undecryptable.
	if m.gcm.moved {
		return nil, fmt.Errorf("token replaced the GCM IV; refusing to use it")
	}
	if len(ct) != len(plaintext)+gcmTagBits/8 {
		return nil, fmt.Errorf("token returned %d bytes of ciphertext for %d of plaintext", len(ct), len(plaintext))
	}
	return ct, nil
}

// Open decrypts an envelope v1 blob in the token.
func (d *tokenDevice) Open(ctx context.Context, blob []byte, c keys.Context) (keys.Unwrapped, error) {
	hdr, ct, aad, err := envelope.Open(blob, envelope.AlgPKCS11GCM, c)
	if err != nil {
		return keys.Unwrapped{}, err
	}
	out := keys.Unwrapped{Name: hdr.Name, Version: hdr.Version}
	err = d.token().withSession(ctx, func(s *sess) error {
		_, _, h, err := s.resolve(keys.Use{Op: keys.OpUnwrap, Name: hdr.Name, Version: hdr.Version}, pkcs11.CKO_SECRET_KEY)
		if err != nil {
			return err
		}
		// The plaintext is shorter than ct by the tag; SoftHSM2 asks for
		// room for all of ct.
		pt, err := s.decrypt(gcm(hdr.Nonce, aad), h, ct, len(ct))
		if err != nil {
			if authFailure(err) {
				return keys.ErrDecrypt
			}
			return err
		}
		out.Plaintext = pt
		return nil
	})
	return out, err
}

// authFailure: how tokens report a GCM tag mismatch. SoftHSM2 says
// CKR_GENERAL_ERROR; the standard says CKR_ENCRYPTED_DATA_INVALID.
func authFailure(err error) bool {
	var e pkcs11.Error
	if errors.As(err, new(initError)) || !errors.As(err, &e) {
		return false
	}
	switch e {
	case pkcs11.CKR_GENERAL_ERROR, pkcs11.CKR_ENCRYPTED_DATA_INVALID, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE, pkcs11.CKR_FUNCTION_FAILED:
		return true
	}
	return false
}

// Sign signs in the token: ECDSA P-256 over SHA-256 (ASN.1 DER, low s),
// RSA-PSS SHA-256 salt 32, or Ed25519.
func (d *tokenDevice) Sign(ctx context.Context, u keys.Use, message []byte) (keys.Signature, error) {
	var out keys.Signature
	err := d.token().withSession(ctx, func(s *sess) error {
		rec, v, h, err := s.resolve(u, pkcs11.CKO_PRIVATE_KEY)
		if err != nil {
			return err
		}
		mech, input := signMechanism(rec.Type, message)
		sig, err := s.sign(mech, h, input, signatureSize(rec.Type))
		if err != nil {
			return err
		}
		if rec.Type == keys.ECDSAP256 {
			if sig, err = ecdsaDER(sig); err != nil {
				return err
			}
		}
		out = keys.Signature{Name: u.Name, Version: v, Bytes: sig}
		return nil
	})
	return out, err
}

// signMechanism returns the mechanism for a key type and what it signs:
// CKM_ECDSA signs a digest, the others hash (or not) themselves.
func signMechanism(t keys.Type, message []byte) (mechanism, []byte) {
	switch t {
	case keys.ECDSAP256:
		d := sha256.Sum256(message)
		return mechanism{typ: pkcs11.CKM_ECDSA}, d[:]
	case keys.RSA3072PSS:
		return mechanism{typ: pkcs11.CKM_SHA256_RSA_PKCS_PSS, pssSalt: keys.PSSSaltLength}, message
	}
	return mechanism{typ: ckmEdDSA}, message
}

// gcm is CKM_AES_GCM with iv, aad and keyward's tag length.
func gcm(iv, aad []byte) mechanism {
	return mechanism{typ: pkcs11.CKM_AES_GCM, gcm: &gcmParams{iv: iv, aad: aad, tagBits: gcmTagBits}}
}

// hmacSHA256 is CKM_SHA256_HMAC.
var hmacSHA256 = mechanism{typ: pkcs11.CKM_SHA256_HMAC}

// signatureSize is the length of a signature the token makes for a key of
// type t: ECDSA P-256's r||s and Ed25519's are 64 bytes, RSA-3072's 384.
func signatureSize(t keys.Type) int {
	if t == keys.RSA3072PSS {
		return 3072 / 8
	}
	return 64
}

// ecdsaDER turns PKCS#11's r||s into the ASN.1 DER form Go and OpenSSL
// verify, with a low s (tokens return either half).
func ecdsaDER(rs []byte) ([]byte, error) {
	if len(rs) != 64 {
		return nil, fmt.Errorf("token returned a %d-byte ECDSA signature, want 64", len(rs))
	}
	return keys.ECDSASignature(new(big.Int).SetBytes(rs[:32]), new(big.Int).SetBytes(rs[32:]))
}

// Public returns a version's public key, read from the token once per
// object and then kept: an object's public key never changes.
func (d *tokenDevice) Public(ctx context.Context, u keys.Use) (crypto.PublicKey, uint32, error) {
	t := d.token()
	var pub crypto.PublicKey
	var v uint32
	err := t.withSession(ctx, func(s *sess) error {
		rec, err := s.loadMeta(u.Name, false)
		if err != nil {
			return err
		}
		if v, err = u.Resolve(rec); err != nil {
			return err
		}
		// By label and id: adopted objects need not have distinct ids
		// (two made with pkcs11-tool --id 01), and a public key cached by
		// id alone would answer for the other key.
		ref, err := rec.pubRef(v)
		if err != nil {
			return err
		}
		id := ref.key()
		if p, ok := t.pubs.Load(id); ok {
			pub = p
			return nil
		}
		h, err := s.objectFor(rec, v, pkcs11.CKO_PUBLIC_KEY)
		if err != nil {
			return err
		}
		if pub, err = s.readPublic(rec.Type, h); err != nil {
			return err
		}
		if err := s.matchesPrivate(rec, v, pub); err != nil {
			return err
		}
		t.pubs.Store(id, pub)
		return nil
	})
	return pub, v, err
}

// matchesPrivate checks that pub is the public half of version v's
// private key: the private key signs a random challenge, which pub must
// verify. A public key object is public: anyone who can open a session
// on the token may destroy it and create another with the same label and
// id, without the PIN, and keyward would then hand out and verify with a
// key whose private half someone else holds. Done once per object, before
// its public key is kept.
func (s *sess) matchesPrivate(rec *metaRecord, v uint32, pub crypto.PublicKey) error {
	h, err := s.objectFor(rec, v, pkcs11.CKO_PRIVATE_KEY)
	if err != nil {
		return err
	}
	challenge := make([]byte, 32)
	if _, err := rand.Read(challenge); err != nil {
		return err
	}
	mech, input := signMechanism(rec.Type, challenge)
	sig, err := s.sign(mech, h, input, signatureSize(rec.Type))
	if err == nil && rec.Type == keys.ECDSAP256 {
		sig, err = ecdsaDER(sig)
	}
	if err != nil {
		return err
	}
	if !keys.VerifySignature(pub, challenge, sig) {
		return fmt.Errorf("key %s v%d: the public key object does not match the private key (replaced on the token?): %w", rec.Name, v, keys.ErrIntegrity)
	}
	return nil
}

// readPublic parses a public key object into a Go public key.
func (s *sess) readPublic(ty keys.Type, h pkcs11.ObjectHandle) (crypto.PublicKey, error) {
	switch ty {
	case keys.RSA3072PSS:
		a, err := s.attrs(h, pkcs11.CKA_MODULUS, pkcs11.CKA_PUBLIC_EXPONENT)
		if err != nil {
			return nil, err
		}
		e := new(big.Int).SetBytes(a[pkcs11.CKA_PUBLIC_EXPONENT])
		if !e.IsInt64() || e.Int64() < 3 || e.Int64() > 1<<31 {
			return nil, fmt.Errorf("rsa public exponent out of range: %w", keys.ErrIntegrity)
		}
		return &rsa.PublicKey{N: new(big.Int).SetBytes(a[pkcs11.CKA_MODULUS]), E: int(e.Int64())}, nil
	case keys.ECDSAP256, keys.Ed25519:
		a, err := s.attrs(h, pkcs11.CKA_EC_POINT)
		if err != nil {
			return nil, err
		}
		point := a[pkcs11.CKA_EC_POINT]
		var inner []byte
		if rest, err := asn1.Unmarshal(point, &inner); err == nil && len(rest) == 0 {
			point = inner // DER OCTET STRING, as the standard asks
		}
		if ty == keys.Ed25519 {
			if len(point) != ed25519.PublicKeySize {
				return nil, fmt.Errorf("ed25519 public key of %d bytes: %w", len(point), keys.ErrIntegrity)
			}
			return ed25519.PublicKey(bytes.Clone(point)), nil
		}
		pk, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), point)
		if err != nil {
			return nil, fmt.Errorf("ec point: %v: %w", err, keys.ErrIntegrity)
		}
		return pk, nil
	}
	return nil, fmt.Errorf("no public key for %s: %w", ty, keys.ErrWrongKeyType)
}

// MAC computes HMAC-SHA256 in the token.
func (d *tokenDevice) MAC(ctx context.Context, u keys.Use, message []byte) (keys.Signature, error) {
	var out keys.Signature
	err := d.token().withSession(ctx, func(s *sess) error {
		_, v, h, err := s.resolve(u, pkcs11.CKO_SECRET_KEY)
		if err != nil {
			return err
		}
		mac, err := s.sign(hmacSHA256, h, message, sha256.Size)
		if err != nil {
			return err
		}
		out = keys.Signature{Name: u.Name, Version: v, Bytes: mac}
		return nil
	})
	return out, err
}

// CheckMAC checks a MAC in the token (C_Verify compares in constant time
// there).
func (d *tokenDevice) CheckMAC(ctx context.Context, u keys.Use, message, mac []byte) error {
	return d.token().withSession(ctx, func(s *sess) error {
		_, _, h, err := s.resolve(u, pkcs11.CKO_SECRET_KEY)
		if err != nil {
			return err
		}
		if len(mac) != sha256.Size {
			return keys.ErrInvalidSignature
		}
		err = s.verify(hmacSHA256, h, message, mac)
		var e pkcs11.Error
		if !errors.As(err, new(initError)) && errors.As(err, &e) && (e == pkcs11.CKR_SIGNATURE_INVALID || e == pkcs11.CKR_SIGNATURE_LEN_RANGE) {
			return keys.ErrInvalidSignature
		}
		return err
	})
}

// Random reads n bytes from the token's generator.
func (d *tokenDevice) Random(ctx context.Context, n int) ([]byte, error) {
	var out []byte
	err := d.token().withSession(ctx, func(s *sess) error {
		b, err := s.p.GenerateRandom(s.sh, n)
		if err != nil {
			return err
		}
		if len(b) != n {
			return fmt.Errorf("C_GenerateRandom returned %d bytes, want %d", len(b), n)
		}
		out = b
		return nil
	})
	return out, err
}
