package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"github.com/keyward/keyward/internal/ctxflag"
	"io"
	"strconv"
	"strings"

	"github.com/keyward/keyward/envelope"
	"github.com/keyward/keyward/keys"
)

// Input limits. One more byte than the limit is read, to tell "exactly at
// the limit" from "over it" without reading an unbounded stream.
const (
	maxMessage  = keys.MaxPlaintext // plaintext to wrap, message to sign or MAC
	maxBlob     = keys.MaxBlob      // a raw blob (--binary)
	maxBlobText = (maxBlob+2)/3*4 + 4096
)

// readInput reads all of r, at most limit bytes; what names the input in
// errors ("plaintext"). More than limit bytes is a usage error: the input
// is not one the command takes.
func readInput(cmd string, r io.Reader, limit int, what string) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, int64(limit)+1))
	if err != nil {
		clear(b)
		return nil, fmt.Errorf("%s: read the %s from stdin: %w", cmd, what, err)
	}
	if len(b) > limit {
		clear(b)
		return nil, usagef(cmd, "the %s on stdin is over %s, the most one call takes", what, size(limit))
	}
	return b, nil
}

func size(n int) string {
	if n%1024 == 0 {
		return strconv.Itoa(n/1024) + " KiB"
	}
	return strconv.Itoa(n) + " bytes"
}

// readBlob reads a blob from stdin: one base64 line (surrounding
// whitespace ignored), or raw bytes with binary.
func readBlob(cmd string, r io.Reader, binary bool) ([]byte, error) {
	if binary {
		b, err := readInput(cmd, r, maxBlob, "blob")
		if err == nil && len(b) == 0 {
			return nil, usagef(cmd, "no blob on stdin")
		}
		return b, err
	}
	text, err := readInput(cmd, r, maxBlobText, "blob text")
	if err != nil {
		return nil, err
	}
	if strings.TrimSpace(string(text)) == "" {
		return nil, usagef(cmd, "no blob on stdin")
	}
	blob, err := envelope.DecodeText(string(text))
	if err != nil {
		return nil, fmt.Errorf("%s: the blob on stdin: %w (raw blobs need --binary)", cmd, err)
	}
	return blob, nil
}

// writeBlob writes a blob as one base64 line, or raw with binary.
func writeBlob(w io.Writer, blob []byte, binary bool) error {
	if binary {
		_, err := w.Write(blob)
		return err
	}
	_, err := io.WriteString(w, envelope.EncodeText(blob)+"\n")
	return err
}

// writeJSON writes v as indented JSON.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// decodeB64 decodes a flag's standard base64 value (signatures, MACs).
func decodeB64(cmd, flag, s string) ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil || len(b) == 0 {
		return nil, usagef(cmd, "%s is not standard base64", flag)
	}
	return b, nil
}

// MAC tokens: what `keyward mac` prints and `keyward verify-mac --mac`
// takes, "kw-mac:v<N>:<base64>". The version travels with the MAC, so one
// stored string is enough, and verify-mac checks that version only (one
// device operation). Base64 has no ':', so the token is unambiguous.
const macTokenPrefix = "kw-mac:"

func formatMacToken(version uint32, mac []byte) string {
	return fmt.Sprintf("%sv%d:%s", macTokenPrefix, version, base64.StdEncoding.EncodeToString(mac))
}

// parseMac reads a MAC token, or bare base64 (version 0: any version).
func parseMac(s string) (version uint32, mac []byte, err error) {
	s = strings.TrimSpace(s)
	rest, ok := strings.CutPrefix(s, macTokenPrefix)
	if !ok {
		mac, err := base64.StdEncoding.DecodeString(s)
		if err != nil || len(mac) == 0 {
			return 0, nil, fmt.Errorf("want a kw-mac:vN:BASE64 token or standard base64")
		}
		return 0, mac, nil
	}
	vs, b64, ok := strings.Cut(rest, ":")
	n, err := strconv.ParseUint(strings.TrimPrefix(vs, "v"), 10, 32)
	if !ok || !strings.HasPrefix(vs, "v") || err != nil || n == 0 {
		return 0, nil, fmt.Errorf("bad version in the kw-mac token (want kw-mac:vN:BASE64, N >= 1)")
	}
	mac, err = base64.StdEncoding.DecodeString(b64)
	if err != nil || len(mac) == 0 {
		return 0, nil, fmt.Errorf("the kw-mac token's MAC is not standard base64")
	}
	return uint32(n), mac, nil
}

// contextFlag collects repeated --context k=v flags.
type contextFlag struct{ ctxflag.Flag }

// pairs returns the context for a call (nil when none was given).
func (f *contextFlag) pairs(cmd string) (map[string]string, error) {
	if err := keys.CheckContext(f.Pairs); err != nil {
		return nil, usagef(cmd, "--context: %v", err)
	}
	return f.Pairs, nil
}
