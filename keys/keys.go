package keys

import (
	"context"
	"crypto"
	"fmt"
	"strings"
	"time"
)

// Type is a key type. The set is closed; Valid reports membership.
type Type string

const (
	AES256GCM  Type = "aes-256-gcm"  // wrap, unwrap, rewrap, datakey
	HMACSHA256 Type = "hmac-sha256"  // mac, verify-mac
	ECDSAP256  Type = "ecdsa-p256"   // sign, verify, public-key (ASN.1 DER signatures over SHA-256)
	RSA3072PSS Type = "rsa-3072-pss" // sign, verify, public-key (PSS, SHA-256, MGF1-SHA-256, salt 32)
	Ed25519    Type = "ed25519"      // sign, verify, public-key (pure Ed25519 over the message)
)

// Types lists every key type in a stable order.
var Types = []Type{AES256GCM, HMACSHA256, ECDSAP256, RSA3072PSS, Ed25519}

// ParseType returns the Type named s or an error wrapping ErrInvalidArgument.
func ParseType(s string) (Type, error) {
	for _, t := range Types {
		if string(t) == s {
			return t, nil
		}
	}
	return "", fmt.Errorf("key type %q (want one of aes-256-gcm, hmac-sha256, ecdsa-p256, rsa-3072-pss, ed25519): %w", s, ErrInvalidArgument)
}

// Valid reports whether t is one of Types.
func (t Type) Valid() bool { _, err := ParseType(string(t)); return err == nil }

// Asymmetric reports whether the type has a public key.
func (t Type) Asymmetric() bool { return t == ECDSAP256 || t == RSA3072PSS || t == Ed25519 }

// State is the state of one key version.
type State string

const (
	Enabled   State = "enabled"   // usable
	Disabled  State = "disabled"  // refused, reversible
	Destroyed State = "destroyed" // device object deleted, irreversible
)

// Limits of the key-name grammar.
const (
	MaxNameLen = 128
	// MaxVersion bounds versions so that they fit the envelope's u32 with room.
	MaxVersion = 1<<31 - 1
)

// ValidateName checks a key name: segments of [a-z0-9][a-z0-9._-]* joined by
// '/', at most MaxNameLen bytes. Names are used in device labels, file names
// and policy globs, so nothing else is accepted ("..", empty segments, upper
// case, leading dots and any non-ASCII byte are all refused).
func ValidateName(name string) error {
	if name == "" {
		return fmt.Errorf("empty key name: %w", ErrInvalidName)
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("key name is %d bytes, at most %d: %w", len(name), MaxNameLen, ErrInvalidName)
	}
	segStart := true
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c == '/':
			if segStart {
				return fmt.Errorf("key name %q: empty segment: %w", name, ErrInvalidName)
			}
			segStart = true
			continue
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '.' || c == '_' || c == '-':
			if segStart {
				return fmt.Errorf("key name %q: a segment must start with [a-z0-9]: %w", name, ErrInvalidName)
			}
		default:
			return fmt.Errorf("key name %q: byte %d is not in [a-z0-9._-/]: %w", printable(name), i, ErrInvalidName)
		}
		segStart = false
	}
	if segStart {
		return fmt.Errorf("key name %q: ends with '/': %w", name, ErrInvalidName)
	}
	return nil
}

// printable keeps error strings free of control bytes from untrusted names.
func printable(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c < 0x20 || c >= 0x7f {
			b[i] = '?'
		}
	}
	return string(b)
}

// VersionInfo describes one version of a key.
type VersionInfo struct {
	Version uint32    `json:"version"`
	State   State     `json:"state"`
	Created time.Time `json:"created"`
}

// KeyInfo describes a key and its versions (no key material).
type KeyInfo struct {
	Name              string        `json:"name"`
	Type              Type          `json:"type"`
	Created           time.Time     `json:"created"`
	MinDecryptVersion uint32        `json:"min_decrypt_version"`
	Versions          []VersionInfo `json:"versions"` // ascending, 1..N, destroyed ones included
	Adopted           bool          `json:"adopted,omitempty"`
	// RotationPeriod is how often the daemon rotates the key by itself
	// (0: never); see NextRotation.
	RotationPeriod time.Duration `json:"rotation_period,omitempty"`
	// DisableAfter is how long an enabled version stays enabled once the
	// next newer version exists, before the daemon disables it (0: never);
	// see NextDisable.
	DisableAfter time.Duration `json:"disable_after,omitempty"`
}

// Latest returns the newest enabled version: the one encrypt, sign and mac use.
func (k *KeyInfo) Latest() (uint32, error) { return latest(k) }

// Version returns version v or an error wrapping ErrKeyNotFound.
func (k *KeyInfo) Version(v uint32) (VersionInfo, error) {
	if err := exists(k, v); err != nil {
		return VersionInfo{}, err
	}
	return k.Versions[v-1], nil
}

// CheckDecrypt reports whether version v may be used to decrypt or verify:
// it must exist, be enabled and be at least MinDecryptVersion.
func (k *KeyInfo) CheckDecrypt(v uint32) error { return checkDecrypt(k, v) }

// KeyName, KeyType, MinDecrypt, NumVersions and StateOf make a KeyInfo a Record.
func (k *KeyInfo) KeyName() string        { return k.Name }
func (k *KeyInfo) KeyType() Type          { return k.Type }
func (k *KeyInfo) MinDecrypt() uint32     { return k.MinDecryptVersion }
func (k *KeyInfo) NumVersions() int       { return len(k.Versions) }
func (k *KeyInfo) StateOf(v uint32) State { return k.Versions[v-1].State }

func latest(r Record) (uint32, error) {
	for v := uint32(r.NumVersions()); v > 0; v-- {
		if r.StateOf(v) == Enabled {
			return v, nil
		}
	}
	return 0, fmt.Errorf("key %s: %w", r.KeyName(), ErrNoEnabledVersion)
}

func exists(r Record, v uint32) error {
	if v == 0 || int(v) > r.NumVersions() {
		return fmt.Errorf("key %s v%d: %w", r.KeyName(), v, ErrKeyNotFound)
	}
	return nil
}

func checkDecrypt(r Record, v uint32) error {
	if err := exists(r, v); err != nil {
		return err
	}
	switch r.StateOf(v) {
	case Disabled:
		return fmt.Errorf("key %s v%d: %w", r.KeyName(), v, ErrVersionDisabled)
	case Destroyed:
		return fmt.Errorf("key %s v%d: %w", r.KeyName(), v, ErrVersionDestroyed)
	}
	if min := r.MinDecrypt(); v < min {
		return fmt.Errorf("key %s v%d (minimum %d): %w", r.KeyName(), v, min, ErrBelowMinVersion)
	}
	return nil
}

// Context is the caller's encryption context: pairs bound into a wrapped blob
// as additional authenticated data. Values are never logged.
type Context map[string]string

// Unwrapped is the result of Unwrap. Plaintext belongs to the caller, who
// should zero it when done.
type Unwrapped struct {
	Plaintext []byte
	Name      string
	Version   uint32
}

// Signature is a signature or MAC and the key version that made it.
type Signature struct {
	Name    string
	Version uint32
	Bytes   []byte
}

// Backend is a key device: a PKCS#11 token or a TPM. Every method is safe for
// concurrent use, takes a context first and returns errors wrapping the
// sentinels of this package. Versions are 1-based; 0 passed to PublicKey
// means the newest enabled version.
type Backend interface {
	// Lifecycle.
	CreateKey(ctx context.Context, name string, t Type) (KeyInfo, error)
	RotateKey(ctx context.Context, name string) (KeyInfo, error)
	DescribeKey(ctx context.Context, name string) (KeyInfo, error)
	ListKeys(ctx context.Context) ([]KeyInfo, error)
	SetVersionState(ctx context.Context, name string, version uint32, s State) (KeyInfo, error)
	DestroyVersion(ctx context.Context, name string, version uint32) (KeyInfo, error)
	SetMinDecryptVersion(ctx context.Context, name string, version uint32) (KeyInfo, error)
	// SetRotationPeriod stores the key's rotation period in its record
	// (0: no scheduled rotation; otherwise CheckRotationPeriod's bounds).
	SetRotationPeriod(ctx context.Context, name string, period time.Duration) (KeyInfo, error)
	// RotateIfDue rotates the key only if, in the record it reads for the
	// change (under the device's change protocol, after any retry), the
	// key is DueAt now. Of several processes sharing a device that call it
	// at once for one due key, exactly one rotates: the others then read
	// the new version and find the key not due. rotated says whether this
	// call added a version; info is the key as it stands.
	RotateIfDue(ctx context.Context, name string, now time.Time) (info KeyInfo, rotated bool, err error)
	// SetDisableAfter stores the key's disable-after delay in its record
	// (0: never; otherwise CheckDisableAfter's bounds).
	SetDisableAfter(ctx context.Context, name string, d time.Duration) (KeyInfo, error)
	// DisableVersionsIfDue disables the versions that, in the record it
	// reads for the change (under the device's change protocol, after any
	// retry), are DisableDueAt now, in one record change. Of several
	// processes sharing a device that call it at once, exactly one
	// disables each version: the others read the change and find nothing
	// due. disabled lists the versions this call disabled; info is the key
	// as it stands.
	DisableVersionsIfDue(ctx context.Context, name string, now time.Time) (info KeyInfo, disabled []uint32, err error)

	// Data operations.
	Wrap(ctx context.Context, name string, plaintext []byte, c Context) ([]byte, error)
	Unwrap(ctx context.Context, blob []byte, c Context) (Unwrapped, error)
	Sign(ctx context.Context, name string, message []byte) (Signature, error)
	Verify(ctx context.Context, name string, version uint32, message, sig []byte) error
	MAC(ctx context.Context, name string, message []byte) (Signature, error)
	VerifyMAC(ctx context.Context, name string, version uint32, message, mac []byte) error
	PublicKey(ctx context.Context, name string, version uint32) (crypto.PublicKey, uint32, error)
	// Random returns n bytes from the device's generator (data keys).
	Random(ctx context.Context, n int) ([]byte, error)

	// Health probes the device cheaply (for watchdogs and readiness).
	Health(ctx context.Context) error
	Close() error
}

// Adopter is an optional ability: take over a key object that a security
// team provisioned in the device as version 1 of a named key. Implementations
// refuse objects that are extractable, not sensitive or not private with
// ErrWeakKey.
type Adopter interface {
	AdoptKey(ctx context.Context, name string, t Type, ref string) (KeyInfo, error)
}

// Limits every backend enforces on untrusted input.
const (
	MaxPlaintext = 64 << 10 // bytes wrapped or signed in one call
	MaxBlob      = MaxPlaintext + 1024
	MaxContext   = 64   // pairs in one context
	MaxContextKV = 1024 // bytes in one context key or value
	MaxRandom    = 1024 // bytes from Random
)

// CheckContext validates a context against the limits; keys must be non-empty.
func CheckContext(c Context) error {
	if len(c) > MaxContext {
		return fmt.Errorf("context has %d pairs, at most %d: %w", len(c), MaxContext, ErrInvalidArgument)
	}
	for k, v := range c {
		if k == "" {
			return fmt.Errorf("context has an empty key: %w", ErrInvalidArgument)
		}
		if len(k) > MaxContextKV || len(v) > MaxContextKV {
			return fmt.Errorf("context key or value over %d bytes: %w", MaxContextKV, ErrInvalidArgument)
		}
	}
	return nil
}

// ReservedContextPrefix begins the context keys only keywardd itself
// binds blobs to: its Kubernetes KMS ciphertexts and systemd credentials.
// The main API refuses a caller's context with such a key, and a policy
// rule cannot require one, so that no caller can open or forge those blobs
// through Wrap, Unwrap, Rewrap or GenerateDataKey.
const ReservedContextPrefix = "keyward.internal/"

// IsReservedContextKey reports whether k is in the reserved namespace.
func IsReservedContextKey(k string) bool { return strings.HasPrefix(k, ReservedContextPrefix) }

// HasReservedContextKey reports whether c has a key in the reserved namespace.
func HasReservedContextKey(c Context) bool {
	for k := range c {
		if IsReservedContextKey(k) {
			return true
		}
	}
	return false
}

// CheckChangeable reports whether version v may be enabled, disabled or
// destroyed: it must exist and not be destroyed already.
func (k *KeyInfo) CheckChangeable(v uint32) error {
	vi, err := k.Version(v)
	if err != nil {
		return err
	}
	if vi.State == Destroyed {
		return fmt.Errorf("key %s v%d: %w", k.Name, v, ErrVersionDestroyed)
	}
	return nil
}

// PublicVersion resolves the version a public-key or verify request uses,
// with the same rules on every backend: for verify (forVerify), v must be
// given and pass CheckDecrypt; for a public key, 0 means the newest enabled
// version and a given v must exist and be neither disabled nor destroyed.
func (k *KeyInfo) PublicVersion(v uint32, forVerify bool) (uint32, error) {
	return publicVersion(k, v, forVerify)
}

func publicVersion(r Record, v uint32, forVerify bool) (uint32, error) {
	switch {
	case v == 0 && forVerify:
		return 0, fmt.Errorf("version 0: %w", ErrInvalidArgument)
	case v == 0:
		return latest(r)
	case forVerify:
		return v, checkDecrypt(r, v)
	}
	if err := exists(r, v); err != nil {
		return 0, err
	}
	switch r.StateOf(v) {
	case Disabled:
		return 0, fmt.Errorf("v%d: %w", v, ErrVersionDisabled)
	case Destroyed:
		return 0, fmt.Errorf("v%d: %w", v, ErrVersionDestroyed)
	}
	return v, nil
}

// CheckMessage checks the size of a message to wrap, sign or MAC.
func CheckMessage(op string, msg []byte) error {
	if len(msg) > MaxPlaintext {
		return fmt.Errorf("%s: input is %d bytes, at most %d: %w", op, len(msg), MaxPlaintext, ErrInvalidArgument)
	}
	return nil
}
