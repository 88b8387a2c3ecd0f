package credstore

import (
	"fmt"
	"strings"

	"github.com/keyward/keyward/keys"
)

// MaxID bounds a credential id. systemd allows up to NAME_MAX; keyward's ids
// are file names in the store and appear in logs and audit records.
const MaxID = 128

// MaxUnit is systemd's UNIT_NAME_MAX.
const MaxUnit = 255

// Context is the wrapping context of a credential: a blob is bound to the
// unit directory and id it is stored under, with keys of the namespace
// that keywardd's main API refuses in a caller's context
// (keys.ReservedContextPrefix), so that no caller of Unwrap can open a
// stored credential nor Wrap make one.
func Context(unit, id string) map[string]string {
	return map[string]string{
		keys.ReservedContextPrefix + "purpose":    "systemd-credential",
		keys.ReservedContextPrefix + "unit":       unit,
		keys.ReservedContextPrefix + "credential": id,
	}
}

// PolicyContext is the context a credential request carries to the policy
// (a rule's context condition on the credential operation): the unit and
// the credential id, {unit, credential}.
func PolicyContext(unit, id string) map[string]string {
	return map[string]string{"unit": unit, "credential": id}
}

// CheckUnit accepts a service or socket unit name as systemd spells them:
// at most 255 bytes of [A-Za-z0-9:_.\-@\\], a non-empty name before the
// suffix, at most one '@' (a template "app@.service" or an instance
// "app@blue.service").
func CheckUnit(u string) error {
	var base string
	switch {
	case strings.HasSuffix(u, ".service"):
		base = strings.TrimSuffix(u, ".service")
	case strings.HasSuffix(u, ".socket"):
		base = strings.TrimSuffix(u, ".socket")
	default:
		return fmt.Errorf("unit %q: not a .service or .socket unit: %w", clip(u), ErrName)
	}
	if len(u) > MaxUnit || base == "" || base[0] == '.' || base[0] == '@' || strings.Count(base, "@") > 1 {
		return fmt.Errorf("unit %q: %w", clip(u), ErrName)
	}
	for i := 0; i < len(base); i++ {
		if c := base[i]; !alnum(c) && !strings.ContainsRune(":_.-@\\", rune(c)) {
			return fmt.Errorf("unit %q: character %q not allowed: %w", clip(u), c, ErrName)
		}
	}
	return nil
}

// CheckID accepts a credential id: 1..128 bytes of [A-Za-z0-9_.-], not
// starting with '.', so that it is always a plain file name.
func CheckID(id string) error {
	if id == "" || len(id) > MaxID || id[0] == '.' {
		return fmt.Errorf("credential id %q: 1..%d characters, not starting with '.': %w", clip(id), MaxID, ErrName)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !alnum(c) && c != '_' && c != '.' && c != '-' {
			return fmt.Errorf("credential id %q: character %q not allowed (A-Z a-z 0-9 _ . -): %w", clip(id), c, ErrName)
		}
	}
	return nil
}

// Template returns the template of an instance unit ("app@blue.service" ->
// "app@.service"), or false for a unit that is not an instance.
func Template(unit string) (string, bool) {
	at := strings.IndexByte(unit, '@')
	dot := strings.LastIndexByte(unit, '.')
	if at < 0 || dot < at+2 {
		return "", false
	}
	return unit[:at+1] + unit[dot:], true
}

// Request is what systemd asks for: credential ID of unit Unit.
type Request struct {
	Unit string
	ID   string
}

// maxAddress bounds the address parsed: sun_path is 108 bytes.
const maxAddress = 108

// ParseAddress reads the abstract address systemd binds before it connects
// for LoadCredential=: "\x00<random hex>/unit/<unit>/<id>". name is the
// address as Go's unix package returns it, with '@' for the leading NUL.
// The address proves nothing about who bound it: the caller checks the
// peer's uid and cgroup.
func ParseAddress(name string) (Request, error) {
	if len(name) > maxAddress || !strings.HasPrefix(name, "@") {
		return Request{}, fmt.Errorf("%q: %w", clip(name), ErrAddress)
	}
	f := strings.Split(name[1:], "/")
	if len(f) != 4 || f[1] != "unit" || !randomPart(f[0]) {
		return Request{}, fmt.Errorf("%q: want @<hex>/unit/<unit>/<id>: %w", clip(name), ErrAddress)
	}
	r := Request{Unit: f[2], ID: f[3]}
	if err := CheckUnit(r.Unit); err != nil {
		return Request{}, fmt.Errorf("%w: %w", err, ErrAddress)
	}
	if _, isTemplate := templateName(r.Unit); isTemplate {
		return Request{}, fmt.Errorf("%q: a template unit never runs: %w", clip(name), ErrAddress)
	}
	if err := CheckID(r.ID); err != nil {
		return Request{}, fmt.Errorf("%w: %w", err, ErrAddress)
	}
	return r, nil
}

// randomPart is systemd's random 64-bit number in lower-case hex, not
// zero-padded: 1..16 digits.
func randomPart(s string) bool {
	if s == "" || len(s) > 16 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// templateName reports whether unit is a template ("app@.service").
func templateName(unit string) (string, bool) {
	at := strings.IndexByte(unit, '@')
	dot := strings.LastIndexByte(unit, '.')
	return unit, at >= 0 && dot == at+1
}

func alnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// clip bounds untrusted text quoted in an error.
func clip(s string) string {
	if len(s) > 300 {
		return s[:300] + "..."
	}
	return s
}
