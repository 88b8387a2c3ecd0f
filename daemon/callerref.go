package daemon

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"unicode/utf8"

	"github.com/keyward/keyward/audit"
)

// clipCallerRef makes a caller's reference fit an audit record: one over
// audit.MaxCallerRef bytes (which the log would refuse, leaving the call
// unrecorded) keeps its start, cut at a character boundary, followed by its
// length and the start of its SHA-256, so that records of the same
// oversized reference still match.
func clipCallerRef(ref string) string {
	if len(ref) <= audit.MaxCallerRef {
		return ref
	}
	sum := sha256.Sum256([]byte(ref))
	tail := "...[" + strconv.Itoa(len(ref)) + " bytes, sha256:" + hex.EncodeToString(sum[:8]) + "]"
	n := audit.MaxCallerRef - len(tail)
	for n > 0 && !utf8.RuneStart(ref[n]) {
		n--
	}
	return ref[:n] + tail
}
