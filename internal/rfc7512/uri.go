// Package rfc7512 parses the subset of RFC 7512 PKCS#11 URIs keyward
// uses. It is pure Go (no cgo), so that the configuration's checks run in
// the client-only keyward command; package hsm uses it to select tokens
// and objects.
package rfc7512

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
)

// ErrInvalid: the URI is not one keyward accepts. Its text is the pkcs11
// backend's configuration error (hsm.ErrConfig), which wraps it.
var ErrInvalid = errors.New("invalid pkcs11 backend configuration")

var errPINValue = fmt.Errorf("uri carries pin-value: PINs come from a 0600 file or a systemd credential, never from config text: %w", ErrInvalid)

// URI is the subset of an RFC 7512 PKCS#11 URI keyward uses: token
// selection (token, manufacturer, serial, model, slot-id) and object
// selection (object = label, id, type) for adoption.
type URI struct {
	Token, Manufacturer, Serial, Model string
	SlotID                             *uint
	Object                             string // CKA_LABEL
	ID                                 []byte // CKA_ID
	Type                               string // secret-key, private-key, public-key, data, cert
}

// Parse parses s strictly: an unknown path attribute, a duplicate
// attribute, a pin-value query (PINs never live in config text) or bad
// percent-encoding is an error.
func Parse(s string) (URI, error) {
	var u URI
	if strings.Contains(s, "pin-value") { // first, and never echoed: the text may hold a PIN
		return u, errPINValue
	}
	rest, ok := strings.CutPrefix(s, "pkcs11:")
	if !ok {
		return u, fmt.Errorf("uri: must start with \"pkcs11:\": %w", ErrInvalid)
	}
	path, query, _ := strings.Cut(rest, "?")
	seen := map[string]bool{}
	if path != "" {
		for _, attr := range strings.Split(path, ";") {
			k, v, ok := strings.Cut(attr, "=")
			if !ok || k == "" {
				return u, fmt.Errorf("uri attribute %q: want name=value: %w", attr, ErrInvalid)
			}
			if seen[k] {
				return u, fmt.Errorf("uri attribute %q given twice: %w", k, ErrInvalid)
			}
			seen[k] = true
			val, err := url.PathUnescape(v)
			if err != nil {
				return u, fmt.Errorf("uri attribute %q: %v: %w", k, err, ErrInvalid)
			}
			switch k {
			case "token":
				u.Token = val
			case "manufacturer":
				u.Manufacturer = val
			case "serial":
				u.Serial = val
			case "model":
				u.Model = val
			case "object":
				u.Object = val
			case "id":
				u.ID = []byte(val)
			case "type":
				switch val {
				case "secret-key", "private-key", "public-key", "data", "cert":
				default:
					return u, fmt.Errorf("uri type %q: %w", val, ErrInvalid)
				}
				u.Type = val
			case "slot-id":
				n, err := strconv.ParseUint(val, 10, 32)
				if err != nil {
					return u, fmt.Errorf("uri slot-id %q: %w", val, ErrInvalid)
				}
				id := uint(n)
				u.SlotID = &id
			case "library-manufacturer", "library-description", "library-version", "slot-manufacturer", "slot-description":
				// Accepted and ignored: they select the module, which the config names directly.
			default:
				return u, fmt.Errorf("uri attribute %q is not supported: %w", k, ErrInvalid)
			}
		}
	}
	if query != "" {
		for _, attr := range strings.Split(query, "&") {
			k, _, _ := strings.Cut(attr, "=")
			switch k {
			case "pin-value":
				return u, errPINValue
			case "pin-source", "module-name", "module-path":
				// Ignored: the PIN file and module are configured separately.
			default:
				return u, fmt.Errorf("uri query attribute %q is not supported: %w", k, ErrInvalid)
			}
		}
	}
	return u, nil
}

// MatchesToken reports whether a token's identity fits the URI's token attributes.
func (u URI) MatchesToken(label, manufacturer, serial, model string) bool {
	return (u.Token == "" || u.Token == label) &&
		(u.Manufacturer == "" || u.Manufacturer == manufacturer) &&
		(u.Serial == "" || u.Serial == serial) &&
		(u.Model == "" || u.Model == model)
}
