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

// keyFor loads name's record and checks that it is of a type op accepts.
func (s *sess) keyFor(name string, op string, types ...keys.Type) (*metaRecord, error) {
	rec, err := s.loadMeta(name, false)
	if err != nil {
		return nil, err
	}
	for _, ty := range types {
		if rec.Type == ty {
			return rec, nil
		}
	}
	return nil, fmt.Errorf("%s with %s key %s: %w", op, rec.Type, name, keys.ErrWrongKeyType)
}

// objectFor returns the handle of version v's private object. A version the
// record lists but the token lacks is an integrity failure, never a reason
// to use another object.
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

// current returns name's newest enabled version and the handle of its
// object of class: what encrypt, sign and mac use.
func (s *sess) current(name, op string, class uint, types ...keys.Type) (*metaRecord, uint32, pkcs11.ObjectHandle, error) {
	rec, err := s.keyFor(name, op, types...)
	if err != nil {
		return nil, 0, 0, err
	}
	ki := rec.info()
	v, err := ki.Latest()
	if err != nil {
		return nil, 0, 0, err
	}
	h, err := s.objectFor(rec, v, class)
	return rec, v, h, err
}

// usable returns the handle of version v's object of class after checking
// that v may decrypt or verify (enabled, at or above the minimum).
func (s *sess) usable(name, op string, v uint32, class uint, types ...keys.Type) (pkcs11.ObjectHandle, error) {
	rec, err := s.keyFor(name, op, types...)
	if err != nil {
		return 0, err
	}
	ki := rec.info()
	if err := ki.CheckDecrypt(v); err != nil {
		return 0, err
	}
	return s.objectFor(rec, v, class)
}

// Wrap encrypts plaintext with the newest enabled version of an AES key in
// the token (CKM_AES_GCM, a fresh 96-bit IV from crypto/rand, 128-bit tag)
// and returns an envelope v1 blob binding name, version and context.
func (t *Token) Wrap(ctx context.Context, name string, plaintext []byte, c keys.Context) ([]byte, error) {
	if err := keys.ValidateName(name); err != nil {
		return nil, err
	}
	if err := keys.CheckMessage("wrap", plaintext); err != nil {
		return nil, err
	}
	if err := keys.CheckContext(c); err != nil {
		return nil, err
	}
	var blob []byte
	err := t.withSession(ctx, func(s *sess) error {
		_, v, h, err := s.current(name, "wrap", pkcs11.CKO_SECRET_KEY, keys.AES256GCM)
		if err != nil {
			return err
		}
		hdr := envelope.Header{Alg: envelope.AlgPKCS11GCM, Name: name, Version: v, Nonce: make([]byte, gcmIVSize)}
		if _, err := rand.Read(hdr.Nonce); err != nil {
			return err
		}
		aad, err := hdr.AAD(c)
		if err != nil {
			return err
		}
		params := pkcs11.NewGCMParams(hdr.Nonce, aad, gcmTagBits)
		defer params.Free()
		if err := s.p.EncryptInit(s.sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, h); err != nil {
			return err
		}
		ct, err := s.p.Encrypt(s.sh, plaintext)
		if err != nil {
			return err
		}
		// A token that substitutes its own IV would make the blob undecryptable.
		if iv := params.IV(); iv != nil && !bytes.Equal(iv, hdr.Nonce) {
			return fmt.Errorf("token replaced the GCM IV; refusing to use it")
		}
		if len(ct) != len(plaintext)+gcmTagBits/8 {
			return fmt.Errorf("token returned %d bytes of ciphertext for %d of plaintext", len(ct), len(plaintext))
		}
		blob, err = envelope.Encode(hdr, ct)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("wrap %s: %w", name, err)
	}
	return blob, nil
}

// Unwrap opens a blob made by Wrap, under the same context.
func (t *Token) Unwrap(ctx context.Context, blob []byte, c keys.Context) (keys.Unwrapped, error) {
	if err := keys.CheckContext(c); err != nil {
		return keys.Unwrapped{}, err
	}
	hdr, ct, err := envelope.Decode(blob)
	if err != nil {
		return keys.Unwrapped{}, fmt.Errorf("unwrap: %w", err)
	}
	if hdr.Alg != envelope.AlgPKCS11GCM {
		return keys.Unwrapped{}, fmt.Errorf("unwrap: blob algorithm %d belongs to another backend: %w", hdr.Alg, keys.ErrUnsupported)
	}
	aad, err := hdr.AAD(c)
	if err != nil {
		return keys.Unwrapped{}, fmt.Errorf("unwrap: %w", err)
	}
	var pt []byte
	err = t.withSession(ctx, func(s *sess) error {
		h, err := s.usable(hdr.Name, "unwrap", hdr.Version, pkcs11.CKO_SECRET_KEY, keys.AES256GCM)
		if err != nil {
			return err
		}
		params := pkcs11.NewGCMParams(hdr.Nonce, aad, gcmTagBits)
		defer params.Free()
		if err := s.p.DecryptInit(s.sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, h); err != nil {
			return err
		}
		out, err := s.p.Decrypt(s.sh, ct)
		if err != nil {
			if authFailure(err) {
				return keys.ErrDecrypt
			}
			return err
		}
		pt = out
		return nil
	})
	if err != nil {
		return keys.Unwrapped{}, fmt.Errorf("unwrap %s v%d: %w", hdr.Name, hdr.Version, err)
	}
	return keys.Unwrapped{Plaintext: pt, Name: hdr.Name, Version: hdr.Version}, nil
}

// authFailure: how tokens report a GCM tag mismatch. SoftHSM2 says
// CKR_GENERAL_ERROR; the standard says CKR_ENCRYPTED_DATA_INVALID.
func authFailure(err error) bool {
	var e pkcs11.Error
	if !errors.As(err, &e) {
		return false
	}
	switch e {
	case pkcs11.CKR_GENERAL_ERROR, pkcs11.CKR_ENCRYPTED_DATA_INVALID, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE, pkcs11.CKR_FUNCTION_FAILED:
		return true
	}
	return false
}

// Sign signs message with the newest enabled version of a signing key:
// ECDSA P-256 over SHA-256 (ASN.1 DER), RSA-PSS SHA-256 salt 32, or Ed25519.
func (t *Token) Sign(ctx context.Context, name string, message []byte) (keys.Signature, error) {
	if err := keys.ValidateName(name); err != nil {
		return keys.Signature{}, err
	}
	if err := keys.CheckMessage("sign", message); err != nil {
		return keys.Signature{}, err
	}
	var out keys.Signature
	err := t.withSession(ctx, func(s *sess) error {
		rec, v, h, err := s.current(name, "sign", pkcs11.CKO_PRIVATE_KEY, keys.ECDSAP256, keys.RSA3072PSS, keys.Ed25519)
		if err != nil {
			return err
		}
		var mech *pkcs11.Mechanism
		input := message
		switch rec.Type {
		case keys.ECDSAP256:
			d := sha256.Sum256(message)
			input, mech = d[:], pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)
		case keys.RSA3072PSS:
			mech = pkcs11.NewMechanism(pkcs11.CKM_SHA256_RSA_PKCS_PSS, pkcs11.NewPSSParams(pkcs11.CKM_SHA256, pkcs11.CKG_MGF1_SHA256, keys.PSSSaltLength))
		case keys.Ed25519:
			mech = pkcs11.NewMechanism(ckmEdDSA, nil)
		}
		if err := s.p.SignInit(s.sh, []*pkcs11.Mechanism{mech}, h); err != nil {
			return err
		}
		sig, err := s.p.Sign(s.sh, input)
		if err != nil {
			return err
		}
		if rec.Type == keys.ECDSAP256 {
			if sig, err = ecdsaDER(sig); err != nil {
				return err
			}
		}
		out = keys.Signature{Name: name, Version: v, Bytes: sig}
		return nil
	})
	if err != nil {
		return keys.Signature{}, fmt.Errorf("sign %s: %w", name, err)
	}
	return out, nil
}

// ecdsaDER turns PKCS#11's r||s into the ASN.1 DER form Go and OpenSSL
// verify, with a low s (tokens return either half).
func ecdsaDER(rs []byte) ([]byte, error) {
	if len(rs) != 64 {
		return nil, fmt.Errorf("token returned a %d-byte ECDSA signature, want 64", len(rs))
	}
	return keys.ECDSASignature(new(big.Int).SetBytes(rs[:32]), new(big.Int).SetBytes(rs[32:]))
}

// Verify checks a signature made by version v, in software with the
// version's public key (which the token holds and never changes).
func (t *Token) Verify(ctx context.Context, name string, v uint32, message, sig []byte) error {
	if err := keys.CheckMessage("verify", message); err != nil {
		return err
	}
	pub, _, err := t.publicKey(ctx, "verify", name, v, true)
	if err != nil {
		return err
	}
	if !keys.VerifySignature(pub, message, sig) {
		return fmt.Errorf("verify %s v%d: %w", name, v, keys.ErrInvalidSignature)
	}
	return nil
}

// PublicKey returns version v's public key (0: the newest enabled version).
func (t *Token) PublicKey(ctx context.Context, name string, v uint32) (crypto.PublicKey, uint32, error) {
	return t.publicKey(ctx, "public key", name, v, false)
}

func (t *Token) publicKey(ctx context.Context, op, name string, v uint32, forVerify bool) (crypto.PublicKey, uint32, error) {
	if err := keys.ValidateName(name); err != nil {
		return nil, 0, err
	}
	var pub crypto.PublicKey
	err := t.withSession(ctx, func(s *sess) error {
		rec, err := s.keyFor(name, op, keys.ECDSAP256, keys.RSA3072PSS, keys.Ed25519)
		if err != nil {
			return err
		}
		ki := rec.info()
		pv, err := ki.PublicVersion(v, forVerify)
		if err != nil {
			return err
		}
		v = pv
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
		t.pubs.Store(id, pub)
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("%s %s: %w", op, name, err)
	}
	return pub, v, nil
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

// MAC computes HMAC-SHA256 in the token with the newest enabled version.
func (t *Token) MAC(ctx context.Context, name string, message []byte) (keys.Signature, error) {
	if err := keys.ValidateName(name); err != nil {
		return keys.Signature{}, err
	}
	if err := keys.CheckMessage("mac", message); err != nil {
		return keys.Signature{}, err
	}
	var out keys.Signature
	err := t.withSession(ctx, func(s *sess) error {
		_, v, h, err := s.current(name, "mac", pkcs11.CKO_SECRET_KEY, keys.HMACSHA256)
		if err != nil {
			return err
		}
		if err := s.p.SignInit(s.sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_SHA256_HMAC, nil)}, h); err != nil {
			return err
		}
		mac, err := s.p.Sign(s.sh, message)
		if err != nil {
			return err
		}
		out = keys.Signature{Name: name, Version: v, Bytes: mac}
		return nil
	})
	if err != nil {
		return keys.Signature{}, fmt.Errorf("mac %s: %w", name, err)
	}
	return out, nil
}

// VerifyMAC checks a MAC made by version v, in the token (C_Verify compares
// in constant time there).
func (t *Token) VerifyMAC(ctx context.Context, name string, v uint32, message, mac []byte) error {
	if err := keys.ValidateName(name); err != nil {
		return err
	}
	if err := keys.CheckMessage("verify-mac", message); err != nil {
		return err
	}
	err := t.withSession(ctx, func(s *sess) error {
		h, err := s.usable(name, "verify-mac", v, pkcs11.CKO_SECRET_KEY, keys.HMACSHA256)
		if err != nil {
			return err
		}
		if len(mac) != sha256.Size {
			return keys.ErrInvalidSignature
		}
		if err := s.p.VerifyInit(s.sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_SHA256_HMAC, nil)}, h); err != nil {
			return err
		}
		err = s.p.Verify(s.sh, message, mac)
		var e pkcs11.Error
		if errors.As(err, &e) && (e == pkcs11.CKR_SIGNATURE_INVALID || e == pkcs11.CKR_SIGNATURE_LEN_RANGE) {
			return keys.ErrInvalidSignature
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("verify-mac %s v%d: %w", name, v, err)
	}
	return nil
}
