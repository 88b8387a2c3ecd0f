package tpm

import (
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/big"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/keyward/keyward/envelope"
	"github.com/keyward/keyward/keys"
)

func (b *TPM) writable() error {
	if b.readOnly {
		return fmt.Errorf("tpm: %w", keys.ErrReadOnly)
	}
	return nil
}

// CreateKey generates version 1 of a new key inside the TPM and stores its
// blob and record.
func (b *TPM) CreateKey(ctx context.Context, name string, ty keys.Type) (keys.KeyInfo, error) {
	if err := keys.ValidateName(name); err != nil {
		return keys.KeyInfo{}, err
	}
	// Each '/' is %2F in the record's file name (fileName), which the file
	// system bounds: refused here, before the TPM makes anything.
	if n := len(fileName(name)); n > maxFileName {
		return keys.KeyInfo{}, fmt.Errorf("create %s: the TPM backend stores it as a %d-byte file name, at most %d (fewer '/' or a shorter name): %w",
			name, n, maxFileName, keys.ErrInvalidName)
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
func (b *TPM) update(ctx context.Context, op, name string, change func(d *device, r *record) error) (keys.KeyInfo, error) {
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
func (b *TPM) RotateKey(ctx context.Context, name string) (keys.KeyInfo, error) {
	return b.update(ctx, "rotate", name, func(d *device, r *record) error { return b.addVersion(d, r) })
}

// RotateIfDue rotates the key if its record, read under the TPM's lock for
// the change, says it is due at now.
func (b *TPM) RotateIfDue(ctx context.Context, name string, now time.Time) (keys.KeyInfo, bool, error) {
	rotated := false
	info, err := b.update(ctx, "rotate", name, func(d *device, r *record) error {
		if ki := r.info(); !ki.DueAt(now) {
			rotated = false
			return errUnchanged
		}
		rotated = true
		return b.addVersion(d, r)
	})
	if errors.Is(err, errUnchanged) {
		info, err = b.DescribeKey(ctx, name)
	}
	return info, rotated && err == nil, err
}

// SetRotationPeriod stores the key's scheduled rotation period (0: none).
func (b *TPM) SetRotationPeriod(ctx context.Context, name string, period time.Duration) (keys.KeyInfo, error) {
	if err := keys.CheckRotationPeriod(period); err != nil {
		return keys.KeyInfo{}, err
	}
	return b.update(ctx, "set-rotation", name, func(d *device, r *record) error {
		r.Period = int64(period / time.Second)
		return nil
	})
}

// addVersion appends a version generated in the TPM to r.
func (b *TPM) addVersion(d *device, r *record) error {
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
}

// SetVersionState enables or disables a version.
func (b *TPM) SetVersionState(ctx context.Context, name string, v uint32, st keys.State) (keys.KeyInfo, error) {
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
// record file (a backup) still loads on this TPM; docs/tpm.md says so.
func (b *TPM) DestroyVersion(ctx context.Context, name string, v uint32) (keys.KeyInfo, error) {
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
func (b *TPM) SetMinDecryptVersion(ctx context.Context, name string, v uint32) (keys.KeyInfo, error) {
	return b.update(ctx, "set-min-version", name, func(d *device, r *record) error {
		if int(v) > len(r.Vers) {
			return fmt.Errorf("minimum decrypt version %d is beyond the newest version %d: %w", v, len(r.Vers), keys.ErrInvalidArgument)
		}
		r.Min = v
		return nil
	})
}

// tpmDevice is the backend as the keys.Frontend's Device: the TPM half of
// the data operations. Each method resolves its keys.Use holding the slot
// (or recMu), against the record in memory.
type tpmDevice TPM

var _ keys.Device = (*tpmDevice)(nil)

func (d *tpmDevice) tpm() *TPM { return (*TPM)(d) }

// KeyName, KeyType, MinDecrypt, NumVersions and StateOf make a record a
// keys.Record.
func (r *record) KeyName() string             { return r.Name }
func (r *record) KeyType() keys.Type          { return r.Type }
func (r *record) MinDecrypt() uint32          { return r.Min }
func (r *record) NumVersions() int            { return len(r.Vers) }
func (r *record) StateOf(v uint32) keys.State { return r.Vers[v-1].State }

// resolve returns u's key record and the version u resolves to and its
// blob (holding the slot or recMu).
func (b *TPM) resolve(u keys.Use) (*record, uint32, *blobPair, error) {
	r, err := b.rec(u.Name)
	if err != nil {
		return nil, 0, nil, err
	}
	v, err := u.Resolve(r)
	if err != nil {
		return nil, 0, nil, err
	}
	return r, v, r.Vers[v-1].Blob, nil
}

// derive asks the TPM for a message key: HMAC(master, labelWrap || nonce).
func (b *TPM) derive(ctx context.Context, u keys.Use, nonce []byte) ([]byte, uint32, error) {
	in := make([]byte, 0, len(labelWrap)+len(nonce))
	in = append(append(in, labelWrap...), nonce...)
	var k []byte
	var v uint32
	err := b.do(ctx, true, func(d *device) error {
		_, rv, bp, err := b.resolve(u)
		if err != nil {
			return err
		}
		v = rv
		k, err = d.hmac(bp, in)
		return err
	})
	return k, v, err
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

// Seal seals plaintext under a key derived in the TPM (envelope alg 2).
func (d *tpmDevice) Seal(ctx context.Context, u keys.Use, plaintext []byte, c keys.Context) ([]byte, error) {
	hdr := envelope.Header{Alg: envelope.AlgTPMHMACGCM, Name: u.Name, Nonce: make([]byte, envelope.AlgTPMHMACGCM.NonceSize())}
	if _, err := rand.Read(hdr.Nonce); err != nil {
		return nil, err
	}
	k, v, err := d.tpm().derive(ctx, u, hdr.Nonce)
	if err != nil {
		return nil, err
	}
	hdr.Version = v
	aead, err := gcmWithKey(k)
	if err != nil {
		return nil, err
	}
	aad, err := hdr.AAD(c)
	if err != nil {
		return nil, err
	}
	return envelope.Encode(hdr, aead.Seal(nil, zeroIV[:], plaintext, aad))
}

// Open opens a blob made by Seal with the key derived again in the TPM.
func (d *tpmDevice) Open(ctx context.Context, blob []byte, c keys.Context) (keys.Unwrapped, error) {
	hdr, ct, aad, err := envelope.Open(blob, envelope.AlgTPMHMACGCM, c)
	if err != nil {
		return keys.Unwrapped{}, err
	}
	out := keys.Unwrapped{Name: hdr.Name, Version: hdr.Version}
	k, _, err := d.tpm().derive(ctx, keys.Use{Op: keys.OpUnwrap, Name: hdr.Name, Version: hdr.Version}, hdr.Nonce)
	if err != nil {
		return out, err
	}
	aead, err := gcmWithKey(k)
	if err != nil {
		return out, err
	}
	if out.Plaintext, err = aead.Open(nil, zeroIV[:], ct, aad); err != nil {
		return out, keys.ErrDecrypt
	}
	return out, nil
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

// MAC computes a MAC in the TPM (see macInput).
func (d *tpmDevice) MAC(ctx context.Context, u keys.Use, message []byte) (keys.Signature, error) {
	mac, v, err := d.tpm().hmacOf(ctx, u, message)
	if err != nil {
		return keys.Signature{}, err
	}
	return keys.Signature{Name: u.Name, Version: v, Bytes: mac}, nil
}

// CheckMAC recomputes the MAC in the TPM and compares in constant time.
func (d *tpmDevice) CheckMAC(ctx context.Context, u keys.Use, message, mac []byte) error {
	want, _, err := d.tpm().hmacOf(ctx, u, message)
	if err != nil {
		return err
	}
	if !hmac.Equal(want, mac) {
		return keys.ErrInvalidSignature
	}
	return nil
}

// hmacOf computes the MAC of message with the version u resolves to.
func (b *TPM) hmacOf(ctx context.Context, u keys.Use, message []byte) ([]byte, uint32, error) {
	in := macInput(message)
	var mac []byte
	var v uint32
	err := b.do(ctx, true, func(d *device) error {
		_, rv, bp, err := b.resolve(u)
		if err != nil {
			return err
		}
		v = rv
		mac, err = d.hmac(bp, in)
		return err
	})
	return mac, v, err
}

func hmacEqual(a, b []byte) bool { return hmac.Equal(a, b) }

// Sign signs SHA-256(message) in the TPM: ECDSA P-256 (ASN.1 DER, low s) or
// RSA-PSS.
func (d *tpmDevice) Sign(ctx context.Context, u keys.Use, message []byte) (keys.Signature, error) {
	b := d.tpm()
	digest := sha256.Sum256(message)
	var out keys.Signature
	err := b.do(ctx, true, func(d *device) error {
		r, v, bp, err := b.resolve(u)
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
		out = keys.Signature{Name: u.Name, Version: v, Bytes: raw}
		return nil
	})
	return out, err
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

// Public returns a version's public key from its stored public area, in
// memory: it never waits for the TPM.
func (d *tpmDevice) Public(ctx context.Context, u keys.Use) (crypto.PublicKey, uint32, error) {
	b := d.tpm()
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	b.recMu.RLock()
	defer b.recMu.RUnlock()
	_, v, bp, err := b.resolve(u)
	if err != nil {
		return nil, 0, err
	}
	pub, err := publicOf(bp)
	if err != nil {
		return nil, 0, err
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

// Random reads n bytes from the TPM's generator (over an encrypted
// session: data keys are made from them).
func (d *tpmDevice) Random(ctx context.Context, n int) ([]byte, error) {
	var out []byte
	err := d.tpm().do(ctx, true, func(d *device) error {
		var err error
		out, err = d.random(n)
		return err
	})
	return out, err
}
