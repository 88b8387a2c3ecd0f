package tpm

import (
	"errors"
	"fmt"

	"github.com/keyward/keyward/keys"
)

var (
	// ErrConfig: the TPM configuration (such as the device string) is invalid.
	ErrConfig = errors.New("tpm: bad configuration")
	// ErrTransport: the TPM could not be reached, or the connection broke or
	// spoke nonsense. Every error from Conn.Send wraps it.
	ErrTransport = errors.New("tpm: connection to the TPM failed")
	// ErrNoSimulator: "sim" was asked for in a build without the tpmsim tag.
	ErrNoSimulator = errors.New("tpm: this build has no TPM simulator")
	// ErrLocked: another process holds the state directory.
	ErrLocked = errors.New("tpm: state directory locked by another process")
	// ErrParentMismatch: the TPM's parent key is not the pinned one.
	ErrParentMismatch = errors.New("tpm: parent key does not match the pinned parent")
	// ErrCredential: the TPM refuses the auth secret for the stored keys, or
	// the owner authorisation given to define the rollback counter. As
	// hsm.ErrCredential, never retried.
	ErrCredential = errors.New("tpm: wrong auth secret (or owner authorisation)")
	// ErrCapability: the TPM lacks a command or algorithm keyward needs.
	ErrCapability = errors.New("tpm: missing capability")
	// ErrRollback: the state directory is older than the rollback counter
	// says, or the counter or manifest that vouch for it is gone.
	ErrRollback = fmt.Errorf("tpm: state directory rolled back or its counter lost: %w", keys.ErrIntegrity)
	// ErrHistoryLost: the manifest or the rollback counter (or both) is
	// gone, so the state directory's history cannot be checked; only an
	// operator who knows why may accept the state as it is (define-counter
	// with trust-current-state). It wraps ErrRollback.
	ErrHistoryLost = fmt.Errorf("tpm: the state directory's history cannot be checked: %w", ErrRollback)
	// ErrOwnerAuth: defining the rollback counter needs the owner
	// hierarchy's authorisation, which is set and was not given. It wraps
	// ErrConfig.
	ErrOwnerAuth = fmt.Errorf("tpm: defining the rollback counter needs the owner authorisation: %w", ErrConfig)
	// ErrCounterDefined: define-counter on a state directory that has one.
	ErrCounterDefined = errors.New("tpm: the rollback counter is defined already")
)

// errNoIndex: the counter index is not defined on the TPM.
var errNoIndex = errors.New("NV index not defined")

// errUnchanged: a change function found nothing to change (RotateIfDue or
// DisableVersionsIfDue on a key not due); the record is not written.
var errUnchanged = errors.New("tpm: nothing to change")
