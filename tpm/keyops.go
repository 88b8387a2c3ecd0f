package tpm

import (
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"math/big"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/keyward/keyward/envelope"
	"github.com/keyward/keyward/keys"
)

func (b *Backend) writable() error {
	if b.readOnly {
		return fmt.Errorf("TPM backend opened read-only: %w", keys.ErrUnsupported)
	}
	return nil
}

// CreateKey generates version 1 of a new key inside the TPM and stores its
// blob and record.
func (b *Backend) CreateKey(ctx context.Context, name string, ty keys.Type) (keys.KeyInfo, error) {
	if err := keys.ValidateName(name); err != nil {
		return keys.KeyInfo{}, err
	}
	if !ty.Valid() {
		return keys.KeyInfo{}, fmt.Errorf("create %s: key type %q: %w", name, ty, keys.ErrInvalidArgument)
	}
	if err := b.writable(); err != nil {
		return keys.KeyInfo{}, err
	}
	tmpl, err := templateFor(ty)
	if err != nil || !b.types[ty] {
		return keys.KeyInfo{}, fmt.Errorf("create %s: this TPM does not offer %s keys: %w", name, ty, keys.ErrUnsupported)
	}
	var out keys.KeyInfo
	err = b.do(ctx, true, func(d *device) error {
		if _, ok := b.recs[name]; ok {
			return keys.ErrKeyExists
		}
		bp, err := d.create(tmpl)
		if err != nil {
			return err
		}
		now := time.Now().UTC().Truncate(time.Second)
		r := &record{Format: recordFormat, Name: name, Type: ty, Created: now,
			Vers: []recordVer{{Version: 1, State: keys.Enabled, Created: now, Blob: bp}}}
		if err := b.storeRecord(d, r); err != nil {
			return err
		}
		out = r.info()
		return nil
	})
	if err != nil {
		return keys.KeyInfo{}, fmt.Errorf("create %s: %w", name, err)
	}
	b.log.Info("key created", "key", name, "type", string(ty))
	return out, nil
}

// update applies change to a copy of name's record and stores it.
func (b *Backend) update(ctx context.Context, op, name string, change func(d *device, r *record) error) (keys.KeyInfo, error) {
	if err := keys.ValidateName(name); err != nil {
		return keys.KeyInfo{}, err
	}
	if err := b.writable(); err != nil {
		return keys.KeyInfo{}, err
	}
	var out keys.KeyInfo
	err := b.do(ctx, true, func(d *device) error {
		cur, err := b.rec(name)
		if err != nil {
			return err
		}
		r := cur.clone()
		if err := change(d, r); err != nil {
			return err
		}
		if err := b.storeRecord(d, r); err != nil {
			return err
		}
		out = r.info()
		return nil
	})
	if err != nil {
		return keys.KeyInfo{}, fmt.Errorf("%s %s: %w", op, name, err)
	}
	b.log.Info("key changed", "op", op, "key", name)
	return out, nil
}

// RotateKey adds a version generated in the TPM.
func (b *Backend) RotateKey(ctx context.Context, name string) (keys.KeyInfo, error) {
	return b.update(ctx, "rotate", name, func(d *device, r *record) error {
		if len(r.Vers) >= keys.MaxVersion {
			return fmt.Errorf("version limit reached: %w", keys.ErrInvalidArgument)
		}
		tmpl, err := templateFor(r.Type)
		if err != nil || !b.types[r.Type] {
			return fmt.Errorf("this TPM does not offer %s keys: %w", r.Type, keys.ErrUnsupported)
		}
		bp, err := d.create(tmpl)
		if err != nil {
			return err
		}
		r.Vers = append(r.Vers, recordVer{Version: uint32(len(r.Vers) + 1), State: keys.Enabled,
			Created: time.Now().UTC().Truncate(time.Second), Blob: bp})
		return nil
	})
}

// SetVersionState enables or disables a version.
func (b *Backend) SetVersionState(ctx context.Context, name string, v uint32, st keys.State) (keys.KeyInfo, error) {
	if st != keys.Enabled && st != keys.Disabled {
		return keys.KeyInfo{}, fmt.Errorf("state %q: use enabled or disabled (DestroyVersion destroys): %w", st, keys.ErrInvalidArgument)
	}
	return b.update(ctx, "set-state", name, func(d *device, r *record) error {
		ki := r.info()
		if err := ki.CheckChangeable(v); err != nil {
			return err
		}
		r.Vers[v-1].State = st
		return nil
	})
}

// DestroyVersion deletes a version's blob from the record (and flushes the
// object if it is loaded). A TPM cannot revoke a blob: a copy of an old
// record file (a backup) still loads on this TPM; the README says so.
func (b *Backend) DestroyVersion(ctx context.Context, name string, v uint32) (keys.KeyInfo, error) {
	return b.update(ctx, "destroy", name, func(d *device, r *record) error {
		ki := r.info()
		if err := ki.CheckChangeable(v); err != nil {
			return err
		}
		if bp := r.Vers[v-1].Blob; bp != nil {
			d.forget(bp)
		}
		r.Vers[v-1].State, r.Vers[v-1].Blob = keys.Destroyed, nil
		return nil
	})
}

// SetMinDecryptVersion refuses decryption and verification below v.
func (b *Backend) SetMinDecryptVersion(ctx context.Context, name string, v uint32) (keys.KeyInfo, error) {
	return b.update(ctx, "set-min-version", name, func(d *device, r *record) error {
		if int(v) > len(r.Vers) {
			return fmt.Errorf("minimum decrypt version %d is beyond the newest version %d: %w", v, len(r.Vers), keys.ErrInvalidArgument)
		}
		r.Min = v
		return nil
	})
}

// current returns name's record (of one of types) and its newest enabled version's blob.
func (b *Backend) current(name, op string, types ...keys.Type) (*record, uint32, *blobPair, error) {
	r, err := b.typed(name, op, types...)
	if err != nil {
		return nil, 0, nil, err
	}
	for i := len(r.Vers) - 1; i >= 0; i-- {
		if r.Vers[i].State == keys.Enabled {
			return r, r.Vers[i].Version, r.Vers[i].Blob, nil
		}
	}
	return nil, 0, nil, fmt.Errorf("key %s: %w", name, keys.ErrNoEnabledVersion)
}

// usable returns version v's blob after checking it may decrypt or verify.
func (b *Backend) usable(name, op string, v uint32, types ...keys.Type) (*record, *blobPair, error) {
	r, err := b.typed(name, op, types...)
	if err != nil {
		return nil, nil, err
	}
	ki := r.info()
	if err := ki.CheckDecrypt(v); err != nil {
		return nil, nil, err
	}
	return r, r.Vers[v-1].Blob, nil
}

func (b *Backend) typed(name, op string, types ...keys.Type) (*record, error) {
	r, err := b.rec(name)
	if err != nil {
		return nil, err
	}
	for _, t := range types {
		if r.Type == t {
			return r, nil
		}
	}
	return nil, fmt.Errorf("%s with %s key %s: %w", op, r.Type, name, keys.ErrWrongKeyType)
}

// derive asks the TPM for a message key: HMAC(master, labelWrap || nonce).
func (b *Backend) derive(ctx context.Context, op, name string, version uint32, nonce []byte) ([]byte, uint32, error) {
	in := make([]byte, 0, len(labelWrap)+len(nonce))
	in = append(append(in, labelWrap...), nonce...)
	var k []byte
	err := b.do(ctx, true, func(d *device) error {
		var bp *blobPair
		var err error
		if version == 0 {
			_, version, bp, err = b.current(name, op, keys.AES256GCM)
		} else {
			_, bp, err = b.usable(name, op, version, keys.AES256GCM)
		}
		if err != nil {
			return err
		}
		k, err = d.hmac(bp, in)
		return err
	})
	return k, version, err
}

// gcmWithKey makes the AES-256-GCM AEAD of a derived key and zeroes the key.
// (The cipher's own key schedule is Go runtime memory keyward cannot clear.)
func gcmWithKey(k []byte) (cipher.AEAD, error) {
	defer clear(k)
	blk, err := aes.NewCipher(k)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(blk)
}

// zeroIV: each derived key seals exactly one message, so a fixed IV is safe.
var zeroIV [12]byte

// Wrap seals plaintext under the newest enabled version (envelope alg 2).
func (b *Backend) Wrap(ctx context.Context, name string, plaintext []byte, c keys.Context) ([]byte, error) {
	if err := keys.ValidateName(name); err != nil {
		return nil, err
	}
	if err := keys.CheckMessage("wrap", plaintext); err != nil {
		return nil, err
	}
	if err := keys.CheckContext(c); err != nil {
		return nil, err
	}
	hdr := envelope.Header{Alg: envelope.AlgTPMHMACGCM, Name: name, Nonce: make([]byte, envelope.AlgTPMHMACGCM.NonceSize())}
	if _, err := rand.Read(hdr.Nonce); err != nil {
		return nil, err
	}
	k, v, err := b.derive(ctx, "wrap", name, 0, hdr.Nonce)
	if err != nil {
		return nil, fmt.Errorf("wrap %s: %w", name, err)
	}
	hdr.Version = v
	aead, err := gcmWithKey(k)
	if err != nil {
		return nil, fmt.Errorf("wrap %s: %w", name, err)
	}
	aad, err := hdr.AAD(c)
	if err != nil {
		return nil, fmt.Errorf("wrap %s: %w", name, err)
	}
	blob, err := envelope.Encode(hdr, aead.Seal(nil, zeroIV[:], plaintext, aad))
	if err != nil {
		return nil, fmt.Errorf("wrap %s: %w", name, err)
	}
	return blob, nil
}

// Unwrap opens a blob made by Wrap under the same context.
func (b *Backend) Unwrap(ctx context.Context, blob []byte, c keys.Context) (keys.Unwrapped, error) {
	if err := keys.CheckContext(c); err != nil {
		return keys.Unwrapped{}, err
	}
	hdr, ct, err := envelope.Decode(blob)
	if err != nil {
		return keys.Unwrapped{}, fmt.Errorf("unwrap: %w", err)
	}
	if hdr.Alg != envelope.AlgTPMHMACGCM {
		return keys.Unwrapped{}, fmt.Errorf("unwrap: blob algorithm %d belongs to another backend: %w", hdr.Alg, keys.ErrUnsupported)
	}
	aad, err := hdr.AAD(c)
	if err != nil {
		return keys.Unwrapped{}, fmt.Errorf("unwrap: %w", err)
	}
	k, _, err := b.derive(ctx, "unwrap", hdr.Name, hdr.Version, hdr.Nonce)
	if err != nil {
		return keys.Unwrapped{}, fmt.Errorf("unwrap %s v%d: %w", hdr.Name, hdr.Version, err)
	}
	aead, err := gcmWithKey(k)
	if err != nil {
		return keys.Unwrapped{}, fmt.Errorf("unwrap %s v%d: %w", hdr.Name, hdr.Version, err)
	}
	pt, err := aead.Open(nil, zeroIV[:], ct, aad)
	if err != nil {
		return keys.Unwrapped{}, fmt.Errorf("unwrap %s v%d: %w", hdr.Name, hdr.Version, keys.ErrDecrypt)
	}
	return keys.Unwrapped{Plaintext: pt, Name: hdr.Name, Version: hdr.Version}, nil
}

// macInput: the TPM MACs a label and the message's SHA-256, so any message
// up to keys.MaxPlaintext is one TPM2_HMAC of fixed size (TPM2_HMAC takes at
// most 1024 bytes) and the MAC input is encrypted on the bus. The result is
// HMAC-SHA256(master, "keyward/v1/mac" || 0 || SHA-256(message)); nobody
// outside the TPM holds the key, so only keyward ever recomputes it.
func macInput(message []byte) []byte {
	d := sha256.Sum256(message)
	return append([]byte(labelMAC), d[:]...)
}

// MAC computes a MAC with the newest enabled version of an hmac-sha256 key.
func (b *Backend) MAC(ctx context.Context, name string, message []byte) (keys.Signature, error) {
	if err := keys.ValidateName(name); err != nil {
		return keys.Signature{}, err
	}
	if err := keys.CheckMessage("mac", message); err != nil {
		return keys.Signature{}, err
	}
	in := macInput(message)
	var out keys.Signature
	err := b.do(ctx, true, func(d *device) error {
		_, v, bp, err := b.current(name, "mac", keys.HMACSHA256)
		if err != nil {
			return err
		}
		mac, err := d.hmac(bp, in)
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

// VerifyMAC recomputes version v's MAC in the TPM and compares in constant time.
func (b *Backend) VerifyMAC(ctx context.Context, name string, v uint32, message, mac []byte) error {
	if err := keys.ValidateName(name); err != nil {
		return err
	}
	if err := keys.CheckMessage("verify-mac", message); err != nil {
		return err
	}
	in := macInput(message)
	var want []byte
	err := b.do(ctx, true, func(d *device) error {
		_, bp, err := b.usable(name, "verify-mac", v, keys.HMACSHA256)
		if err != nil {
			return err
		}
		want, err = d.hmac(bp, in)
		return err
	})
	if err != nil {
		return fmt.Errorf("verify-mac %s v%d: %w", name, v, err)
	}
	if !hmac.Equal(want, mac) {
		return fmt.Errorf("verify-mac %s v%d: %w", name, v, keys.ErrInvalidSignature)
	}
	return nil
}

func hmacEqual(a, b []byte) bool { return hmac.Equal(a, b) }

// Sign signs SHA-256(message) in the TPM: ECDSA P-256 (ASN.1 DER) or RSA-PSS.
func (b *Backend) Sign(ctx context.Context, name string, message []byte) (keys.Signature, error) {
	if err := keys.ValidateName(name); err != nil {
		return keys.Signature{}, err
	}
	if err := keys.CheckMessage("sign", message); err != nil {
		return keys.Signature{}, err
	}
	digest := sha256.Sum256(message)
	var out keys.Signature
	err := b.do(ctx, true, func(d *device) error {
		r, v, bp, err := b.current(name, "sign", keys.ECDSAP256, keys.RSA3072PSS)
		if err != nil {
			return err
		}
		sig, err := d.sign(bp, digest[:])
		if err != nil {
			return err
		}
		raw, err := encodeSignature(r.Type, sig)
		if err != nil {
			return err
		}
		// The TPM picks the PSS salt length: check it is the one Verify takes.
		pub, err := publicOf(bp)
		if err != nil {
			return err
		}
		if err := keys.CheckSigned(pub, message, raw); err != nil {
			return err
		}
		out = keys.Signature{Name: name, Version: v, Bytes: raw}
		return nil
	})
	if err != nil {
		return keys.Signature{}, fmt.Errorf("sign %s: %w", name, err)
	}
	return out, nil
}

func encodeSignature(t keys.Type, sig *tpm2.TPMTSignature) ([]byte, error) {
	switch t {
	case keys.ECDSAP256:
		e, err := sig.Signature.ECDSA()
		if err != nil {
			return nil, fmt.Errorf("TPM returned a non-ECDSA signature: %w", err)
		}
		return keys.ECDSASignature(new(big.Int).SetBytes(e.SignatureR.Buffer), new(big.Int).SetBytes(e.SignatureS.Buffer))
	case keys.RSA3072PSS:
		r, err := sig.Signature.RSAPSS()
		if err != nil {
			return nil, fmt.Errorf("TPM returned a non-PSS signature: %w", err)
		}
		return r.Sig.Buffer, nil
	}
	return nil, fmt.Errorf("sign with %s: %w", t, keys.ErrWrongKeyType)
}

// Verify checks a signature in software with version v's public key.
func (b *Backend) Verify(ctx context.Context, name string, v uint32, message, sig []byte) error {
	if err := keys.CheckMessage("verify", message); err != nil {
		return err
	}
	pub, _, err := b.publicKey(ctx, "verify", name, v, true)
	if err != nil {
		return err
	}
	if !keys.VerifySignature(pub, message, sig) {
		return fmt.Errorf("verify %s v%d: %w", name, v, keys.ErrInvalidSignature)
	}
	return nil
}

// PublicKey returns version v's public key (0: the newest enabled version).
func (b *Backend) PublicKey(ctx context.Context, name string, v uint32) (crypto.PublicKey, uint32, error) {
	return b.publicKey(ctx, "public key", name, v, false)
}

func (b *Backend) publicKey(ctx context.Context, op, name string, v uint32, forVerify bool) (crypto.PublicKey, uint32, error) {
	if err := keys.ValidateName(name); err != nil {
		return nil, 0, err
	}
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	b.recMu.RLock()
	defer b.recMu.RUnlock()
	fail := func(err error) (crypto.PublicKey, uint32, error) {
		return nil, 0, fmt.Errorf("%s %s: %w", op, name, err)
	}
	r, err := b.typed(name, op, keys.ECDSAP256, keys.RSA3072PSS)
	if err != nil {
		return fail(err)
	}
	ki := r.info()
	if v, err = ki.PublicVersion(v, forVerify); err != nil {
		return fail(err)
	}
	pub, err := publicOf(r.Vers[v-1].Blob)
	if err != nil {
		return fail(err)
	}
	return pub, v, nil
}

// publicOf parses a stored public area (MAC'd with the record, and bound to
// the private part by the TPM at every load).
func publicOf(bp *blobPair) (crypto.PublicKey, error) {
	p2b, err := tpm2.Unmarshal[tpm2.TPM2BPublic](bp.Public)
	if err != nil {
		return nil, fmt.Errorf("stored public area: %v: %w", err, keys.ErrIntegrity)
	}
	p, err := p2b.Contents()
	if err != nil {
		return nil, fmt.Errorf("stored public area: %v: %w", err, keys.ErrIntegrity)
	}
	pub, err := tpm2.Pub(*p)
	if err != nil {
		return nil, fmt.Errorf("stored public area: %v: %w", err, keys.ErrIntegrity)
	}
	return pub, nil
}

// Random returns n bytes from the TPM's generator (read over an encrypted
// session: data keys are made from them).
func (b *Backend) Random(ctx context.Context, n int) ([]byte, error) {
	if n <= 0 || n > keys.MaxRandom {
		return nil, fmt.Errorf("random: %d bytes, want 1..%d: %w", n, keys.MaxRandom, keys.ErrInvalidArgument)
	}
	var out []byte
	err := b.do(ctx, true, func(d *device) error {
		var err error
		out, err = d.random(n)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("random: %w", err)
	}
	return out, nil
}
