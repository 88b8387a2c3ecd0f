package keys

import (
	"context"
	"crypto"
	"fmt"
)

// Op names a data operation: in error strings, and to pick the key types
// and the version rule a Use resolves with.
type Op string

const (
	OpWrap      Op = "wrap"
	OpUnwrap    Op = "unwrap"
	OpSign      Op = "sign"
	OpVerify    Op = "verify"
	OpMAC       Op = "mac"
	OpVerifyMAC Op = "verify-mac"
	OpPublicKey Op = "public key"
)

// Use is what one data operation asks of a key. The Frontend makes it; the
// Device resolves it with Resolve against the record it reads inside its
// own session or lock, so that the check and the use see the same record.
type Use struct {
	Op      Op
	Name    string
	Version uint32 // as asked: 0 is the newest enabled version where Op allows it
}

// Record is what Resolve reads of a backend's stored key record. Backends
// implement it on their record pointers, so resolving allocates nothing.
type Record interface {
	KeyName() string
	KeyType() Type
	MinDecrypt() uint32
	// NumVersions is the number of versions, destroyed ones included (1..N).
	NumVersions() int
	// StateOf returns version v's state, 1 <= v <= NumVersions().
	StateOf(v uint32) State
}

// Resolve checks that r's type fits u.Op and returns the version to use:
// the newest enabled one for wrap, sign and mac; for unwrap and verify-mac
// the given one after CheckDecrypt; for verify and public key, what
// PublicVersion says.
func (u Use) Resolve(r Record) (uint32, error) {
	if !u.fits(r.KeyType()) {
		return 0, fmt.Errorf("%s with %s key %s: %w", u.Op, r.KeyType(), u.Name, ErrWrongKeyType)
	}
	switch u.Op {
	case OpWrap, OpSign, OpMAC:
		return latest(r)
	case OpUnwrap, OpVerifyMAC:
		return u.Version, checkDecrypt(r, u.Version)
	}
	return publicVersion(r, u.Version, u.Op == OpVerify)
}

// fits reports whether a key of type t may serve u.Op.
func (u Use) fits(t Type) bool {
	switch u.Op {
	case OpWrap, OpUnwrap:
		return t == AES256GCM
	case OpMAC, OpVerifyMAC:
		return t == HMACSHA256
	}
	return t.Asymmetric()
}

// Device is the part of a Backend that touches the device: each method runs
// in one session (or under one lock), reads the key's record there and
// resolves the Use with Use.Resolve before using the key. The Frontend has
// validated the name, sizes and context already, and wraps the errors with
// the operation and key, so a Device returns them bare.
type Device interface {
	// Seal encrypts plaintext under the version u resolves to and returns
	// an envelope blob binding the name, version and c.
	Seal(ctx context.Context, u Use, plaintext []byte, c Context) ([]byte, error)
	// Open decrypts a blob made by Seal. On failure, the returned
	// Unwrapped carries the name and version once the header was read.
	Open(ctx context.Context, blob []byte, c Context) (Unwrapped, error)
	// Sign signs message (ECDSA over SHA-256 in DER with a low s, RSA-PSS
	// salt PSSSaltLength, or Ed25519) and returns the signature.
	Sign(ctx context.Context, u Use, message []byte) (Signature, error)
	// MAC computes HMAC-SHA256 (the backend's construction) of message.
	MAC(ctx context.Context, u Use, message []byte) (Signature, error)
	// CheckMAC returns ErrInvalidSignature unless mac is u's MAC of message.
	CheckMAC(ctx context.Context, u Use, message, mac []byte) error
	// Public returns the public key of the version u resolves to.
	Public(ctx context.Context, u Use) (crypto.PublicKey, uint32, error)
	// Random returns n bytes, 1 <= n <= MaxRandom, from the device.
	Random(ctx context.Context, n int) ([]byte, error)
}

// Frontend is the data-operation half of a Backend, the same for every
// backend: it checks names, sizes and contexts, wraps errors, verifies
// signatures in software, and leaves the device's work to a Device.
// Backends embed it.
type Frontend struct{ d Device }

// NewFrontend returns the front end of d.
func NewFrontend(d Device) Frontend { return Frontend{d: d} }

// Wrap encrypts plaintext with the newest enabled version of an AES key and
// returns an envelope blob binding name, version and context.
func (f Frontend) Wrap(ctx context.Context, name string, plaintext []byte, c Context) ([]byte, error) {
	if err := checkInput(OpWrap, name, plaintext); err != nil {
		return nil, err
	}
	if err := CheckContext(c); err != nil {
		return nil, err
	}
	blob, err := f.d.Seal(ctx, Use{Op: OpWrap, Name: name}, plaintext, c)
	if err != nil {
		return nil, fmt.Errorf("wrap %s: %w", name, err)
	}
	return blob, nil
}

// Unwrap opens a blob made by Wrap, under the same context.
func (f Frontend) Unwrap(ctx context.Context, blob []byte, c Context) (Unwrapped, error) {
	if err := CheckContext(c); err != nil {
		return Unwrapped{}, err
	}
	u, err := f.d.Open(ctx, blob, c)
	switch {
	case err == nil:
		return u, nil
	case u.Name == "":
		return Unwrapped{}, fmt.Errorf("unwrap: %w", err)
	}
	return Unwrapped{}, fmt.Errorf("unwrap %s v%d: %w", u.Name, u.Version, err)
}

// Sign signs message with the newest enabled version of a signing key.
func (f Frontend) Sign(ctx context.Context, name string, message []byte) (Signature, error) {
	if err := checkInput(OpSign, name, message); err != nil {
		return Signature{}, err
	}
	s, err := f.d.Sign(ctx, Use{Op: OpSign, Name: name}, message)
	if err != nil {
		return Signature{}, fmt.Errorf("sign %s: %w", name, err)
	}
	return s, nil
}

// Verify checks a signature made by version v, in software with the
// version's public key (see VerifySignature).
func (f Frontend) Verify(ctx context.Context, name string, v uint32, message, sig []byte) error {
	if err := CheckMessage(string(OpVerify), message); err != nil {
		return err
	}
	pub, _, err := f.public(ctx, Use{Op: OpVerify, Name: name, Version: v})
	if err != nil {
		return err
	}
	if !VerifySignature(pub, message, sig) {
		return fmt.Errorf("verify %s v%d: %w", name, v, ErrInvalidSignature)
	}
	return nil
}

// PublicKey returns version v's public key (0: the newest enabled version).
func (f Frontend) PublicKey(ctx context.Context, name string, v uint32) (crypto.PublicKey, uint32, error) {
	return f.public(ctx, Use{Op: OpPublicKey, Name: name, Version: v})
}

func (f Frontend) public(ctx context.Context, u Use) (crypto.PublicKey, uint32, error) {
	if err := ValidateName(u.Name); err != nil {
		return nil, 0, err
	}
	pub, v, err := f.d.Public(ctx, u)
	if err != nil {
		return nil, 0, fmt.Errorf("%s %s: %w", u.Op, u.Name, err)
	}
	return pub, v, nil
}

// MAC computes a MAC with the newest enabled version of an hmac-sha256 key.
func (f Frontend) MAC(ctx context.Context, name string, message []byte) (Signature, error) {
	if err := checkInput(OpMAC, name, message); err != nil {
		return Signature{}, err
	}
	s, err := f.d.MAC(ctx, Use{Op: OpMAC, Name: name}, message)
	if err != nil {
		return Signature{}, fmt.Errorf("mac %s: %w", name, err)
	}
	return s, nil
}

// VerifyMAC checks a MAC made by version v.
func (f Frontend) VerifyMAC(ctx context.Context, name string, v uint32, message, mac []byte) error {
	if err := checkInput(OpVerifyMAC, name, message); err != nil {
		return err
	}
	if err := f.d.CheckMAC(ctx, Use{Op: OpVerifyMAC, Name: name, Version: v}, message, mac); err != nil {
		return fmt.Errorf("verify-mac %s v%d: %w", name, v, err)
	}
	return nil
}

// Random returns n bytes from the device's generator.
func (f Frontend) Random(ctx context.Context, n int) ([]byte, error) {
	if n < 1 || n > MaxRandom {
		return nil, fmt.Errorf("random: %d bytes, want 1..%d: %w", n, MaxRandom, ErrInvalidArgument)
	}
	b, err := f.d.Random(ctx, n)
	if err != nil {
		return nil, fmt.Errorf("random: %w", err)
	}
	return b, nil
}

// checkInput validates a key name and a message's size, in that order.
func checkInput(op Op, name string, msg []byte) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	return CheckMessage(string(op), msg)
}
