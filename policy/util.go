package policy

import (
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// maxQuoted bounds how much of an untrusted string goes into an error or a
// reason.
const maxQuoted = 160

// quote renders s for a message: Go-quoted (so control bytes cannot forge log
// lines) and cut to maxQuoted bytes.
func quote(s string) string {
	if len(s) > maxQuoted {
		return strconv.Quote(s[:maxQuoted]) + "..."
	}
	return strconv.Quote(s)
}

// plain renders a config-supplied token bare when that is unambiguous in a
// message, quoted otherwise.
func plain(s string) string {
	if s == "" || len(s) > maxQuoted {
		return quote(s)
	}
	for _, r := range s {
		if r > unicode.MaxASCII || !unicode.IsPrint(r) || strings.ContainsRune(" ,=[]\"'", r) {
			return quote(s)
		}
	}
	return s
}

// printableName reports whether a config-supplied name is fit for logs: valid
// UTF-8 without control characters.
func printableName(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}
