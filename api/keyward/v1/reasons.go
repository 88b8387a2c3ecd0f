package keywardv1

import "google.golang.org/grpc/codes"

// ErrorDomain is the domain of the google.rpc.ErrorInfo every keyward error
// carries; its Reason is an ErrorReason name.
const ErrorDomain = "keyward.dev"

// Code is the gRPC code that goes with a reason: the closed set the API
// promises.
func (r ErrorReason) Code() codes.Code {
	switch r {
	case ErrorReason_INVALID_REQUEST, ErrorReason_INVALID_KEY_NAME, ErrorReason_MALFORMED_CIPHERTEXT, ErrorReason_DECRYPTION_FAILED:
		return codes.InvalidArgument
	case ErrorReason_KEY_NOT_FOUND:
		return codes.NotFound
	case ErrorReason_PERMISSION_DENIED:
		return codes.PermissionDenied
	case ErrorReason_BACKEND_UNAVAILABLE, ErrorReason_SHUTTING_DOWN, ErrorReason_AUDIT_UNAVAILABLE:
		return codes.Unavailable
	case ErrorReason_RATE_LIMITED, ErrorReason_TOO_MANY_REQUESTS, ErrorReason_QUOTA_EXCEEDED:
		return codes.ResourceExhausted
	default:
		return codes.FailedPrecondition
	}
}
