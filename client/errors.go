package client

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	keywardv1 "github.com/keyward/keyward/api/keyward/v1"
)

// Every error a Client returns wraps exactly one of these; check with
// errors.Is. The daemon's google.rpc.ErrorInfo reason picks the sentinel;
// an error without a keyward reason falls back to its gRPC code.
var (
	// ErrInvalidArgument: a field is missing, malformed or over a limit
	// (INVALID_REQUEST).
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrInvalidName: a key name outside the grammar (INVALID_KEY_NAME).
	ErrInvalidName = errors.New("invalid key name")
	// ErrMalformed: the ciphertext is not a keyward blob (MALFORMED_CIPHERTEXT).
	ErrMalformed = errors.New("malformed ciphertext")
	// ErrDecrypt: wrong context, tampered blob or another key's blob
	// (DECRYPTION_FAILED).
	ErrDecrypt = errors.New("decryption failed")
	// ErrWrongKeyType: the operation does not fit the key's type (WRONG_KEY_TYPE).
	ErrWrongKeyType = errors.New("operation does not fit the key type")
	// ErrNotFound: no such key or version (KEY_NOT_FOUND).
	ErrNotFound = errors.New("key or version not found")
	// ErrKeyExists: the name is already in use (KEY_EXISTS).
	ErrKeyExists = errors.New("key already exists")
	// ErrVersionDisabled: the version is disabled (VERSION_DISABLED).
	ErrVersionDisabled = errors.New("key version is disabled")
	// ErrVersionDestroyed: the version's key object is gone for good
	// (VERSION_DESTROYED).
	ErrVersionDestroyed = errors.New("key version is destroyed")
	// ErrBelowMinVersion: the version is below the key's minimum decrypt
	// version (BELOW_MIN_VERSION).
	ErrBelowMinVersion = errors.New("key version is below the minimum decrypt version")
	// ErrNoEnabledVersion: every version of the key is disabled or destroyed
	// (NO_ENABLED_VERSION).
	ErrNoEnabledVersion = errors.New("key has no enabled version")
	// ErrUnsupported: the type or operation is not available on the daemon's
	// backend (UNSUPPORTED), or the daemon does not know the call.
	ErrUnsupported = errors.New("unsupported")
	// ErrWeakKey: an object offered for adoption is not protected by the
	// device (WEAK_KEY).
	ErrWeakKey = errors.New("key object is not protected by the device")
	// ErrIntegrity: a keyring record failed its integrity check (INTEGRITY).
	ErrIntegrity = errors.New("keyring integrity check failed")
	// ErrPermissionDenied: the policy does not allow this caller the
	// operation (PERMISSION_DENIED; the daemon's audit log says why), or the
	// socket may not be opened.
	ErrPermissionDenied = errors.New("permission denied")
	// ErrUnavailable: the daemon or its device cannot be reached now, or is
	// shutting down (BACKEND_UNAVAILABLE, SHUTTING_DOWN, or no daemon on the
	// socket); worth retrying later. A call whose context ended while
	// waiting for the daemon wraps it too, and the context's error.
	ErrUnavailable = errors.New("keyward unavailable")
	// ErrResourceExhausted: a per-caller rate limit or a connection or
	// concurrency limit was hit (RATE_LIMITED, TOO_MANY_REQUESTS).
	ErrResourceExhausted = errors.New("keyward limit reached")
	// ErrQuotaExceeded: a stored quota is reached (QUOTA_EXCEEDED): a
	// requester's break-glass records, or the grant store's room for new
	// requests; the message says which. Not worth retrying until records
	// end or are removed.
	ErrQuotaExceeded = errors.New("keyward quota reached")
	// ErrUntrustedDaemon: the process listening on the socket runs as a uid
	// keywardd may not have (see WithDaemonUID), so nothing was sent to it.
	// Someone may be impersonating the daemon; never retried, and the
	// Client fails every later call with it too.
	ErrUntrustedDaemon = errors.New("the socket is not served by the expected keywardd")
	// ErrInternal: anything outside the API's closed set of errors: an
	// internal error of the daemon, a reply that breaks the protocol.
	ErrInternal = errors.New("internal error")
)

// reasonErrs maps each reason to its sentinel.
var reasonErrs = map[keywardv1.ErrorReason]error{
	keywardv1.ErrorReason_INVALID_REQUEST:      ErrInvalidArgument,
	keywardv1.ErrorReason_INVALID_KEY_NAME:     ErrInvalidName,
	keywardv1.ErrorReason_MALFORMED_CIPHERTEXT: ErrMalformed,
	keywardv1.ErrorReason_DECRYPTION_FAILED:    ErrDecrypt,
	keywardv1.ErrorReason_WRONG_KEY_TYPE:       ErrWrongKeyType,
	keywardv1.ErrorReason_KEY_NOT_FOUND:        ErrNotFound,
	keywardv1.ErrorReason_KEY_EXISTS:           ErrKeyExists,
	keywardv1.ErrorReason_VERSION_DISABLED:     ErrVersionDisabled,
	keywardv1.ErrorReason_VERSION_DESTROYED:    ErrVersionDestroyed,
	keywardv1.ErrorReason_BELOW_MIN_VERSION:    ErrBelowMinVersion,
	keywardv1.ErrorReason_NO_ENABLED_VERSION:   ErrNoEnabledVersion,
	keywardv1.ErrorReason_UNSUPPORTED:          ErrUnsupported,
	keywardv1.ErrorReason_WEAK_KEY:             ErrWeakKey,
	keywardv1.ErrorReason_INTEGRITY:            ErrIntegrity,
	keywardv1.ErrorReason_PERMISSION_DENIED:    ErrPermissionDenied,
	keywardv1.ErrorReason_BACKEND_UNAVAILABLE:  ErrUnavailable,
	keywardv1.ErrorReason_RATE_LIMITED:         ErrResourceExhausted,
	keywardv1.ErrorReason_TOO_MANY_REQUESTS:    ErrResourceExhausted,
	keywardv1.ErrorReason_SHUTTING_DOWN:        ErrUnavailable,
	keywardv1.ErrorReason_AUDIT_UNAVAILABLE:    ErrUnavailable,
	keywardv1.ErrorReason_QUOTA_EXCEEDED:       ErrQuotaExceeded,
}

// codeErr is the fallback when an error carries no keyward reason.
func codeErr(c codes.Code) error {
	switch c {
	case codes.InvalidArgument, codes.OutOfRange:
		return ErrInvalidArgument
	case codes.NotFound:
		return ErrNotFound
	case codes.AlreadyExists:
		return ErrKeyExists
	case codes.PermissionDenied, codes.Unauthenticated:
		return ErrPermissionDenied
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		return ErrUnavailable
	case codes.ResourceExhausted:
		return ErrResourceExhausted
	case codes.Unimplemented:
		return ErrUnsupported
	}
	// FAILED_PRECONDITION always comes with a reason; without one, as with
	// Unknown, Internal, DataLoss or Aborted, the reply is outside the API.
	return ErrInternal
}

// Error is the error of a call: the operation, the status the daemon (or
// gRPC) answered with, and the sentinel chosen from them. Messages never
// hold key material, plaintext or context values: the daemon promises it,
// and the client adds only names and numbers.
type Error struct {
	Op      string                // "wrap payments/db", "unwrap", "dial /run/keyward/keyward.sock"
	Code    codes.Code            // gRPC code
	Reason  keywardv1.ErrorReason // ERROR_REASON_UNSPECIFIED when the status carried none
	Message string                // the status message

	sentinel error
	cause    error             // a context or dial error, when there is one
	st       *status.Status    // nil for errors made by the client
	metadata map[string]string // ErrorInfo metadata
}

func (e *Error) Error() string {
	msg := e.Message
	if msg == "" {
		msg = e.sentinel.Error()
	}
	s := fmt.Sprintf("%s: %s (%s", e.Op, msg, code.Code(e.Code))
	if e.Reason != keywardv1.ErrorReason_ERROR_REASON_UNSPECIFIED {
		s += ", reason " + e.Reason.String()
	}
	return s + ")"
}

// Unwrap gives the sentinel, and the context or dial error when there is
// one, to errors.Is and errors.As.
func (e *Error) Unwrap() []error {
	if e.cause != nil {
		return []error{e.sentinel, e.cause}
	}
	return []error{e.sentinel}
}

// GRPCStatus returns the status the daemon sent, so that status.FromError
// and status.Code work on a Client's errors.
func (e *Error) GRPCStatus() *status.Status {
	if e.st != nil {
		return e.st
	}
	return status.New(e.Code, e.Error())
}

// Metadata returns the ErrorInfo metadata the daemon attached (nil when none).
func (e *Error) Metadata() map[string]string { return e.metadata }

// Reason returns the keyward reason of an error returned by a Client (or of
// any gRPC status error carrying a keyward ErrorInfo), and
// ERROR_REASON_UNSPECIFIED for any other error.
func Reason(err error) keywardv1.ErrorReason {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	if st, ok := status.FromError(err); ok && st != nil {
		r, _ := reasonOf(st)
		return r
	}
	return keywardv1.ErrorReason_ERROR_REASON_UNSPECIFIED
}

// reasonOf finds the keyward ErrorInfo in a status.
func reasonOf(st *status.Status) (keywardv1.ErrorReason, map[string]string) {
	for _, d := range st.Details() {
		info, ok := d.(*errdetails.ErrorInfo)
		if !ok || info.GetDomain() != keywardv1.ErrorDomain {
			continue
		}
		if v, ok := keywardv1.ErrorReason_value[info.GetReason()]; ok {
			return keywardv1.ErrorReason(v), info.GetMetadata()
		}
	}
	return keywardv1.ErrorReason_ERROR_REASON_UNSPECIFIED, nil
}

// newError builds the Error for a code, reason and message.
func newError(op string, c codes.Code, r keywardv1.ErrorReason, msg string) *Error {
	sentinel, ok := reasonErrs[r]
	if !ok {
		r = keywardv1.ErrorReason_ERROR_REASON_UNSPECIFIED
		sentinel = codeErr(c)
	}
	return &Error{Op: op, Code: c, Reason: r, Message: msg, sentinel: sentinel}
}

// fromStatus converts a gRPC call error into an *Error.
func fromStatus(op string, err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		// Not a status: gRPC always returns one, so this is the client's own.
		e := newError(op, codes.Unknown, 0, err.Error())
		e.cause = err
		return e
	}
	r, md := reasonOf(st)
	e := newError(op, st.Code(), r, st.Message())
	e.st, e.metadata = st, md
	switch st.Code() {
	case codes.DeadlineExceeded:
		e.cause = context.DeadlineExceeded
	case codes.Canceled:
		e.cause = context.Canceled
	}
	return e
}

// fromItem converts a batch item's error.
func fromItem(op string, ie *keywardv1.ItemError) error {
	return newError(op, codes.Code(ie.GetCode()), ie.GetReason(), ie.GetMessage())
}
