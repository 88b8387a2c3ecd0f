package client

import (
	"context"
	"errors"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	keywardv1 "github.com/keyward/keyward/api/keyward/v1"
)

var sentinels = []error{
	ErrInvalidArgument, ErrInvalidName, ErrMalformed, ErrDecrypt, ErrWrongKeyType, ErrNotFound,
	ErrKeyExists, ErrVersionDisabled, ErrVersionDestroyed, ErrBelowMinVersion, ErrNoEnabledVersion,
	ErrUnsupported, ErrWeakKey, ErrIntegrity, ErrPermissionDenied, ErrUnavailable, ErrResourceExhausted, ErrQuotaExceeded,
	ErrInternal,
}

// statusErr builds the error a daemon sends: a code, a message and a
// keyward ErrorInfo.
func statusErr(t *testing.T, c codes.Code, msg, domain, reason string) error {
	t.Helper()
	st, err := status.New(c, msg).WithDetails(&errdetails.ErrorInfo{
		Domain: domain, Reason: reason, Metadata: map[string]string{"key": "payments/db"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return st.Err()
}

// checkOnly checks that err wraps want and no other sentinel.
func checkOnly(t *testing.T, err, want error) {
	t.Helper()
	for _, s := range sentinels {
		if got := errors.Is(err, s); got != (s == want) {
			t.Errorf("errors.Is(%v, %v) = %v, want %v", err, s, got, s == want)
		}
	}
}

func TestErrorEveryReason(t *testing.T) {
	want := map[keywardv1.ErrorReason]error{
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
	// A reason added to the API without a sentinel fails here.
	for v, name := range keywardv1.ErrorReason_name {
		if r := keywardv1.ErrorReason(v); r != keywardv1.ErrorReason_ERROR_REASON_UNSPECIFIED && want[r] == nil {
			t.Errorf("reason %s has no expected sentinel in this test", name)
		}
	}
	for r, sentinel := range want {
		t.Run(r.String(), func(t *testing.T) {
			err := fromStatus("wrap payments/db", statusErr(t, r.Code(), "the daemon's message", keywardv1.ErrorDomain, r.String()))
			checkOnly(t, err, sentinel)
			if got := Reason(err); got != r {
				t.Errorf("Reason = %v, want %v", got, r)
			}
			if got := status.Code(err); got != r.Code() {
				t.Errorf("status.Code = %v, want %v", got, r.Code())
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("%T is not an *Error", err)
			}
			if e.Op != "wrap payments/db" || e.Code != r.Code() || e.Message != "the daemon's message" || e.Metadata()["key"] != "payments/db" {
				t.Errorf("error fields %+v", e)
			}
			wantText := "wrap payments/db: the daemon's message (" + codeName(r.Code()) + ", reason " + r.String() + ")"
			if err.Error() != wantText {
				t.Errorf("Error() = %q, want %q", err.Error(), wantText)
			}
			// A batch item carries the same code and reason.
			item := fromItem("batch wrap item 0", &keywardv1.ItemError{Code: int32(r.Code()), Reason: r, Message: "m"})
			checkOnly(t, item, sentinel)
			if Reason(item) != r {
				t.Errorf("item Reason = %v, want %v", Reason(item), r)
			}
		})
	}
}

func codeName(c codes.Code) string {
	return map[codes.Code]string{
		codes.InvalidArgument: "INVALID_ARGUMENT", codes.NotFound: "NOT_FOUND", codes.PermissionDenied: "PERMISSION_DENIED",
		codes.FailedPrecondition: "FAILED_PRECONDITION", codes.Unavailable: "UNAVAILABLE", codes.ResourceExhausted: "RESOURCE_EXHAUSTED",
	}[c]
}

// TestErrorFallback: without a keyward reason (none, another domain, a
// reason this client does not know) the gRPC code decides.
func TestErrorFallback(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want error
	}{
		{name: "invalid argument", err: status.Error(codes.InvalidArgument, "m"), want: ErrInvalidArgument},
		{name: "out of range", err: status.Error(codes.OutOfRange, "m"), want: ErrInvalidArgument},
		{name: "not found", err: status.Error(codes.NotFound, "m"), want: ErrNotFound},
		{name: "already exists", err: status.Error(codes.AlreadyExists, "m"), want: ErrKeyExists},
		{name: "permission denied", err: status.Error(codes.PermissionDenied, "not allowed"), want: ErrPermissionDenied},
		{name: "unauthenticated", err: status.Error(codes.Unauthenticated, "m"), want: ErrPermissionDenied},
		{name: "unavailable", err: status.Error(codes.Unavailable, "m"), want: ErrUnavailable},
		{name: "deadline", err: status.Error(codes.DeadlineExceeded, "m"), want: ErrUnavailable},
		{name: "canceled", err: status.Error(codes.Canceled, "m"), want: ErrUnavailable},
		{name: "resource exhausted", err: status.Error(codes.ResourceExhausted, "m"), want: ErrResourceExhausted},
		{name: "unimplemented", err: status.Error(codes.Unimplemented, "m"), want: ErrUnsupported},
		{name: "failed precondition without reason", err: status.Error(codes.FailedPrecondition, "m"), want: ErrInternal},
		{name: "internal", err: status.Error(codes.Internal, "m"), want: ErrInternal},
		{name: "unknown", err: status.Error(codes.Unknown, "m"), want: ErrInternal},
		{name: "data loss", err: status.Error(codes.DataLoss, "m"), want: ErrInternal},
		{name: "not a status", err: errors.New("boom"), want: ErrInternal},
		{name: "other domain", err: statusErr(t, codes.NotFound, "m", "example.com", "KEY_EXISTS"), want: ErrNotFound},
		{name: "unknown reason", err: statusErr(t, codes.FailedPrecondition, "m", keywardv1.ErrorDomain, "NEW_REASON"), want: ErrInternal},
		{name: "unknown reason, known code", err: statusErr(t, codes.Unavailable, "m", keywardv1.ErrorDomain, "NEW_REASON"), want: ErrUnavailable},
		// The reason is the contract; a code that does not match it does not override it.
		{name: "reason wins over code", err: statusErr(t, codes.InvalidArgument, "m", keywardv1.ErrorDomain, "KEY_NOT_FOUND"), want: ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := fromStatus("op", tt.err)
			checkOnly(t, err, tt.want)
			if tt.name != "reason wins over code" && Reason(err) != keywardv1.ErrorReason_ERROR_REASON_UNSPECIFIED {
				t.Errorf("Reason = %v, want unspecified", Reason(err))
			}
			if strings.Contains(err.Error(), "reason") {
				if tt.name != "reason wins over code" {
					t.Errorf("Error() %q names a reason", err.Error())
				}
			}
		})
	}
	if fromStatus("op", nil) != nil {
		t.Error("fromStatus(nil) is not nil")
	}
}

func TestErrorContext(t *testing.T) {
	err := fromStatus("wrap k", status.Error(codes.DeadlineExceeded, "context deadline exceeded"))
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("%v: want ErrUnavailable and context.DeadlineExceeded", err)
	}
	err = fromStatus("wrap k", status.Error(codes.Canceled, "context canceled"))
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.Canceled) {
		t.Errorf("%v: want ErrUnavailable and context.Canceled", err)
	}
}

func TestReasonOfOtherErrors(t *testing.T) {
	if r := Reason(errors.New("x")); r != keywardv1.ErrorReason_ERROR_REASON_UNSPECIFIED {
		t.Errorf("Reason(plain error) = %v", r)
	}
	if r := Reason(nil); r != keywardv1.ErrorReason_ERROR_REASON_UNSPECIFIED {
		t.Errorf("Reason(nil) = %v", r)
	}
	// A raw status error (not converted by a Client) is read too.
	raw := statusErr(t, codes.FailedPrecondition, "m", keywardv1.ErrorDomain, "VERSION_DISABLED")
	if r := Reason(raw); r != keywardv1.ErrorReason_VERSION_DISABLED {
		t.Errorf("Reason(raw status) = %v", r)
	}
}
