package tpm

import "errors"

var (
	// ErrLocked: another process holds the state directory.
	ErrLocked = errors.New("tpm: state directory locked by another process")
	// ErrReadOnly: a change through a backend opened read-only.
	ErrReadOnly = errors.New("tpm: backend opened read-only")
	// ErrParentMismatch: the TPM's parent key is not the pinned one.
	ErrParentMismatch = errors.New("tpm: parent key does not match the pinned parent")
	// ErrAuth: the TPM refuses the auth secret for the stored objects.
	ErrAuth = errors.New("tpm: wrong auth secret for the stored keys")
	// ErrCapability: the TPM lacks a command or algorithm keyward needs.
	ErrCapability = errors.New("tpm: missing capability")
)
