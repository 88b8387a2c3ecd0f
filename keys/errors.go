package keys

import (
	"errors"
	"fmt"
)

// Sentinel errors shared by every backend. Backends wrap them with detail
// ("unwrap payments/db v3: %w"); callers test them with errors.Is. The socket
// layer maps each to one wire code and sends nothing else of the error.
var (
	// ErrKeyNotFound: no key with that name, or no such version.
	ErrKeyNotFound = errors.New("key not found")
	// ErrKeyExists: CreateKey or AdoptKey on a name already in use.
	ErrKeyExists = errors.New("key already exists")
	// ErrInvalidName: a key name outside the grammar of ValidateName.
	ErrInvalidName = errors.New("invalid key name")
	// ErrInvalidArgument: any other malformed request (bad type, empty input, bad version number).
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrUnsupported: the key type or operation is not available on this backend or key type.
	ErrUnsupported = errors.New("unsupported by this backend or key type")
	// ErrWrongKeyType: the operation does not fit the key's type (sign with an AES key).
	ErrWrongKeyType = errors.New("operation does not fit the key type")
	// ErrVersionDisabled: the version exists but is disabled.
	ErrVersionDisabled = errors.New("key version is disabled")
	// ErrVersionDestroyed: the version's key object has been deleted for good.
	ErrVersionDestroyed = errors.New("key version is destroyed")
	// ErrBelowMinVersion: the version is below the key's minimum decrypt version.
	ErrBelowMinVersion = errors.New("key version is below the minimum decrypt version")
	// ErrNoEnabledVersion: every version of the key is disabled or destroyed.
	ErrNoEnabledVersion = errors.New("key has no enabled version")
	// ErrMalformed: a blob, signature or MAC that cannot be parsed. The envelope
	// package's finer errors (bad magic, truncated...) all match it too.
	ErrMalformed = errors.New("malformed input")
	// ErrDecrypt: authentication failed (wrong context, tampered blob, wrong key).
	// Deliberately one error: which of these it was is not told to the caller.
	ErrDecrypt = errors.New("decryption failed: wrong context or tampered data")
	// ErrInvalidSignature: a signature or MAC that does not verify.
	ErrInvalidSignature = errors.New("signature or mac does not verify")
	// ErrUnavailable: the device cannot be reached now (token removed, TPM
	// restarting); the call may succeed later.
	ErrUnavailable = errors.New("key backend unavailable")
	// ErrBusy: another writer is changing the key, or left a claim on it
	// that is not yet known to be abandoned. It wraps ErrUnavailable (the
	// caller retries later), but the device itself answers.
	ErrBusy = fmt.Errorf("key being changed by another writer: %w", ErrUnavailable)
	// ErrIntegrity: stored keyring metadata failed its integrity check, or a
	// device object is weaker than keyward requires. Never retried.
	ErrIntegrity = errors.New("keyring integrity check failed")
	// ErrReadOnly: a change through a backend opened read-only (for
	// inspection). It wraps ErrUnsupported.
	ErrReadOnly = fmt.Errorf("backend opened read-only: %w", ErrUnsupported)
	// ErrWeakKey: an object offered for adoption is extractable, not sensitive
	// or not private (or otherwise unfit to be a master key).
	ErrWeakKey = errors.New("key object is not protected by the device")
)
