package rfc7512

import (
	"errors"
	"strings"
	"testing"
)

// TestParse: the full table is hsm's TestParseURI (through hsm.ParseURI);
// here, that errors wrap ErrInvalid, never quote a PIN, and that token
// matching honours each attribute.
func TestParse(t *testing.T) {
	for _, in := range []string{"token=a", "pkcs11:token=a?pin-value=s3cr3t", "pkcs11:tokn=a", "pkcs11:slot-id=x"} {
		_, err := Parse(in)
		if !errors.Is(err, ErrInvalid) || strings.Contains(err.Error(), "s3cr3t") {
			t.Errorf("Parse(%q): %v", in, err)
		}
	}
	u, err := Parse("pkcs11:token=k;serial=42")
	if err != nil {
		t.Fatal(err)
	}
	if !u.MatchesToken("k", "m", "42", "x") || u.MatchesToken("k", "m", "43", "x") || u.MatchesToken("j", "m", "42", "x") {
		t.Error("MatchesToken does not honour token and serial")
	}
}
