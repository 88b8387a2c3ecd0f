package tpm

import "errors"

var (
	// ErrConfig: the TPM configuration (such as the device string) is invalid.
	ErrConfig = errors.New("tpm: bad configuration")
	// ErrTransport: the TPM could not be reached, or the connection broke or
	// spoke nonsense. Every error from Conn.Send wraps it.
	ErrTransport = errors.New("tpm: connection to the TPM failed")
	// ErrNoSimulator: "sim" was asked for in a build without -tags tpmsim.
	ErrNoSimulator = errors.New("tpm: this build has no TPM simulator (build with -tags tpmsim)")
)
