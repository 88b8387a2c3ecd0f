package hsm

import "github.com/keyward/keyward/internal/rfc7512"

// URI is the subset of an RFC 7512 PKCS#11 URI keyward uses: token
// selection (token, manufacturer, serial, model, slot-id) and object
// selection (object = label, id, type) for adoption.
type URI = rfc7512.URI

// ParseURI parses s strictly: an unknown path attribute, a duplicate
// attribute, a pin-value query (PINs never live in config text) or bad
// percent-encoding is an error wrapping ErrConfig.
func ParseURI(s string) (URI, error) {
	u, err := rfc7512.Parse(s)
	if err != nil {
		return u, uriError{err}
	}
	return u, nil
}

// uriError is a URI's error, with the same text, that is also ErrConfig.
type uriError struct{ error }

func (e uriError) Unwrap() []error { return []error{e.error, ErrConfig} }
