package keystest

import (
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"fmt"
	"math/big"
	"slices"
	"sync"
	"time"

	"github.com/keyward/keyward/envelope"
	"github.com/keyward/keyward/keys"
)

var _ keys.Backend = (*Mem)(nil)

// Mem is an in-memory keys.Backend: the reference the suite checks itself
// against, and a backend for tests of code above keys.Backend (the
// daemon's service) that need no device. It keeps key material in plain
// memory: never for anything but tests.
type Mem struct {
	// NoRSA refuses rsa-3072-pss keys (ErrUnsupported), as a device without
	// RSA does. Set it before first use.
	NoRSA  bool
	mu     sync.Mutex
	keys   map[string]*memKey
	grants map[string]memGrant
}

type memKey struct {
	info    keys.KeyInfo
	secrets []any // per version: []byte (aes, hmac) or crypto.Signer; nil once destroyed
}

// NewMem returns an empty in-memory backend.
func NewMem() *Mem { return &Mem{keys: map[string]*memKey{}} }

func clone(info keys.KeyInfo) keys.KeyInfo {
	info.Versions = slices.Clone(info.Versions)
	return info
}

func generate(t keys.Type) (any, error) {
	switch t {
	case keys.AES256GCM, keys.HMACSHA256:
		b := make([]byte, 32)
		rand.Read(b)
		return b, nil
	case keys.ECDSAP256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case keys.RSA3072PSS:
		return rsa.GenerateKey(rand.Reader, 3072)
	case keys.Ed25519:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	}
	return nil, keys.ErrInvalidArgument
}

func (m *Mem) CreateKey(_ context.Context, name string, t keys.Type) (keys.KeyInfo, error) {
	if err := keys.ValidateName(name); err != nil {
		return keys.KeyInfo{}, err
	}
	if !t.Valid() {
		return keys.KeyInfo{}, fmt.Errorf("type %q: %w", t, keys.ErrInvalidArgument)
	}
	if t == keys.RSA3072PSS && m.NoRSA {
		return keys.KeyInfo{}, fmt.Errorf("rsa: %w", keys.ErrUnsupported)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.keys[name] != nil {
		return keys.KeyInfo{}, fmt.Errorf("create %s: %w", name, keys.ErrKeyExists)
	}
	s, err := generate(t)
	if err != nil {
		return keys.KeyInfo{}, err
	}
	now := time.Now()
	k := &memKey{
		info:    keys.KeyInfo{Name: name, Type: t, Created: now, Versions: []keys.VersionInfo{{Version: 1, State: keys.Enabled, Created: now}}},
		secrets: []any{s},
	}
	m.keys[name] = k
	return clone(k.info), nil
}

// key runs fn on the named key under the lock.
func (m *Mem) key(name string, fn func(k *memKey) error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := m.keys[name]
	if k == nil {
		return fmt.Errorf("key %s: %w", name, keys.ErrKeyNotFound)
	}
	return fn(k)
}

func (m *Mem) admin(name string, fn func(k *memKey) error) (keys.KeyInfo, error) {
	var info keys.KeyInfo
	err := m.key(name, func(k *memKey) error {
		if err := fn(k); err != nil {
			return err
		}
		info = clone(k.info)
		return nil
	})
	return info, err
}

func (m *Mem) RotateKey(_ context.Context, name string) (keys.KeyInfo, error) {
	return m.admin(name, m.rotate)
}

func (m *Mem) rotate(k *memKey) error {
	s, err := generate(k.info.Type)
	if err != nil {
		return err
	}
	k.secrets = append(k.secrets, s)
	k.info.Versions = append(k.info.Versions, keys.VersionInfo{Version: uint32(len(k.secrets)), State: keys.Enabled, Created: time.Now().UTC().Truncate(time.Second)})
	return nil
}

func (m *Mem) DescribeKey(_ context.Context, name string) (keys.KeyInfo, error) {
	return m.admin(name, func(*memKey) error { return nil })
}

func (m *Mem) ListKeys(context.Context) ([]keys.KeyInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []keys.KeyInfo
	for _, k := range m.keys {
		out = append(out, clone(k.info))
	}
	return out, nil
}

func (m *Mem) SetVersionState(_ context.Context, name string, v uint32, s keys.State) (keys.KeyInfo, error) {
	if s != keys.Enabled && s != keys.Disabled {
		return keys.KeyInfo{}, fmt.Errorf("state %q: %w", s, keys.ErrInvalidArgument)
	}
	return m.admin(name, func(k *memKey) error {
		vi, err := k.info.Version(v)
		if err != nil {
			return err
		}
		if vi.State == keys.Destroyed {
			return fmt.Errorf("%s v%d: %w", name, v, keys.ErrVersionDestroyed)
		}
		k.info.Versions[v-1].State = s
		return nil
	})
}

func (m *Mem) DestroyVersion(_ context.Context, name string, v uint32) (keys.KeyInfo, error) {
	return m.admin(name, func(k *memKey) error {
		if _, err := k.info.Version(v); err != nil {
			return err
		}
		k.info.Versions[v-1].State = keys.Destroyed
		k.secrets[v-1] = nil
		return nil
	})
}

func (m *Mem) SetMinDecryptVersion(_ context.Context, name string, v uint32) (keys.KeyInfo, error) {
	return m.admin(name, func(k *memKey) error {
		if v == 0 || int(v) > len(k.info.Versions) {
			return fmt.Errorf("min version %d: %w", v, keys.ErrInvalidArgument)
		}
		k.info.MinDecryptVersion = v
		return nil
	})
}

// use returns the secret of version v (0: the newest enabled) of a key of type t.
func (m *Mem) use(name string, t keys.Type, v uint32) (secret any, version uint32, err error) {
	err = m.key(name, func(k *memKey) error {
		if k.info.Type != t {
			return fmt.Errorf("%s is %s: %w", name, k.info.Type, keys.ErrWrongKeyType)
		}
		if v == 0 {
			if v, err = k.info.Latest(); err != nil {
				return err
			}
		} else if err := k.info.CheckDecrypt(v); err != nil {
			return err
		}
		secret, version = k.secrets[v-1], v
		return nil
	})
	return secret, version, err
}

func gcm(key any) cipher.AEAD {
	b, _ := aes.NewCipher(key.([]byte))
	a, _ := cipher.NewGCM(b)
	return a
}

func (m *Mem) Wrap(_ context.Context, name string, pt []byte, c keys.Context) ([]byte, error) {
	if len(pt) > keys.MaxPlaintext {
		return nil, keys.ErrInvalidArgument
	}
	if err := keys.CheckContext(c); err != nil {
		return nil, err
	}
	s, v, err := m.use(name, keys.AES256GCM, 0)
	if err != nil {
		return nil, err
	}
	h := envelope.Header{Alg: envelope.AlgPKCS11GCM, Name: name, Version: v, Nonce: make([]byte, 12)}
	rand.Read(h.Nonce)
	aad, err := h.AAD(c)
	if err != nil {
		return nil, err
	}
	return envelope.Encode(h, gcm(s).Seal(nil, h.Nonce, pt, aad))
}

func (m *Mem) Unwrap(_ context.Context, blob []byte, c keys.Context) (keys.Unwrapped, error) {
	if err := keys.CheckContext(c); err != nil {
		return keys.Unwrapped{}, err
	}
	h, ct, err := envelope.Decode(blob)
	if err != nil {
		return keys.Unwrapped{}, err
	}
	if h.Alg != envelope.AlgPKCS11GCM {
		return keys.Unwrapped{}, keys.ErrUnsupported
	}
	s, v, err := m.use(h.Name, keys.AES256GCM, h.Version)
	if err != nil {
		return keys.Unwrapped{}, err
	}
	aad, err := h.AAD(c)
	if err != nil {
		return keys.Unwrapped{}, err
	}
	pt, err := gcm(s).Open(nil, h.Nonce, ct, aad)
	if err != nil {
		return keys.Unwrapped{}, keys.ErrDecrypt
	}
	return keys.Unwrapped{Plaintext: pt, Name: h.Name, Version: v}, nil
}

// signType returns the type of an asymmetric key, or ErrWrongKeyType.
func (m *Mem) signType(name string) (keys.Type, error) {
	var t keys.Type
	err := m.key(name, func(k *memKey) error { t = k.info.Type; return nil })
	if err == nil && !t.Asymmetric() {
		err = keys.ErrWrongKeyType
	}
	return t, err
}

func (m *Mem) Sign(_ context.Context, name string, msg []byte) (keys.Signature, error) {
	t, err := m.signType(name)
	if err != nil {
		return keys.Signature{}, err
	}
	if len(msg) > keys.MaxPlaintext {
		return keys.Signature{}, keys.ErrInvalidArgument
	}
	s, v, err := m.use(name, t, 0)
	if err != nil {
		return keys.Signature{}, err
	}
	d := sha256.Sum256(msg)
	var sig []byte
	switch k := s.(type) {
	case *ecdsa.PrivateKey:
		var r, s *big.Int
		if r, s, err = ecdsa.Sign(rand.Reader, k, d[:]); err == nil {
			sig, err = keys.ECDSASignature(r, s)
		}
	case *rsa.PrivateKey:
		sig, err = rsa.SignPSS(rand.Reader, k, crypto.SHA256, d[:], &rsa.PSSOptions{SaltLength: keys.PSSSaltLength})
	case ed25519.PrivateKey:
		sig = ed25519.Sign(k, msg)
	}
	return keys.Signature{Name: name, Version: v, Bytes: sig}, err
}

func (m *Mem) Verify(_ context.Context, name string, v uint32, msg, sig []byte) error {
	pub, _, err := m.public(name, v, true)
	if err != nil {
		return err
	}
	if !keys.VerifySignature(pub, msg, sig) {
		return keys.ErrInvalidSignature
	}
	return nil
}

// public returns version v's public key under the rules of
// keys.KeyInfo.PublicVersion, as the device backends do.
func (m *Mem) public(name string, v uint32, forVerify bool) (crypto.PublicKey, uint32, error) {
	if _, err := m.signType(name); err != nil {
		return nil, 0, err
	}
	var pub crypto.PublicKey
	err := m.key(name, func(k *memKey) error {
		pv, err := k.info.PublicVersion(v, forVerify)
		if err != nil {
			return err
		}
		pub, v = k.secrets[pv-1].(crypto.Signer).Public(), pv
		return nil
	})
	return pub, v, err
}

func (m *Mem) MAC(_ context.Context, name string, msg []byte) (keys.Signature, error) {
	if len(msg) > keys.MaxPlaintext {
		return keys.Signature{}, keys.ErrInvalidArgument
	}
	s, v, err := m.use(name, keys.HMACSHA256, 0)
	if err != nil {
		return keys.Signature{}, err
	}
	h := hmac.New(sha256.New, s.([]byte))
	h.Write(msg)
	return keys.Signature{Name: name, Version: v, Bytes: h.Sum(nil)}, nil
}

func (m *Mem) VerifyMAC(_ context.Context, name string, v uint32, msg, mac []byte) error {
	if v == 0 {
		return keys.ErrInvalidArgument
	}
	s, _, err := m.use(name, keys.HMACSHA256, v)
	if err != nil {
		return err
	}
	h := hmac.New(sha256.New, s.([]byte))
	h.Write(msg)
	if !hmac.Equal(h.Sum(nil), mac) {
		return keys.ErrInvalidSignature
	}
	return nil
}

func (m *Mem) PublicKey(_ context.Context, name string, v uint32) (crypto.PublicKey, uint32, error) {
	return m.public(name, v, false)
}

func (m *Mem) Random(_ context.Context, n int) ([]byte, error) {
	if n <= 0 || n > keys.MaxRandom {
		return nil, keys.ErrInvalidArgument
	}
	b := make([]byte, n)
	rand.Read(b)
	return b, nil
}

func (m *Mem) Health(context.Context) error { return nil }
func (m *Mem) Close() error                 { return nil }

func (m *Mem) SetRotationPeriod(_ context.Context, name string, period time.Duration) (keys.KeyInfo, error) {
	if err := keys.CheckRotationPeriod(period); err != nil {
		return keys.KeyInfo{}, err
	}
	return m.admin(name, func(k *memKey) error {
		k.info.RotationPeriod = period
		return nil
	})
}

func (m *Mem) RotateIfDue(ctx context.Context, name string, now time.Time) (keys.KeyInfo, bool, error) {
	var due bool
	info, err := m.admin(name, func(k *memKey) error {
		if due = k.info.DueAt(now); !due {
			return nil
		}
		return m.rotate(k)
	})
	return info, due && err == nil, err
}
