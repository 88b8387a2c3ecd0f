package daemon

import (
	"context"
	"errors"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/keys"
)

// Sentinels of the daemon's own refusals.
var (
	ErrDenied       = errors.New("not allowed")
	ErrTooMany      = errors.New("too many concurrent requests")
	ErrShuttingDown = errors.New("daemon is shutting down")
)

// reasonOf picks the wire reason for an error. Order matters where an
// error matches two sentinels (a blob with a bad name is malformed first).
func reasonOf(err error) pb.ErrorReason {
	switch {
	case errors.Is(err, ErrDenied):
		return pb.ErrorReason_PERMISSION_DENIED
	case errors.Is(err, ErrTooMany):
		return pb.ErrorReason_TOO_MANY_REQUESTS
	case errors.Is(err, ErrRateLimited):
		return pb.ErrorReason_RATE_LIMITED
	case errors.Is(err, ErrAuditUnavailable):
		return pb.ErrorReason_AUDIT_UNAVAILABLE
	case errors.Is(err, ErrQuota):
		return pb.ErrorReason_QUOTA_EXCEEDED
	case errors.Is(err, ErrShuttingDown):
		return pb.ErrorReason_SHUTTING_DOWN
	case errors.Is(err, keys.ErrMalformed):
		return pb.ErrorReason_MALFORMED_CIPHERTEXT
	case errors.Is(err, keys.ErrInvalidName):
		return pb.ErrorReason_INVALID_KEY_NAME
	case errors.Is(err, keys.ErrInvalidArgument):
		return pb.ErrorReason_INVALID_REQUEST
	case errors.Is(err, keys.ErrDecrypt):
		return pb.ErrorReason_DECRYPTION_FAILED
	case errors.Is(err, keys.ErrWrongKeyType):
		return pb.ErrorReason_WRONG_KEY_TYPE
	case errors.Is(err, keys.ErrKeyNotFound):
		return pb.ErrorReason_KEY_NOT_FOUND
	case errors.Is(err, keys.ErrKeyExists):
		return pb.ErrorReason_KEY_EXISTS
	case errors.Is(err, keys.ErrVersionDisabled):
		return pb.ErrorReason_VERSION_DISABLED
	case errors.Is(err, keys.ErrVersionDestroyed):
		return pb.ErrorReason_VERSION_DESTROYED
	case errors.Is(err, keys.ErrBelowMinVersion):
		return pb.ErrorReason_BELOW_MIN_VERSION
	case errors.Is(err, keys.ErrNoEnabledVersion):
		return pb.ErrorReason_NO_ENABLED_VERSION
	case errors.Is(err, keys.ErrUnsupported):
		return pb.ErrorReason_UNSUPPORTED
	case errors.Is(err, keys.ErrWeakKey):
		return pb.ErrorReason_WEAK_KEY
	case errors.Is(err, keys.ErrIntegrity):
		return pb.ErrorReason_INTEGRITY
	}
	// ErrUnavailable, deadlines, and anything unexpected: the caller may
	// retry; the log has the detail.
	return pb.ErrorReason_BACKEND_UNAVAILABLE
}

// messages are the only texts sent to callers: fixed per reason, so no
// internal detail (paths, PKCS#11 codes, key material) crosses the socket.
var messages = map[pb.ErrorReason]string{
	pb.ErrorReason_INVALID_REQUEST:      "invalid request",
	pb.ErrorReason_INVALID_KEY_NAME:     "invalid key name: segments of [a-z0-9][a-z0-9._-]* joined by '/', at most 128 bytes",
	pb.ErrorReason_MALFORMED_CIPHERTEXT: "malformed ciphertext: not a keyward blob",
	pb.ErrorReason_DECRYPTION_FAILED:    "decryption failed: wrong context or tampered data",
	pb.ErrorReason_WRONG_KEY_TYPE:       "operation does not fit the key type",
	pb.ErrorReason_KEY_NOT_FOUND:        "key or version not found",
	pb.ErrorReason_KEY_EXISTS:           "key already exists",
	pb.ErrorReason_VERSION_DISABLED:     "key version is disabled",
	pb.ErrorReason_VERSION_DESTROYED:    "key version is destroyed",
	pb.ErrorReason_BELOW_MIN_VERSION:    "key version is below the minimum decrypt version",
	pb.ErrorReason_NO_ENABLED_VERSION:   "key has no enabled version",
	pb.ErrorReason_UNSUPPORTED:          "unsupported by this backend or key type",
	pb.ErrorReason_WEAK_KEY:             "key object is not protected by the device",
	pb.ErrorReason_INTEGRITY:            "keyring integrity check failed",
	pb.ErrorReason_PERMISSION_DENIED:    "not allowed",
	pb.ErrorReason_BACKEND_UNAVAILABLE:  "key backend unavailable; retry later",
	pb.ErrorReason_RATE_LIMITED:         "rate limited: too many denied requests or failed verifications; retry in a minute",
	pb.ErrorReason_TOO_MANY_REQUESTS:    "too many concurrent requests",
	pb.ErrorReason_SHUTTING_DOWN:        "daemon is shutting down",
	pb.ErrorReason_AUDIT_UNAVAILABLE:    "the audit log cannot be written: operations are refused until it can",
	pb.ErrorReason_QUOTA_EXCEEDED:       "quota reached",
}

// statusFor converts err to the wire status; detail is a safe, caller-
// specific addition for invalid requests (which limit was hit), never
// anything read from the device.
func statusFor(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) {
		return status.Error(codes.Canceled, "canceled")
	}
	r := reasonOf(err)
	msg := messages[r]
	var d *detailError
	if errors.As(err, &d) {
		msg += ": " + d.detail
	}
	st := status.New(r.Code(), msg)
	if withInfo, err := st.WithDetails(&errdetails.ErrorInfo{Domain: pb.ErrorDomain, Reason: r.String()}); err == nil {
		st = withInfo
	}
	return st.Err()
}

// itemError is a batch item's failure, shaped like statusFor's.
func itemError(err error) *pb.ItemError {
	st, _ := status.FromError(statusFor(err))
	return &pb.ItemError{Code: int32(st.Code()), Reason: reasonOf(err), Message: st.Message()}
}

// detailError adds a caller-safe detail (a field name and a limit) to an
// invalid request.
type detailError struct {
	detail string
	err    error
}

func (e *detailError) Error() string { return e.detail + ": " + e.err.Error() }
func (e *detailError) Unwrap() error { return e.err }

func invalid(format string, a ...any) error {
	return &detailError{detail: sprintf(format, a...), err: keys.ErrInvalidArgument}
}

// errProbeStuck: the previous probe has not returned yet.
var errProbeStuck = errors.New("the previous health probe has not returned")

// ErrAuditUnavailable: the audit log cannot be written; keywardd refuses
// operations rather than perform them unrecorded (fail closed).
var ErrAuditUnavailable = errors.New("audit log unavailable")

// ErrQuota: a stored quota is reached (a requester's break-glass records,
// or the grant store's room for new requests); the detail says which.
var ErrQuota = errors.New("quota reached")

// ErrRateLimited: a caller went over an abuse limit.
var ErrRateLimited = errors.New("rate limited")

// errReceiveTimeout cuts a request whose message did not arrive within
// limits.receive_timeout.
var errReceiveTimeout = errors.New("request not received within limits.receive_timeout")
