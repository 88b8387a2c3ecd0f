package daemon_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/envelope"
	"github.com/keyward/keyward/keys"
)

// rawMsg is a request body sent as is: bytes another message type encodes
// to, or bytes no message encodes to (invalid UTF-8 in a string field).
type rawMsg []byte

// rawCodec sends rawMsg verbatim and anything else as protobuf; replies are
// kept raw. It names itself "proto" so the daemon sees an ordinary call.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	switch m := v.(type) {
	case rawMsg:
		return mem.BufferSlice{mem.SliceBuffer(m)}, nil
	case *rawMsg:
		return mem.BufferSlice{mem.SliceBuffer(*m)}, nil
	case proto.Message:
		b, err := proto.Marshal(m)
		return mem.BufferSlice{mem.SliceBuffer(b)}, err
	}
	return nil, fmt.Errorf("rawCodec: cannot marshal %T", v)
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	p, ok := v.(*rawMsg)
	if !ok {
		return fmt.Errorf("rawCodec: cannot unmarshal into %T", v)
	}
	*p = data.Materialize()
	return nil
}

// Hand-encoded protobuf fields, so a string field can carry any bytes.
func pbBytes(num protowire.Number, b string) []byte {
	return protowire.AppendString(protowire.AppendTag(nil, num, protowire.BytesType), b)
}

func pbVarint(num protowire.Number, v uint64) []byte {
	return protowire.AppendVarint(protowire.AppendTag(nil, num, protowire.VarintType), v)
}

// pbPair is one entry of a map<string, string> field.
func pbPair(num protowire.Number, k, v string) []byte {
	return pbBytes(num, string(append(pbBytes(1, k), pbBytes(2, v)...)))
}

func cat(parts ...[]byte) rawMsg { return rawMsg(bytes.Join(parts, nil)) }

// outcome is "OK", the gRPC code, or "CODE REASON" when the daemon attached
// an ErrorInfo: exact, so a case pins both.
func outcome(err error) string {
	if err == nil {
		return "OK"
	}
	st, ok := status.FromError(err)
	if !ok {
		return "not a status: " + err.Error()
	}
	for _, d := range st.Details() {
		if info, ok := d.(interface{ GetReason() string }); ok {
			return st.Code().String() + " " + info.GetReason()
		}
	}
	return st.Code().String()
}

// itemOutcome is a batch item's failure written like outcome.
func itemOutcome(e *pb.ItemError) string {
	if e == nil {
		return "OK"
	}
	return fmt.Sprintf("%s %s", codes.Code(e.Code), e.Reason)
}

// HTTP/2 bits for raw-socket cases.
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

func h2Frame(typ, flags byte, stream uint32, payload []byte) []byte {
	n := len(payload)
	b := []byte{byte(n >> 16), byte(n >> 8), byte(n), typ, flags}
	b = binary.BigEndian.AppendUint32(b, stream)
	return append(b, payload...)
}

func h2Settings(kv ...uint32) []byte {
	var p []byte
	for i := 0; i+1 < len(kv); i += 2 {
		p = binary.BigEndian.AppendUint16(p, uint16(kv[i]))
		p = binary.BigEndian.AppendUint32(p, kv[i+1])
	}
	return h2Frame(0x4, 0, 0, p)
}

// Frame types.
const (
	h2Data         = 0x0
	h2Headers      = 0x1
	h2Priority     = 0x2
	h2RSTStream    = 0x3
	h2Ping         = 0x6
	h2WindowUpdate = 0x8
	h2Continuation = 0x9
)

// rawExchange writes payload on a fresh connection (optionally half-closing
// it) and reports "CLOSED" if the daemon then closes the connection (within
// 30 s, a bound that only ends a hang: the handshake timeout is 1 s),
// whatever it sent before (a GOAWAY, nothing).
func rawExchange(sock string, payload []byte, halfClose bool) string {
	c, err := net.Dial("unix", sock)
	if err != nil {
		return "dial: " + err.Error()
	}
	defer c.Close()
	deadline := time.Now().Add(30 * time.Second)
	c.SetDeadline(deadline)
	// The daemon may close before reading everything: a failed write is
	// fine, what counts is that the connection ends.
	go func() {
		c.Write(payload)
		if halfClose {
			c.(*net.UnixConn).CloseWrite()
		}
	}()
	_, err = io.Copy(io.Discard, c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return "still open after 30s"
	}
	return "CLOSED"
}

// vmRSS returns this process's resident set (and peak) in KiB: the daemon
// runs in it.
func vmRSS(t *testing.T) (rss, hwm int) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.Atoi(f[1])
		switch f[0] {
		case "VmRSS:":
			rss = v
		case "VmHWM:":
			hwm = v
		}
	}
	return rss, hwm
}

// TestHostileRequests sends malformed and hostile requests to one daemon
// over its socket: each gets its exact code (and ErrorInfo reason), and
// after each one a normal wrap/unwrap still works. At the end the
// process's RSS must still be bounded.
func TestHostileRequests(t *testing.T) {
	r := start(t, testRules(), func(c *config.Config) {
		// Raw-socket cases that stall are cut by this, not by the test.
		c.Limits.HandshakeTimeout = config.Duration{Duration: time.Second}
		// Root is the caller throughout; failed verify-macs must not
		// turn into RATE_LIMITED halfway through the table.
		c.Limits.MaxDeniedPerMinute = 1 << 20
		c.Limits.MaxFailedVerifyMacPerMinute = 1 << 20
	})
	conn, err := grpc.NewClient("unix://"+r.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := pb.NewKeywardClient(conn)
	ctx := context.Background()
	rss0, _ := vmRSS(t)

	for k, ty := range map[string]string{"hostile/a": "aes-256-gcm", "hostile/b": "aes-256-gcm", "hostile/m": "hmac-sha256", "hostile/ec": "ecdsa-p256", "hostile/dis": "aes-256-gcm"} {
		if _, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: k, KeyType: ty}); err != nil {
			t.Fatalf("create %s: %v", k, err)
		}
	}
	appCtx := map[string]string{"app": "web"}
	wrap := func(key string) []byte {
		t.Helper()
		w, err := c.Wrap(ctx, &pb.WrapRequest{Key: key, Plaintext: []byte("hostile secret"), Context: appCtx})
		if err != nil {
			t.Fatalf("wrap %s: %v", key, err)
		}
		return w.Ciphertext
	}
	blobA1 := wrap("hostile/a")
	if _, err := c.RotateKey(ctx, &pb.RotateKeyRequest{Key: "hostile/a"}); err != nil {
		t.Fatal(err)
	}
	blobA2 := wrap("hostile/a")
	blobDis := wrap("hostile/dis")
	if _, err := c.RotateKey(ctx, &pb.RotateKeyRequest{Key: "hostile/dis"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SetVersionState(ctx, &pb.SetVersionStateRequest{Key: "hostile/dis", Version: 1, State: pb.VersionState_DISABLED}); err != nil {
		t.Fatal(err)
	}
	// reheader re-encodes blob's ciphertext under an edited header.
	reheader := func(blob []byte, edit func(*envelope.Header)) []byte {
		t.Helper()
		h, ct, err := envelope.Decode(blob)
		if err != nil {
			t.Fatal(err)
		}
		edit(&h)
		out, err := envelope.Encode(h, ct)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	hdr, _, _ := envelope.Decode(blobA1)
	// magic, format, alg, name length, name, version, nonce length, nonce
	hdrLen := 2 + 1 + 1 + 1 + len(hdr.Name) + 4 + 1 + len(hdr.Nonce)
	flip := func(b []byte, i int) []byte {
		out := bytes.Clone(b)
		out[i] ^= 0x01
		return out
	}

	invoke := func(method string, body rawMsg) func(*testing.T) string {
		return func(*testing.T) string {
			var out rawMsg
			return outcome(conn.Invoke(ctx, "/keyward.v1.Keyward/"+method, body, &out, grpc.ForceCodecV2(rawCodec{})))
		}
	}
	call := func(f func() error) func(*testing.T) string { return func(*testing.T) string { return outcome(f()) } }
	raw := func(payload []byte, halfClose bool) func(*testing.T) string {
		return func(*testing.T) string { return rawExchange(r.sock, payload, halfClose) }
	}
	unwrap := func(blob []byte, cx map[string]string) func(*testing.T) string {
		return call(func() error { _, err := c.Unwrap(ctx, &pb.UnwrapRequest{Ciphertext: blob, Context: cx}); return err })
	}
	wrapWith := func(key string, pt []byte, cx map[string]string) func(*testing.T) string {
		return call(func() error { _, err := c.Wrap(ctx, &pb.WrapRequest{Key: key, Plaintext: pt, Context: cx}); return err })
	}

	type hostile struct {
		name string
		run  func(*testing.T) string
		want string
	}
	var cases []hostile
	add := func(name, want string, run func(*testing.T) string) {
		cases = append(cases, hostile{name: name, run: run, want: want})
	}

	// ---- bytes that are not (valid) HTTP/2: the daemon hangs up ----
	rng := rand.New(rand.NewPCG(7, 7))
	garbage := make([]byte, 4096)
	for i := range garbage {
		garbage[i] = byte(rng.UintN(256))
	}
	settings := h2Settings()
	add("raw: random garbage", "CLOSED", raw(garbage, false))
	add("raw: 1 MiB of zeros", "CLOSED", raw(make([]byte, 1<<20), false))
	add("raw: HTTP/1.1 GET", "CLOSED", raw([]byte("GET / HTTP/1.1\r\nHost: keyward\r\n\r\n"), false))
	add("raw: HTTP/1.1 POST to a method", "CLOSED", raw([]byte("POST /keyward.v1.Keyward/Status HTTP/1.1\r\nHost: keyward\r\nContent-Type: application/grpc\r\nContent-Length: 5\r\n\r\n\x00\x00\x00\x00\x00"), false))
	add("raw: HTTP/1.1 h2c upgrade", "CLOSED", raw([]byte("GET / HTTP/1.1\r\nHost: keyward\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"), false))
	add("raw: TLS ClientHello", "CLOSED", raw([]byte("\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"+strings.Repeat("\x00", 160)), false))
	add("raw: lower-case preface", "CLOSED", raw([]byte(strings.ToLower(h2Preface)), false))
	add("raw: preface with one byte wrong", "CLOSED", raw([]byte(h2Preface[:len(h2Preface)-1]+"X"), false))
	add("raw: truncated preface, then silence", "CLOSED", raw([]byte(h2Preface[:10]), false))
	add("raw: truncated preface, then EOF", "CLOSED", raw([]byte(h2Preface[:10]), true))
	add("raw: nothing, then silence", "CLOSED", raw(nil, false))
	add("raw: nothing, then EOF", "CLOSED", raw(nil, true))
	add("raw: preface then garbage", "CLOSED", raw(append([]byte(h2Preface), garbage...), false))
	add("raw: preface then silence", "CLOSED", raw([]byte(h2Preface), false))
	add("raw: preface, PING before SETTINGS", "CLOSED", raw(cat([]byte(h2Preface), h2Frame(h2Ping, 0, 0, make([]byte, 8))), false))
	add("raw: preface, SETTINGS of 5 bytes", "CLOSED", raw(cat([]byte(h2Preface), h2Frame(0x4, 0, 0, make([]byte, 5))), false))
	add("raw: preface, SETTINGS on stream 1", "CLOSED", raw(cat([]byte(h2Preface), h2Frame(0x4, 0, 1, nil)), false))
	add("raw: preface, 16 MiB frame header", "CLOSED", raw(cat([]byte(h2Preface), settings, []byte{0xff, 0xff, 0xff, h2Data, 0, 0, 0, 0, 1}), false))
	add("raw: HEADERS on stream 0", "CLOSED", raw(cat([]byte(h2Preface), settings, h2Frame(h2Headers, 0x4, 0, []byte{0x82})), false))
	add("raw: HEADERS on an even stream", "CLOSED", raw(cat([]byte(h2Preface), settings, h2Frame(h2Headers, 0x4, 2, []byte{0x83, 0x86, 0x84})), false))
	add("raw: HEADERS with broken HPACK", "CLOSED", raw(cat([]byte(h2Preface), settings, h2Frame(h2Headers, 0x4, 1, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})), false))
	add("raw: CONTINUATION without HEADERS", "CLOSED", raw(cat([]byte(h2Preface), settings, h2Frame(h2Continuation, 0x4, 1, []byte{0x82})), false))
	add("raw: WINDOW_UPDATE of 0 on the connection", "CLOSED", raw(cat([]byte(h2Preface), settings, h2Frame(h2WindowUpdate, 0, 0, make([]byte, 4))), false))
	add("raw: PING of 7 bytes", "CLOSED", raw(cat([]byte(h2Preface), settings, h2Frame(h2Ping, 0, 0, make([]byte, 7))), false))
	add("raw: RST_STREAM on stream 0", "CLOSED", raw(cat([]byte(h2Preface), settings, h2Frame(h2RSTStream, 0, 0, make([]byte, 4))), false))
	add("raw: DATA on stream 0", "CLOSED", raw(cat([]byte(h2Preface), settings, h2Frame(h2Data, 0, 0, []byte("x"))), false))
	add("raw: PRIORITY on stream 0", "CLOSED", raw(cat([]byte(h2Preface), settings, h2Frame(h2Priority, 0, 0, make([]byte, 5))), false))
	add("raw: SETTINGS window over 2^31-1", "CLOSED", raw(cat([]byte(h2Preface), h2Settings(0x4, 1<<31)), false))

	// ---- oversized messages ----
	add("oversized: 5 MiB plaintext", "ResourceExhausted", wrapWith("hostile/a", make([]byte, 5<<20), nil))
	add("oversized: 5 MiB ciphertext", "ResourceExhausted", unwrap(make([]byte, 5<<20), nil))
	add("oversized: 5 MiB raw body to Status", "ResourceExhausted", invoke("Status", rawMsg(make([]byte, 5<<20))))
	add("oversized: 64 KiB+1 plaintext", "InvalidArgument INVALID_REQUEST", wrapWith("hostile/a", make([]byte, keys.MaxPlaintext+1), nil))
	add("oversized: 64 KiB plaintext is fine", "OK", wrapWith("hostile/a", make([]byte, keys.MaxPlaintext), nil))
	add("oversized: blob over MaxBlob", "InvalidArgument INVALID_REQUEST", unwrap(append(bytes.Clone(blobA1), make([]byte, keys.MaxBlob)...), nil))
	add("oversized: 64 KiB+1 message to sign", "InvalidArgument INVALID_REQUEST", call(func() error {
		_, err := c.Sign(ctx, &pb.SignRequest{Key: "hostile/ec", Message: make([]byte, keys.MaxPlaintext+1)})
		return err
	}))
	add("oversized: 64 KiB+1 message to mac", "InvalidArgument INVALID_REQUEST", call(func() error {
		_, err := c.Mac(ctx, &pb.MacRequest{Key: "hostile/m", Message: make([]byte, keys.MaxPlaintext+1)})
		return err
	}))

	// ---- wrong message types and bytes that are no message ----
	wrapReq, _ := proto.Marshal(&pb.WrapRequest{Key: "hostile/a", Plaintext: []byte("x")})
	signReq, _ := proto.Marshal(&pb.SignRequest{Key: "hostile/a", Message: []byte("des")})
	verifyReq, _ := proto.Marshal(&pb.VerifyRequest{Key: "hostile/a", Version: 7})
	unwrapReq, _ := proto.Marshal(&pb.UnwrapRequest{Ciphertext: blobA1})
	createReq, _ := proto.Marshal(&pb.CreateKeyRequest{Key: "hostile/a", KeyType: "aes-256-gcm"})
	describeReq, _ := proto.Marshal(&pb.DescribeKeyRequest{Key: "hostile/a"})
	add("wrong type: WrapRequest to Unwrap", "InvalidArgument INVALID_REQUEST", invoke("Unwrap", wrapReq))
	add("wrong type: WrapRequest to Sign", "FailedPrecondition WRONG_KEY_TYPE", invoke("Sign", wrapReq))
	add("wrong type: SignRequest to CreateKey", "InvalidArgument INVALID_REQUEST", invoke("CreateKey", signReq))
	add("wrong type: VerifyRequest to Wrap", "OK", invoke("Wrap", verifyReq))
	add("wrong type: UnwrapRequest to Wrap", "InvalidArgument INVALID_REQUEST", invoke("Wrap", unwrapReq))
	add("wrong type: UnwrapRequest to Sign", "InvalidArgument INVALID_REQUEST", invoke("Sign", unwrapReq))
	// key_type's bytes do not parse as a context map entry.
	add("wrong type: CreateKeyRequest to Unwrap", "InvalidArgument INVALID_REQUEST", invoke("Unwrap", createReq))
	add("wrong type: DescribeKeyRequest to Unwrap", "InvalidArgument MALFORMED_CIPHERTEXT", invoke("Unwrap", describeReq))
	add("wrong type: CreateKeyRequest to SetVersionState", "InvalidArgument INVALID_REQUEST", invoke("SetVersionState", createReq))
	add("wrong type: varint where the key string is", "InvalidArgument INVALID_KEY_NAME", invoke("Wrap", cat(pbVarint(1, 42), pbBytes(2, "x"))))
	add("not protobuf: truncated varint", "InvalidArgument INVALID_REQUEST", invoke("Wrap", rawMsg{0x08}))
	add("not protobuf: wire type 7", "InvalidArgument INVALID_REQUEST", invoke("Wrap", rawMsg{0x0f, 0x00}))
	add("not protobuf: field number 0", "InvalidArgument INVALID_REQUEST", invoke("Wrap", rawMsg{0x02, 0x00}))
	add("not protobuf: length past the end", "InvalidArgument INVALID_REQUEST", invoke("Unwrap", rawMsg{0x0a, 0x7f, 'K', 'W'}))
	add("not protobuf: unterminated group", "InvalidArgument INVALID_REQUEST", invoke("Status", rawMsg{0x0b}))
	add("not protobuf: JSON", "InvalidArgument INVALID_REQUEST", invoke("Wrap", rawMsg(`{"key":"hostile/a","plaintext":"eA=="}`)))
	add("unknown fields are ignored", "OK", invoke("Status", cat(pbVarint(1000, 1), pbBytes(1001, "\xff"))))

	// ---- invalid UTF-8 in proto3 string fields ----
	// grpc-go refuses to unmarshal these (and would answer INTERNAL, outside
	// the API's closed set); the daemon's codec turns them into
	// INVALID_REQUEST (daemon/codec.go).
	add("utf-8: key name", "InvalidArgument INVALID_REQUEST", invoke("Wrap", cat(pbBytes(1, "hostile/\xff"), pbBytes(2, "x"))))
	add("utf-8: overlong encoding in key name", "InvalidArgument INVALID_REQUEST", invoke("Wrap", cat(pbBytes(1, "\xc0\xaf"), pbBytes(2, "x"))))
	add("utf-8: surrogate in key name", "InvalidArgument INVALID_REQUEST", invoke("CreateKey", cat(pbBytes(1, "a\xed\xa0\x80"), pbBytes(2, "aes-256-gcm"))))
	add("utf-8: context key", "InvalidArgument INVALID_REQUEST", invoke("Wrap", cat(pbBytes(1, "hostile/a"), pbBytes(2, "x"), pbPair(3, "app\xfe", "web"))))
	add("utf-8: context value", "InvalidArgument INVALID_REQUEST", invoke("Wrap", cat(pbBytes(1, "hostile/a"), pbBytes(2, "x"), pbPair(3, "app", "w\x80b"))))
	add("utf-8: unwrap context key", "InvalidArgument INVALID_REQUEST", invoke("Unwrap", cat(pbBytes(1, string(blobA2)), pbPair(2, "\xff", "web"))))
	add("utf-8: key type", "InvalidArgument INVALID_REQUEST", invoke("CreateKey", cat(pbBytes(1, "hostile/utf"), pbBytes(2, "aes-256-gcm\xff"))))
	add("utf-8: batch item key", "InvalidArgument INVALID_REQUEST", invoke("BatchWrap", cat(pbBytes(1, string(cat(pbBytes(1, "\xff"), pbBytes(2, "x")))))))
	add("utf-8: datakey context value", "InvalidArgument INVALID_REQUEST", invoke("GenerateDataKey", cat(pbBytes(1, "hostile/a"), pbPair(2, "app", "\xff"))))

	// ---- key names that look like paths, or are not names ----
	badNames := []string{"../x", "/abs", "a/../b", "a//b", "a/", ".hidden", "A", "x\x00y", strings.Repeat("a", keys.MaxNameLen+1), "ключ", "a b", "", "a\\b", "a/./b", "-a", "a\nb"}
	for _, n := range badNames {
		q := strconv.Quote(n)
		if len(q) > 40 {
			q = fmt.Sprintf("%d bytes", len(n))
		}
		add("name "+q+": wrap", "InvalidArgument INVALID_KEY_NAME", wrapWith(n, []byte("x"), nil))
		add("name "+q+": create", "InvalidArgument INVALID_KEY_NAME", call(func() error {
			_, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: n, KeyType: "aes-256-gcm"})
			return err
		}))
		add("name "+q+": describe", "InvalidArgument INVALID_KEY_NAME", call(func() error {
			_, err := c.DescribeKey(ctx, &pb.DescribeKeyRequest{Key: n})
			return err
		}))
	}
	add("name: 128 bytes, valid, absent", "NotFound KEY_NOT_FOUND", wrapWith(strings.Repeat("a", keys.MaxNameLen), []byte("x"), nil))
	add("name: absent key", "NotFound KEY_NOT_FOUND", wrapWith("hostile/absent", []byte("x"), nil))
	add("name: absent key, sign", "NotFound KEY_NOT_FOUND", call(func() error {
		_, err := c.Sign(ctx, &pb.SignRequest{Key: "hostile/absent", Message: []byte("x")})
		return err
	}))

	// ---- contexts ----
	pairs := func(n int) map[string]string {
		m := map[string]string{}
		for i := range n {
			m[fmt.Sprint("k", i)] = "v"
		}
		return m
	}
	long := strings.Repeat("k", keys.MaxContextKV+1)
	add("context: 65 pairs", "InvalidArgument INVALID_REQUEST", wrapWith("hostile/a", []byte("x"), pairs(keys.MaxContext+1)))
	add("context: 64 pairs is fine", "OK", wrapWith("hostile/a", []byte("x"), pairs(keys.MaxContext)))
	add("context: 1 KiB+1 key", "InvalidArgument INVALID_REQUEST", wrapWith("hostile/a", []byte("x"), map[string]string{long: "v"}))
	add("context: 1 KiB+1 value", "InvalidArgument INVALID_REQUEST", wrapWith("hostile/a", []byte("x"), map[string]string{"k": long}))
	add("context: 1 KiB key and value are fine", "OK", wrapWith("hostile/a", []byte("x"), map[string]string{long[1:]: long[1:]}))
	add("context: empty key", "InvalidArgument INVALID_REQUEST", wrapWith("hostile/a", []byte("x"), map[string]string{"": "v"}))
	add("context: empty value is fine", "OK", wrapWith("hostile/a", []byte("x"), map[string]string{"k": ""}))
	add("context: empty context is fine", "OK", wrapWith("hostile/a", []byte("x"), map[string]string{}))
	add("context: unwrap with 65 pairs", "InvalidArgument INVALID_REQUEST", unwrap(blobA2, pairs(keys.MaxContext+1)))
	add("context: unwrap with empty key", "InvalidArgument INVALID_REQUEST", unwrap(blobA2, map[string]string{"": "web"}))
	add("context: unwrap without the context", "InvalidArgument DECRYPTION_FAILED", unwrap(blobA2, nil))
	add("context: unwrap with another value", "InvalidArgument DECRYPTION_FAILED", unwrap(blobA2, map[string]string{"app": "web "}))
	add("context: unwrap with an extra pair", "InvalidArgument DECRYPTION_FAILED", unwrap(blobA2, map[string]string{"app": "web", "x": ""}))
	add("context: datakey with 1 KiB+1 value", "InvalidArgument INVALID_REQUEST", call(func() error {
		_, err := c.GenerateDataKey(ctx, &pb.GenerateDataKeyRequest{Key: "hostile/a", Context: map[string]string{"k": long}})
		return err
	}))
	add("context: rewrap with 65 pairs", "InvalidArgument INVALID_REQUEST", call(func() error {
		_, err := c.Rewrap(ctx, &pb.RewrapRequest{Ciphertext: blobA1, Context: pairs(keys.MaxContext + 1)})
		return err
	}))

	// ---- batches ----
	wrapItems := func(n int) []*pb.WrapRequest {
		out := make([]*pb.WrapRequest, n)
		for i := range out {
			out[i] = &pb.WrapRequest{Key: "hostile/a", Plaintext: []byte("x")}
		}
		return out
	}
	unwrapItems := func(n int) []*pb.UnwrapRequest {
		out := make([]*pb.UnwrapRequest, n)
		for i := range out {
			out[i] = &pb.UnwrapRequest{Ciphertext: blobA2, Context: appCtx}
		}
		return out
	}
	macItems := func(n int) []*pb.MacRequest {
		out := make([]*pb.MacRequest, n)
		for i := range out {
			out[i] = &pb.MacRequest{Key: "hostile/m", Message: []byte("x")}
		}
		return out
	}
	vmacItems := func(n int) []*pb.VerifyMacRequest {
		out := make([]*pb.VerifyMacRequest, n)
		for i := range out {
			out[i] = &pb.VerifyMacRequest{Key: "hostile/m", Message: []byte("x"), Mac: make([]byte, 32)}
		}
		return out
	}
	const maxBatch = 1000 // config.Defaults().Limits.MaxBatch
	// 100,000 items: small wraps and macs still fit in max_message and are
	// refused by count; unwraps and verify-macs (a blob or a MAC each) go
	// over max_message and are refused by gRPC before decoding.
	for _, b := range []struct {
		n                    int
		small, large, reason string
	}{
		{0, "InvalidArgument INVALID_REQUEST", "InvalidArgument INVALID_REQUEST", "none"},
		{maxBatch + 1, "InvalidArgument INVALID_REQUEST", "InvalidArgument INVALID_REQUEST", "one over"},
		{100000, "InvalidArgument INVALID_REQUEST", "ResourceExhausted", "100,000"},
	} {
		n := b.n
		add(fmt.Sprintf("batch: %d wraps", n), b.small, call(func() error {
			_, err := c.BatchWrap(ctx, &pb.BatchWrapRequest{Items: wrapItems(n)})
			return err
		}))
		add(fmt.Sprintf("batch: %d unwraps", n), b.large, call(func() error {
			_, err := c.BatchUnwrap(ctx, &pb.BatchUnwrapRequest{Items: unwrapItems(n)})
			return err
		}))
		add(fmt.Sprintf("batch: %d macs", n), b.small, call(func() error {
			_, err := c.BatchMac(ctx, &pb.BatchMacRequest{Items: macItems(n)})
			return err
		}))
		add(fmt.Sprintf("batch: %d verify-macs", n), b.large, call(func() error {
			_, err := c.BatchVerifyMac(ctx, &pb.BatchVerifyMacRequest{Items: vmacItems(n)})
			return err
		}))
	}
	add("batch: 1000 unwraps are fine", "OK", call(func() error {
		resp, err := c.BatchUnwrap(ctx, &pb.BatchUnwrapRequest{Items: unwrapItems(maxBatch)})
		if err == nil {
			for i, res := range resp.Results {
				if res.GetError() != nil {
					return fmt.Errorf("item %d: %v", i, res.GetError())
				}
			}
		}
		return err
	}))
	// Per-item failures: the call succeeds, each item carries its own code.
	batchItems := func(items ...*pb.WrapRequest) func(*testing.T) string {
		return func(*testing.T) string {
			resp, err := c.BatchWrap(ctx, &pb.BatchWrapRequest{Items: items})
			if err != nil {
				return "call failed: " + outcome(err)
			}
			var out []string
			for _, res := range resp.Results {
				out = append(out, itemOutcome(res.GetError()))
			}
			return strings.Join(out, ", ")
		}
	}
	add("batch items: bad name, absent key, too many pairs, nil item, mac key", "OK, InvalidArgument INVALID_KEY_NAME, NotFound KEY_NOT_FOUND, InvalidArgument INVALID_REQUEST, InvalidArgument INVALID_KEY_NAME, FailedPrecondition WRONG_KEY_TYPE",
		batchItems(&pb.WrapRequest{Key: "hostile/a"}, &pb.WrapRequest{Key: "../x"}, &pb.WrapRequest{Key: "hostile/absent"},
			&pb.WrapRequest{Key: "hostile/a", Context: pairs(keys.MaxContext + 1)}, &pb.WrapRequest{}, &pb.WrapRequest{Key: "hostile/m"}))
	add("batch items: blobs of other keys, truncated, empty", "OK, InvalidArgument DECRYPTION_FAILED, InvalidArgument MALFORMED_CIPHERTEXT, InvalidArgument INVALID_REQUEST", func(*testing.T) string {
		resp, err := c.BatchUnwrap(ctx, &pb.BatchUnwrapRequest{Items: []*pb.UnwrapRequest{
			{Ciphertext: blobA1, Context: appCtx},
			{Ciphertext: reheader(blobA1, func(h *envelope.Header) { h.Name = "hostile/b" }), Context: appCtx},
			{Ciphertext: blobA1[:hdrLen], Context: appCtx},
			{},
		}})
		if err != nil {
			return "call failed: " + outcome(err)
		}
		var out []string
		for _, res := range resp.Results {
			out = append(out, itemOutcome(res.GetError()))
		}
		return strings.Join(out, ", ")
	})

	// ---- blobs for other keys or versions, tampered, truncated ----
	add("blob: v1 still unwraps", "OK", unwrap(blobA1, appCtx))
	add("blob: header names another key", "InvalidArgument DECRYPTION_FAILED", unwrap(reheader(blobA1, func(h *envelope.Header) { h.Name = "hostile/b" }), appCtx))
	add("blob: header names another version", "InvalidArgument DECRYPTION_FAILED", unwrap(reheader(blobA1, func(h *envelope.Header) { h.Version = 2 }), appCtx))
	add("blob: v2 relabelled v1", "InvalidArgument DECRYPTION_FAILED", unwrap(reheader(blobA2, func(h *envelope.Header) { h.Version = 1 }), appCtx))
	add("blob: version that does not exist", "NotFound KEY_NOT_FOUND", unwrap(reheader(blobA1, func(h *envelope.Header) { h.Version = 3 }), appCtx))
	add("blob: highest version", "NotFound KEY_NOT_FOUND", unwrap(reheader(blobA1, func(h *envelope.Header) { h.Version = keys.MaxVersion }), appCtx))
	add("blob: key that does not exist", "NotFound KEY_NOT_FOUND", unwrap(reheader(blobA1, func(h *envelope.Header) { h.Name = "hostile/absent" }), appCtx))
	add("blob: header names an hmac key", "FailedPrecondition WRONG_KEY_TYPE", unwrap(reheader(blobA1, func(h *envelope.Header) { h.Name = "hostile/m" }), appCtx))
	add("blob: header names an ecdsa key", "FailedPrecondition WRONG_KEY_TYPE", unwrap(reheader(blobA1, func(h *envelope.Header) { h.Name = "hostile/ec" }), appCtx))
	add("blob: TPM algorithm on a PKCS#11 key", "FailedPrecondition UNSUPPORTED", unwrap(reheader(blobA1, func(h *envelope.Header) { h.Alg, h.Nonce = envelope.AlgTPMHMACGCM, make([]byte, 32) }), appCtx))
	add("blob: disabled version", "FailedPrecondition VERSION_DISABLED", unwrap(blobDis, appCtx))
	add("blob: rewrap of another key's blob", "InvalidArgument DECRYPTION_FAILED", call(func() error {
		_, err := c.Rewrap(ctx, &pb.RewrapRequest{Ciphertext: reheader(blobA1, func(h *envelope.Header) { h.Name = "hostile/b" }), Context: appCtx})
		return err
	}))
	add("blob: nonce bit flipped", "InvalidArgument DECRYPTION_FAILED", unwrap(flip(blobA1, hdrLen-1), appCtx))
	add("blob: ciphertext bit flipped", "InvalidArgument DECRYPTION_FAILED", unwrap(flip(blobA1, hdrLen), appCtx))
	add("blob: tag bit flipped", "InvalidArgument DECRYPTION_FAILED", unwrap(flip(blobA1, len(blobA1)-1), appCtx))
	add("blob: one byte appended", "InvalidArgument DECRYPTION_FAILED", unwrap(append(bytes.Clone(blobA1), 0), appCtx))
	add("blob: bad magic", "InvalidArgument MALFORMED_CIPHERTEXT", unwrap(flip(blobA1, 0), appCtx))
	add("blob: unknown format", "InvalidArgument MALFORMED_CIPHERTEXT", unwrap(flip(blobA1, 2), appCtx))
	add("blob: unknown algorithm", "InvalidArgument MALFORMED_CIPHERTEXT", unwrap(func() []byte { b := bytes.Clone(blobA1); b[3] = 9; return b }(), appCtx))
	add("blob: name length past the end", "InvalidArgument MALFORMED_CIPHERTEXT", unwrap(func() []byte { b := bytes.Clone(blobA1); b[4] = 0xff; return b }(), appCtx))
	add("blob: path-like name in the header", "InvalidArgument MALFORMED_CIPHERTEXT", unwrap(bytes.Replace(blobA1, []byte("hostile/a"), []byte("hostile/."), 1), appCtx))
	add("blob: version 0", "InvalidArgument MALFORMED_CIPHERTEXT", unwrap(bytes.Replace(blobA1, []byte("hostile/a\x00\x00\x00\x01"), []byte("hostile/a\x00\x00\x00\x00"), 1), appCtx))
	add("blob: wrong nonce length", "InvalidArgument MALFORMED_CIPHERTEXT", unwrap(flip(blobA1, hdrLen-len(hdr.Nonce)-1), appCtx))
	add("blob: text form instead of bytes", "InvalidArgument MALFORMED_CIPHERTEXT", unwrap([]byte(envelope.EncodeText(blobA1)), appCtx))
	add("blob: empty", "InvalidArgument INVALID_REQUEST", unwrap(nil, appCtx))
	for _, n := range []int{1, 2, 3, 4, 5, 10, hdrLen - 1, hdrLen, hdrLen + envelope.TagSize - 1} {
		add(fmt.Sprintf("blob: truncated to %d bytes", n), "InvalidArgument MALFORMED_CIPHERTEXT", unwrap(blobA1[:n], appCtx))
	}
	add("blob: last byte cut", "InvalidArgument DECRYPTION_FAILED", unwrap(blobA1[:len(blobA1)-1], appCtx))

	// ---- data keys, signatures, MACs ----
	datakey := func(n uint32) func(*testing.T) string {
		return call(func() error {
			_, err := c.GenerateDataKey(ctx, &pb.GenerateDataKeyRequest{Key: "hostile/a", Length: n})
			return err
		})
	}
	add("datakey: length 0 means 32", "OK", datakey(0))
	add("datakey: length 15", "InvalidArgument INVALID_REQUEST", datakey(15))
	add("datakey: length 16", "OK", datakey(16))
	add("datakey: length 1024", "OK", datakey(1024))
	add("datakey: length 1025", "InvalidArgument INVALID_REQUEST", datakey(1025))
	add("datakey: length 2^32-1", "InvalidArgument INVALID_REQUEST", datakey(1<<32-1))
	add("datakey: with an hmac key", "FailedPrecondition WRONG_KEY_TYPE", call(func() error {
		_, err := c.GenerateDataKey(ctx, &pb.GenerateDataKeyRequest{Key: "hostile/m"})
		return err
	}))
	verify := func(key string, sig []byte) func(*testing.T) string {
		return call(func() error {
			_, err := c.Verify(ctx, &pb.VerifyRequest{Key: key, Message: []byte("m"), Signature: sig})
			return err
		})
	}
	verifyMac := func(key string, mac []byte) func(*testing.T) string {
		return call(func() error {
			_, err := c.VerifyMac(ctx, &pb.VerifyMacRequest{Key: key, Message: []byte("m"), Mac: mac})
			return err
		})
	}
	add("verify: 1 KiB+1 signature", "InvalidArgument INVALID_REQUEST", verify("hostile/ec", make([]byte, 1025)))
	add("verify: 1 KiB signature is just invalid", "OK", verify("hostile/ec", make([]byte, 1024)))
	add("verify: empty signature is just invalid", "OK", verify("hostile/ec", nil))
	add("verify: with an aes key", "FailedPrecondition WRONG_KEY_TYPE", verify("hostile/a", make([]byte, 64)))
	add("verify: version that does not exist", "NotFound KEY_NOT_FOUND", call(func() error {
		_, err := c.Verify(ctx, &pb.VerifyRequest{Key: "hostile/ec", Version: 9, Message: []byte("m"), Signature: make([]byte, 64)})
		return err
	}))
	add("verify-mac: 1 KiB+1 mac", "InvalidArgument INVALID_REQUEST", verifyMac("hostile/m", make([]byte, 1025)))
	add("verify-mac: 65-byte mac", "InvalidArgument INVALID_REQUEST", verifyMac("hostile/m", make([]byte, 65)))
	add("verify-mac: 64-byte mac is just invalid", "OK", verifyMac("hostile/m", make([]byte, 64)))
	add("verify-mac: with an aes key", "FailedPrecondition WRONG_KEY_TYPE", verifyMac("hostile/a", make([]byte, 32)))
	add("sign: with an aes key", "FailedPrecondition WRONG_KEY_TYPE", call(func() error {
		_, err := c.Sign(ctx, &pb.SignRequest{Key: "hostile/a", Message: []byte("m")})
		return err
	}))
	add("public key: of an aes key", "FailedPrecondition WRONG_KEY_TYPE", call(func() error {
		_, err := c.GetPublicKey(ctx, &pb.GetPublicKeyRequest{Key: "hostile/a"})
		return err
	}))

	// ---- lifecycle ----
	setState := func(v uint32, st pb.VersionState) func(*testing.T) string {
		return call(func() error {
			_, err := c.SetVersionState(ctx, &pb.SetVersionStateRequest{Key: "hostile/b", Version: v, State: st})
			return err
		})
	}
	add("state: UNSPECIFIED", "InvalidArgument INVALID_REQUEST", setState(1, pb.VersionState_VERSION_STATE_UNSPECIFIED))
	add("state: DESTROYED", "InvalidArgument INVALID_REQUEST", setState(1, pb.VersionState_DESTROYED))
	add("state: unknown enum value", "InvalidArgument INVALID_REQUEST", setState(1, pb.VersionState(99)))
	add("state: version 0", "NotFound KEY_NOT_FOUND", setState(0, pb.VersionState_ENABLED))
	add("state: version that does not exist", "NotFound KEY_NOT_FOUND", setState(9, pb.VersionState_DISABLED))
	add("state: absent key", "NotFound KEY_NOT_FOUND", call(func() error {
		_, err := c.SetVersionState(ctx, &pb.SetVersionStateRequest{Key: "hostile/absent", Version: 1, State: pb.VersionState_ENABLED})
		return err
	}))
	for _, ty := range []string{"des", "AES-256-GCM", "aes-256-gcm ", "aes-256", "rsa-1024", "aes-256-gcm\x00", "*", strings.Repeat("x", 4096)} {
		q := strconv.Quote(ty)
		if len(q) > 40 {
			q = fmt.Sprintf("%d bytes", len(ty))
		}
		add("create: key type "+q, "InvalidArgument INVALID_REQUEST", call(func() error {
			_, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: "hostile/new", KeyType: ty})
			return err
		}))
	}
	add("create: existing key", "FailedPrecondition KEY_EXISTS", call(func() error {
		_, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: "hostile/a", KeyType: "aes-256-gcm"})
		return err
	}))
	add("destroy: version 0", "NotFound KEY_NOT_FOUND", call(func() error {
		_, err := c.DestroyVersion(ctx, &pb.DestroyVersionRequest{Key: "hostile/b", Version: 0})
		return err
	}))
	add("min version: beyond the newest", "InvalidArgument INVALID_REQUEST", call(func() error {
		_, err := c.SetMinDecryptVersion(ctx, &pb.SetMinDecryptVersionRequest{Key: "hostile/b", Version: 99})
		return err
	}))
	add("adopt: empty uri", "InvalidArgument INVALID_REQUEST", call(func() error {
		_, err := c.AdoptKey(ctx, &pb.AdoptKeyRequest{Key: "hostile/adopt", KeyType: "aes-256-gcm"})
		return err
	}))
	add("adopt: 1 KiB+1 uri", "InvalidArgument INVALID_REQUEST", call(func() error {
		_, err := c.AdoptKey(ctx, &pb.AdoptKeyRequest{Key: "hostile/adopt", KeyType: "aes-256-gcm", Uri: strings.Repeat("u", 1025)})
		return err
	}))

	// ---- routes the service does not have ----
	// grpc-go would answer UNIMPLEMENTED; the daemon's unknown-service
	// handler answers INVALID_REQUEST, inside the closed set.
	add("route: unknown method", "InvalidArgument INVALID_REQUEST", invoke("Nope", nil))
	add("route: method of another case", "InvalidArgument INVALID_REQUEST", invoke("wrap", nil))
	add("route: unknown service", "InvalidArgument INVALID_REQUEST", func(*testing.T) string {
		var out rawMsg
		return outcome(conn.Invoke(ctx, "/keyward.v2.Keyward/Wrap", rawMsg(nil), &out, grpc.ForceCodecV2(rawCodec{})))
	})

	// ---- every method with an empty request ----
	// Iterated over the service descriptor so a new method cannot be
	// forgotten: it fails here until it has an expectation.
	emptyWant := map[string]string{
		"Wrap":                 "InvalidArgument INVALID_KEY_NAME",
		"Unwrap":               "InvalidArgument INVALID_REQUEST",
		"Rewrap":               "InvalidArgument INVALID_REQUEST",
		"GenerateDataKey":      "InvalidArgument INVALID_KEY_NAME",
		"Sign":                 "InvalidArgument INVALID_KEY_NAME",
		"Verify":               "InvalidArgument INVALID_KEY_NAME",
		"Mac":                  "InvalidArgument INVALID_KEY_NAME",
		"VerifyMac":            "InvalidArgument INVALID_KEY_NAME",
		"GetPublicKey":         "InvalidArgument INVALID_KEY_NAME",
		"BatchWrap":            "InvalidArgument INVALID_REQUEST",
		"BatchUnwrap":          "InvalidArgument INVALID_REQUEST",
		"BatchMac":             "InvalidArgument INVALID_REQUEST",
		"BatchVerifyMac":       "InvalidArgument INVALID_REQUEST",
		"CreateKey":            "InvalidArgument INVALID_KEY_NAME",
		"RotateKey":            "InvalidArgument INVALID_KEY_NAME",
		"DescribeKey":          "InvalidArgument INVALID_KEY_NAME",
		"SetVersionState":      "InvalidArgument INVALID_REQUEST",
		"DestroyVersion":       "InvalidArgument INVALID_KEY_NAME",
		"SetMinDecryptVersion": "InvalidArgument INVALID_KEY_NAME",
		"AdoptKey":             "InvalidArgument INVALID_KEY_NAME",
		"SetRotationPolicy":    "InvalidArgument INVALID_KEY_NAME",
		"SetDisableAfter":      "InvalidArgument INVALID_KEY_NAME",
		// No fields to miss: answered for any caller.
		"ListKeys":          "OK",
		"Status":            "OK",
		"PutCredential":     "InvalidArgument INVALID_REQUEST",
		"RemoveCredential":  "InvalidArgument INVALID_REQUEST",
		"ListCredentials":   "OK",
		"RewrapCredentials": "OK",
		// No [[breakglass]] in this daemon's config: refused before the
		// request is read.
		"BreakglassRequest": "FailedPrecondition UNSUPPORTED",
		"BreakglassApprove": "FailedPrecondition UNSUPPORTED",
		"BreakglassDeny":    "FailedPrecondition UNSUPPORTED",
		"BreakglassRevoke":  "FailedPrecondition UNSUPPORTED",
		"BreakglassList":    "FailedPrecondition UNSUPPORTED",
	}
	svc := pb.File_keyward_v1_keyward_proto.Services().ByName("Keyward")
	methods := svc.Methods()
	for i := range methods.Len() {
		m := methods.Get(i)
		name := string(m.Name())
		want, ok := emptyWant[name]
		if !ok {
			t.Errorf("method %s has no expectation for an empty request: add one", name)
			continue
		}
		add("empty request: "+name, want, invoke(name, nil))
		// The same with every field present but zero-length on the wire.
		var zero []byte
		fields := m.Input().Fields()
		for j := range fields.Len() {
			f := fields.Get(j)
			if f.Kind() == protoreflect.StringKind || f.Kind() == protoreflect.BytesKind {
				zero = append(zero, pbBytes(f.Number(), "")...)
			} else if !f.IsMap() && !f.IsList() && f.Message() == nil {
				zero = append(zero, pbVarint(f.Number(), 0)...)
			}
		}
		if len(zero) > 0 {
			add("explicit zero fields: "+name, want, invoke(name, rawMsg(zero)))
		}
	}
	if len(emptyWant) != methods.Len() {
		t.Errorf("expectations for %d methods, the service has %d", len(emptyWant), methods.Len())
	}

	// ---- run ----
	stillServes := func() error {
		cx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		w, err := c.Wrap(cx, &pb.WrapRequest{Key: "hostile/a", Plaintext: []byte("still here"), Context: appCtx})
		if err != nil {
			return fmt.Errorf("wrap: %w", err)
		}
		u, err := c.Unwrap(cx, &pb.UnwrapRequest{Ciphertext: w.Ciphertext, Context: appCtx})
		if err != nil {
			return fmt.Errorf("unwrap: %w", err)
		}
		if string(u.Plaintext) != "still here" {
			return fmt.Errorf("unwrap returned %q", u.Plaintext)
		}
		return nil
	}
	t.Logf("%d hostile cases", len(cases))
	if len(cases) < 100 {
		t.Errorf("only %d cases; the suite promises at least 100", len(cases))
	}
	failed := 0
	for _, tc := range cases {
		ok := t.Run(tc.name, func(t *testing.T) {
			if got := tc.run(t); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
			if err := stillServes(); err != nil {
				t.Fatalf("daemon stopped serving: %v", err)
			}
		})
		if !ok {
			failed++
		}
	}
	// Daemon and client share this process, so the figures include the
	// client's 5 MiB and 100,000-item requests. Bounded means what is kept:
	// measured again after a GC has returned the garbage to the kernel.
	rss, hwm := vmRSS(t)
	runtime.GC()
	debug.FreeOSMemory()
	kept, _ := vmRSS(t)
	t.Logf("hostile: %d cases, %d failed; RSS %d MiB before, %d MiB after, %d MiB after a GC, process peak so far %d MiB",
		len(cases), failed, rss0>>10, rss>>10, kept>>10, hwm>>10)
	if kept > 100<<10 && !raceEnabled {
		t.Errorf("RSS after the hostile cases is %d MiB (after a GC), want under 100 MiB", kept>>10)
	}
}
