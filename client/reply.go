package client

import (
	"google.golang.org/grpc/codes"

	keywardv1 "github.com/keyward/keyward/api/keyward/v1"
)

// A reply the daemon cannot have meant (a wrap without a blob, a signature
// of no bytes) is refused with ErrInternal rather than handed on as an
// empty result that a caller would store or print as if it were real. Only
// what no real keywardd can send is refused: an empty plaintext from
// Unwrap is a real answer (an empty plaintext can be wrapped).

// replied returns resp, or ErrInternal naming what is missing when
// missing(resp) says something is.
func replied[R any](op string, resp R, err error, missing func(R) string) (R, error) {
	var zero R
	if err != nil {
		return zero, err
	}
	if what := missing(resp); what != "" {
		return zero, newError(op, codes.Internal, 0, "the daemon's reply has no "+what+"; it cannot be a real answer, so nothing of it was used")
	}
	return resp, nil
}

func noCiphertext(r interface{ GetCiphertext() []byte }) string {
	if len(r.GetCiphertext()) == 0 {
		return "ciphertext"
	}
	return ""
}

func noWrapCiphertext(r *keywardv1.WrapResponse) string     { return noCiphertext(r) }
func noRewrapCiphertext(r *keywardv1.RewrapResponse) string { return noCiphertext(r) }

func noSignature(r *keywardv1.SignResponse) string {
	if len(r.GetSignature()) == 0 {
		return "signature"
	}
	return ""
}

func noMac(r *keywardv1.MacResponse) string {
	if len(r.GetMac()) == 0 {
		return "MAC"
	}
	return ""
}

func noPublicKey(r *keywardv1.GetPublicKeyResponse) string {
	if len(r.GetPublicKeyDer()) == 0 && r.GetPublicKeyPem() == "" {
		return "public key"
	}
	return ""
}

// noDataKey: a data key is at least 1 byte (length 0 means 32), and comes
// in clear unless withoutPlaintext asked otherwise.
func noDataKey(withoutPlaintext bool) func(*keywardv1.GenerateDataKeyResponse) string {
	return func(r *keywardv1.GenerateDataKeyResponse) string {
		switch {
		case len(r.GetCiphertext()) == 0:
			return "wrapped data key"
		case !withoutPlaintext && len(r.GetPlaintext()) == 0:
			return "data key"
		}
		return ""
	}
}
