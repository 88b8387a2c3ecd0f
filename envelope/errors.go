package envelope

import "github.com/keyward/keyward/keys"

// Sentinel errors. Each is distinct from the others, and each also matches
// keys.ErrMalformed under errors.Is, so the socket layer needs only the keys
// sentinels while tests and logs can tell the cases apart. Returned errors wrap
// them with the field and offset at fault.
var (
	// ErrBadMagic: the blob does not start with Magic.
	ErrBadMagic error = &formatError{msg: "bad magic"}
	// ErrUnknownFormat: the format byte is not FormatV1.
	ErrUnknownFormat error = &formatError{msg: "unknown envelope format"}
	// ErrUnknownAlg: the algorithm byte is not a known Alg.
	ErrUnknownAlg error = &formatError{msg: "unknown algorithm"}
	// ErrTruncated: a field is cut short, or the ciphertext is shorter than TagSize.
	ErrTruncated error = &formatError{msg: "truncated blob"}
	// ErrBadName: the key name fails keys.ValidateName. It also matches
	// keys.ErrInvalidName.
	ErrBadName error = &formatError{msg: "invalid key name", also: keys.ErrInvalidName}
	// ErrBadVersion: the version is 0 or above keys.MaxVersion.
	ErrBadVersion error = &formatError{msg: "bad key version"}
	// ErrBadNonce: the nonce length is not the algorithm's.
	ErrBadNonce error = &formatError{msg: "bad nonce length"}
	// ErrTooLarge: the blob (or its text form) exceeds keys.MaxBlob.
	ErrTooLarge error = &formatError{msg: "blob too large"}
	// ErrBadText: the text form is not padded standard base64, optionally
	// surrounded by whitespace.
	ErrBadText error = &formatError{msg: "bad blob text encoding"}
)

// formatError is the type of the sentinels above. Pointer identity keeps them
// distinct; Is adds keys.ErrMalformed (and at most one other keys sentinel).
type formatError struct {
	msg  string
	also error
}

func (e *formatError) Error() string { return e.msg }

func (e *formatError) Is(target error) bool {
	return target == keys.ErrMalformed || (e.also != nil && target == e.also)
}
