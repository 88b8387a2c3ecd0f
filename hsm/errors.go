package hsm

import (
	"errors"
	"fmt"

	"github.com/keyward/keyward/keys"
)

var (
	// ErrTokenNotFound: no slot holds a token with the configured label or URI.
	ErrTokenNotFound = errors.New("pkcs11 token not found")
	// ErrCredential: the token refused the PIN (as tpm.ErrCredential: the
	// device refuses the secret). Not retried: wrong PINs may lock a real token.
	ErrCredential = errors.New("pkcs11 login failed")
	// ErrModule: the PKCS#11 module could not be loaded or initialised.
	ErrModule = errors.New("pkcs11 module cannot be loaded")
	// ErrConfig: the backend configuration is incomplete or contradictory.
	ErrConfig = errors.New("invalid pkcs11 backend configuration")
	// ErrReservedObject: an adoption named an object keyward uses itself
	// (its metadata MAC key, a key record or claim, a version it generated:
	// anything labelled "keyward:") or one another key's record names. It
	// wraps keys.ErrInvalidArgument: the caller sees an invalid request.
	ErrReservedObject = fmt.Errorf("object is keyward's own or another key's, never adoptable: %w", keys.ErrInvalidArgument)
)

var errPoolFull = errors.New("session pool full")

// errConcurrent: another process changed the record while this one was
// changing it. The admin operation is retried from a fresh read.
var errConcurrent = errors.New("key record changed concurrently")

// errApplied: a change function found its change already published (by a
// run whose error hid that it took effect); update returns the record.
var errApplied = errors.New("change already published")

// errNotDue: RotateIfDue (or DisableVersionsIfDue) found, in the record
// read for the change, that nothing is due: nothing is written.
var errNotDue = errors.New("key not due for rotation")

// errObjectMissing: no object matches a reference.
var errObjectMissing = errors.New("token object not found")

// errObjectAmbiguous: more than one object matches a reference.
var errObjectAmbiguous = errors.New("more than one token object matches")
