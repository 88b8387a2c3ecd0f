package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// MaxLine bounds one record's line, newline included. Append refuses a
// larger record; Verify reports a longer line as broken.
const MaxLine = 64 << 10

// Record is one audited operation.
type Record struct {
	// Seq, Prev and Hash are the chain. Append sets them (whatever the
	// caller put there is ignored).
	Seq  uint64
	Prev [32]byte
	Hash [32]byte

	// Time is when the operation ended; Append uses its own clock when it
	// is zero. It is written in UTC.
	Time time.Time
	// Peer is the caller as the kernel identified it.
	Peer Peer
	// Op is the operation ("unwrap", "key.create"...).
	Op string
	// Key and Version name the key used, when there is one (Version 0:
	// none or unknown).
	Key     string
	Version uint32
	// ContextDigest is a digest of the request's context, never the
	// values themselves: with ContextKeyed, (*Log).ContextDigest of its
	// canonical encoding, written "hmac-sha256:<hex>"; without, a plain
	// SHA-256 (records written before keyed digests), written as hex
	// alone. Zero: the operation took no context.
	ContextDigest [32]byte
	ContextKeyed  bool
	// Result is the result code: "OK", "PERMISSION_DENIED",
	// "DECRYPTION_FAILED"...
	Result string
	// Reason is an optional short internal reason, e.g. the policy's deny
	// reason. Omitted from the line when empty. It must hold no secret.
	Reason string
	// CallerRef is an identifier the caller sent with its request to tie
	// the record to its own logs (the Kubernetes KMS request uid). It is the
	// caller's text, untrusted, at most MaxCallerRef bytes; omitted when
	// empty.
	CallerRef string
	// Grant is the id of the break-glass grant that allowed the operation
	// (its use), or that the record is about (its request, approval,
	// denial, revocation or expiry); omitted when empty.
	Grant string
	// Duration is how long the operation took; written in whole
	// microseconds.
	Duration time.Duration
	// RequestID ties the record to the daemon's log lines.
	RequestID string
	// Sig is a checkpoint record's signature (Op == OpCheckpoint) over
	// CheckpointMessage(Seq, Prev); empty in every other record.
	Sig []byte
}

// Peer is the caller's kernel identity.
type Peer struct {
	UID  uint32 `json:"uid"`
	GID  uint32 `json:"gid"`
	PID  int32  `json:"pid"`
	Unit string `json:"unit"`
}

// wire is a record on disk. The field order is the file format: changing it
// changes every hash.
type wire struct {
	Seq           uint64 `json:"seq"`
	Time          string `json:"time"`
	Prev          string `json:"prev"`
	Peer          Peer   `json:"peer"`
	Op            string `json:"op"`
	Key           string `json:"key"`
	Version       uint32 `json:"version"`
	ContextDigest string `json:"context_digest"`
	Result        string `json:"result"`
	Reason        string `json:"reason,omitempty"`
	CallerRef     string `json:"caller_ref,omitempty"`
	Grant         string `json:"grant,omitempty"`
	DurationUS    int64  `json:"duration_us"`
	RequestID     string `json:"request_id"`
	Sig           []byte `json:"sig,omitempty"`
}

// body is the part of a record after prev, as encoding/json writes it.
// Callers encode it in their own goroutine (appendBody writes the same
// bytes without reflection), so the single writer only adds seq, time,
// prev and the hash.
type body struct {
	Peer          Peer   `json:"peer"`
	Op            string `json:"op"`
	Key           string `json:"key"`
	Version       uint32 `json:"version"`
	ContextDigest string `json:"context_digest"`
	Result        string `json:"result"`
	Reason        string `json:"reason,omitempty"`
	CallerRef     string `json:"caller_ref,omitempty"`
	Grant         string `json:"grant,omitempty"`
	DurationUS    int64  `json:"duration_us"`
	RequestID     string `json:"request_id"`
	Sig           []byte `json:"sig,omitempty"`
}

// MaxCallerRef bounds Record.CallerRef.
const MaxCallerRef = 256

// MaxGrant bounds Record.Grant (a break-glass grant id).
const MaxGrant = 64

// headroom is the most the writer adds to a body: seq, time, prev, hash.
const headroom = len(`{"seq":18446744073709551615,"time":"2006-01-02T15:04:05.999999999Z","prev":"`) + 64 + len(`",`) +
	len(`,"hash":"`) + 64 + len(`"}`) + 1

const hashSuffixLen = len(`,"hash":"`) + 64 + len(`"}`)

// prepared is a record ready for the writer: its time text, then its
// body's JSON, which starts with '{', in one buffer.
type prepared struct {
	buf  []byte
	tlen int // buf[:tlen] is the time, buf[tlen:] the body
}

func (p prepared) time() []byte { return p.buf[:p.tlen] }
func (p prepared) body() []byte { return p.buf[p.tlen:] }

// prepare checks r and encodes everything but the chain. The body is what
// encoding/json makes of a body value (the verifier checks exactly that),
// written without reflection: it is on every operation's path.
func prepare(r Record, now time.Time) (prepared, error) {
	if r.Op == "" || r.Result == "" {
		return prepared{}, fmt.Errorf("audit: record without op or result: %w", ErrInvalidRecord)
	}
	t := r.Time
	if t.IsZero() {
		t = now
	}
	t = t.UTC()
	if y := t.Year(); y < 1 || y > 9999 {
		return prepared{}, fmt.Errorf("audit: record time %v outside years 1..9999: %w", t, ErrInvalidRecord)
	}
	if len(r.Grant) > MaxGrant {
		return prepared{}, fmt.Errorf("audit: grant of %d bytes, at most %d: %w", len(r.Grant), MaxGrant, ErrInvalidRecord)
	}
	if len(r.CallerRef) > MaxCallerRef {
		return prepared{}, fmt.Errorf("audit: caller_ref of %d bytes, at most %d: %w", len(r.CallerRef), MaxCallerRef, ErrInvalidRecord)
	}
	n := len(r.Peer.Unit) + len(r.Op) + len(r.Key) + len(r.Result) + len(r.Reason) + len(r.CallerRef) + len(r.Grant) + len(r.RequestID) +
		base64.StdEncoding.EncodedLen(len(r.Sig))
	b := make([]byte, 0, len(time.RFC3339Nano)+bodyFixed+n+n/8)
	b = t.AppendFormat(b, time.RFC3339Nano)
	tlen := len(b)
	b = appendBody(b, r)
	if len(b)-tlen+headroom > MaxLine {
		return prepared{}, fmt.Errorf("audit: record of %d bytes, at most %d: %w", len(b)-tlen+headroom, MaxLine, ErrInvalidRecord)
	}
	return prepared{buf: b, tlen: tlen}, nil
}

// bodyFixed is the length of a body with empty strings and long numbers.
const bodyFixed = len(`{"peer":{"uid":4294967295,"gid":4294967295,"pid":-2147483648,"unit":""},"op":"","key":"","version":4294967295,`+
	`"context_digest":"`+ContextHMACPrefix) + 64 + len(`","result":"","reason":"","caller_ref":"","grant":"","duration_us":-9223372036854775808,"request_id":"","sig":""}`)

// appendBody appends the JSON of r's body: json.Marshal(body{...}) of r's
// fields, invalid UTF-8 in its strings replaced by U+FFFD first (the
// encoder would write "\ufffd", which does not read back as it was).
func appendBody(b []byte, r Record) []byte {
	b = append(b, `{"peer":{"uid":`...)
	b = strconv.AppendUint(b, uint64(r.Peer.UID), 10)
	b = append(b, `,"gid":`...)
	b = strconv.AppendUint(b, uint64(r.Peer.GID), 10)
	b = append(b, `,"pid":`...)
	b = strconv.AppendInt(b, int64(r.Peer.PID), 10)
	b = append(b, `,"unit":`...)
	b = appendString(b, r.Peer.Unit)
	b = append(b, `},"op":`...)
	b = appendString(b, r.Op)
	b = append(b, `,"key":`...)
	b = appendString(b, r.Key)
	b = append(b, `,"version":`...)
	b = strconv.AppendUint(b, uint64(r.Version), 10)
	b = append(b, `,"context_digest":"`...)
	if r.ContextKeyed {
		b = append(b, ContextHMACPrefix...)
	}
	b = hex.AppendEncode(b, r.ContextDigest[:])
	b = append(b, `","result":`...)
	b = appendString(b, r.Result)
	if r.Reason != "" {
		b = append(b, `,"reason":`...)
		b = appendString(b, r.Reason)
	}
	if r.CallerRef != "" {
		b = append(b, `,"caller_ref":`...)
		b = appendString(b, r.CallerRef)
	}
	if r.Grant != "" {
		b = append(b, `,"grant":`...)
		b = appendString(b, r.Grant)
	}
	b = append(b, `,"duration_us":`...)
	b = strconv.AppendInt(b, r.Duration.Microseconds(), 10)
	b = append(b, `,"request_id":`...)
	b = appendString(b, r.RequestID)
	if len(r.Sig) > 0 {
		b = append(b, `,"sig":"`...)
		b = base64.StdEncoding.AppendEncode(b, r.Sig)
		b = append(b, '"')
	}
	return append(b, '}')
}

// appendString appends s as encoding/json writes it. Printable ASCII that
// json leaves alone (the common case: key names, ops, results, ids) is
// copied; anything else goes through json.Marshal (after printable), so
// the output is json's by construction.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(printable(s)) // a string always encodes
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// printable is s as a record holds it: invalid UTF-8, DEL and the C1
// controls (U+0080-U+009F, which encoding/json leaves unescaped and some
// terminals obey) become U+FFFD. C0 controls stay: encoding/json escapes
// them.
func printable(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if !strings.ContainsFunc(s, isDelOrC1) {
		return s
	}
	return strings.Map(func(r rune) rune {
		if isDelOrC1(r) {
			return utf8.RuneError
		}
		return r
	}, s)
}

func isDelOrC1(r rune) bool { return r >= 0x7f && r < 0xa0 }

// appendLine appends p's line, with seq and prev, to dst and returns it with
// the record's hash. The canonical record is built in place, hashed, then
// its closing brace becomes the hash key.
func appendLine(dst []byte, seq uint64, prev [32]byte, p prepared) ([]byte, [32]byte) {
	start := len(dst)
	dst = append(dst, `{"seq":`...)
	dst = strconv.AppendUint(dst, seq, 10)
	dst = append(dst, `,"time":"`...)
	dst = append(dst, p.time()...)
	dst = append(dst, `","prev":"`...)
	dst = hex.AppendEncode(dst, prev[:])
	dst = append(dst, `",`...)
	dst = append(dst, p.body()[1:]...)
	h := chainHash(prev, dst[start:])
	dst = dst[:len(dst)-1]
	dst = append(dst, `,"hash":"`...)
	dst = hex.AppendEncode(dst, h[:])
	dst = append(dst, "\"}\n"...)
	return dst, h
}

// chainHash is SHA-256(prev || canonical).
func chainHash(prev [32]byte, canonical []byte) [32]byte {
	h := sha256.New()
	h.Write(prev[:])
	h.Write(canonical)
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// parseLine reads one line (without its newline) into a record and checks
// that it is canonical and that its hash matches its own prev. It does not
// check the chain around it. It never panics, whatever the bytes.
func parseLine(line []byte) (Record, error) {
	var r Record
	if len(line) < hashSuffixLen+2 || line[0] != '{' {
		return r, errors.New("not a record")
	}
	suffix := line[len(line)-hashSuffixLen:]
	if !bytes.HasPrefix(suffix, []byte(`,"hash":"`)) || !bytes.HasSuffix(suffix, []byte(`"}`)) {
		return r, errors.New(`not a record: it does not end in ,"hash":"<64 hex>"}`)
	}
	if err := decodeHex(r.Hash[:], suffix[len(`,"hash":"`):len(suffix)-2]); err != nil {
		return r, fmt.Errorf("hash: %v", err)
	}
	canonical := make([]byte, 0, len(line)-hashSuffixLen+1)
	canonical = append(canonical, line[:len(line)-hashSuffixLen]...)
	canonical = append(canonical, '}')

	var w wire
	dec := json.NewDecoder(bytes.NewReader(canonical))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return r, fmt.Errorf("not a record: %v", err)
	}
	again, err := json.Marshal(w)
	if err != nil || !bytes.Equal(again, canonical) {
		return r, errors.New("not in canonical form (keys, order, spacing or escaping differ)")
	}
	r.Seq = w.Seq
	if err := decodeHex(r.Prev[:], []byte(w.Prev)); err != nil {
		return r, fmt.Errorf("prev: %v", err)
	}
	digest, keyed := strings.CutPrefix(w.ContextDigest, ContextHMACPrefix)
	r.ContextKeyed = keyed
	if err := decodeHex(r.ContextDigest[:], []byte(digest)); err != nil {
		return r, fmt.Errorf("context_digest: %v", err)
	}
	t, err := time.Parse(time.RFC3339Nano, w.Time)
	if err != nil || t.Format(time.RFC3339Nano) != w.Time || t.Location() != time.UTC {
		return r, fmt.Errorf("time %q: not RFC 3339 in UTC as this package writes it", w.Time)
	}
	r.Time = t
	r.Peer = w.Peer
	r.Op, r.Key, r.Version = w.Op, w.Key, w.Version
	r.Result, r.Reason, r.CallerRef, r.Grant = w.Result, w.Reason, w.CallerRef, w.Grant
	r.Duration = time.Duration(w.DurationUS) * time.Microsecond
	r.RequestID = w.RequestID
	r.Sig = w.Sig
	if chainHash(r.Prev, canonical) != r.Hash {
		return r, errors.New("hash does not match the record")
	}
	return r, nil
}

// decodeHex decodes exactly len(dst) bytes of lower-case hex.
func decodeHex(dst, src []byte) error {
	if len(src) != 2*len(dst) {
		return fmt.Errorf("want %d hex digits, got %d characters", 2*len(dst), len(src))
	}
	for _, c := range src {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return errors.New("not lower-case hex")
		}
	}
	_, err := hex.Decode(dst, src)
	return err
}
