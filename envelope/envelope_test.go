package envelope_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/keyward/keyward/envelope"
	"github.com/keyward/keyward/keys"
)

// raw builds blob bytes field by field without any validation, so tests can
// write what Encode refuses to.
func raw(format, alg byte, name string, version uint32, nonce, ct []byte) []byte {
	b := []byte(envelope.Magic)
	b = append(b, format, alg, byte(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint32(b, version)
	b = append(b, byte(len(nonce)))
	b = append(b, nonce...)
	return append(b, ct...)
}

var (
	nonce12 = bytes.Repeat([]byte{0x12}, 12)
	nonce32 = bytes.Repeat([]byte{0x32}, 32)
	tag     = bytes.Repeat([]byte{0x7a}, envelope.TagSize)
	name128 = strings.Repeat("a/", 63) + "ab" // 128 bytes, the limit
)

func TestRoundTrip(t *testing.T) {
	if len(name128) != keys.MaxNameLen {
		t.Fatalf("name128 is %d bytes", len(name128))
	}
	tests := []struct {
		name string
		h    envelope.Header
		ct   []byte
	}{
		{"pkcs11 v1", envelope.Header{Alg: envelope.AlgPKCS11GCM, Name: "payments/db", Version: 1, Nonce: nonce12}, tag},
		{"tpm v1", envelope.Header{Alg: envelope.AlgTPMHMACGCM, Name: "payments/db", Version: 1, Nonce: nonce32}, tag},
		{"pkcs11 max version", envelope.Header{Alg: envelope.AlgPKCS11GCM, Name: "k", Version: keys.MaxVersion, Nonce: nonce12}, append([]byte("ciphertext"), tag...)},
		{"tpm max version", envelope.Header{Alg: envelope.AlgTPMHMACGCM, Name: "k", Version: keys.MaxVersion, Nonce: nonce32}, append([]byte("ciphertext"), tag...)},
		{"pkcs11 name 128", envelope.Header{Alg: envelope.AlgPKCS11GCM, Name: name128, Version: 7, Nonce: nonce12}, tag},
		{"tpm name 128", envelope.Header{Alg: envelope.AlgTPMHMACGCM, Name: name128, Version: 7, Nonce: nonce32}, tag},
		{"name 1 byte", envelope.Header{Alg: envelope.AlgPKCS11GCM, Name: "0", Version: 2, Nonce: nonce12}, tag},
		{"name with . _ -", envelope.Header{Alg: envelope.AlgPKCS11GCM, Name: "team-a/svc_1/db.key", Version: 3, Nonce: nonce12}, tag},
		{"largest ciphertext", envelope.Header{Alg: envelope.AlgTPMHMACGCM, Name: name128, Version: 1, Nonce: nonce32},
			make([]byte, keys.MaxBlob-(5+128+4+1+32))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			blob, err := envelope.Encode(tt.h, tt.ct)
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			hdr, err := tt.h.Marshal()
			if err != nil {
				t.Fatalf("Marshal: %v", err)
			}
			if !bytes.Equal(blob, append(hdr, tt.ct...)) {
				t.Fatalf("Encode is not Marshal || ciphertext")
			}
			want := raw(envelope.FormatV1, byte(tt.h.Alg), tt.h.Name, tt.h.Version, tt.h.Nonce, tt.ct)
			if !bytes.Equal(blob, want) {
				t.Fatalf("Encode = %x, want %x", blob, want)
			}
			h, ct, err := envelope.Decode(blob)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if h.Alg != tt.h.Alg || h.Name != tt.h.Name || h.Version != tt.h.Version || !bytes.Equal(h.Nonce, tt.h.Nonce) {
				t.Errorf("Decode header = %+v, want %+v", h, tt.h)
			}
			if !bytes.Equal(ct, tt.ct) {
				t.Errorf("Decode ciphertext differs")
			}
			// Text form round trip, with the whitespace a file or terminal adds.
			back, err := envelope.DecodeText(" \t" + envelope.EncodeText(blob) + "\r\n")
			if err != nil || !bytes.Equal(back, blob) {
				t.Errorf("DecodeText(EncodeText) = %v, %v", len(back), err)
			}
		})
	}
}

func TestDecodeMalformed(t *testing.T) {
	valid := raw(1, 1, "payments/db", 3, nonce12, tag)
	tests := []struct {
		name    string
		blob    []byte
		wantErr error
	}{
		{"nil", nil, envelope.ErrTruncated},
		{"empty", []byte{}, envelope.ErrTruncated},
		{"K", []byte("K"), envelope.ErrTruncated},
		{"magic only", []byte("KW"), envelope.ErrTruncated},
		{"magic and format", []byte("KW\x01"), envelope.ErrTruncated},
		{"no name length", []byte("KW\x01\x01"), envelope.ErrTruncated},
		{"bad magic KX", append([]byte("KX"), valid[2:]...), envelope.ErrBadMagic},
		{"bad magic lower", append([]byte("kw"), valid[2:]...), envelope.ErrBadMagic},
		{"bad magic 1 byte", []byte("X"), envelope.ErrBadMagic},
		{"format 0", raw(0, 1, "payments/db", 3, nonce12, tag), envelope.ErrUnknownFormat},
		{"format 2", raw(2, 1, "payments/db", 3, nonce12, tag), envelope.ErrUnknownFormat},
		{"format 2 short", []byte("KW\x02"), envelope.ErrUnknownFormat},
		{"alg 0", raw(1, 0, "payments/db", 3, nonce12, tag), envelope.ErrUnknownAlg},
		{"alg 3", raw(1, 3, "payments/db", 3, nonce12, tag), envelope.ErrUnknownAlg},
		{"alg 255", raw(1, 255, "payments/db", 3, nonce32, tag), envelope.ErrUnknownAlg},
		{"alg 3 short", []byte("KW\x01\x03"), envelope.ErrUnknownAlg},
		{"name length past end", append([]byte("KW\x01\x01\x40"), "payments/db"...), envelope.ErrTruncated},
		{"name length 255, nothing after", []byte("KW\x01\x01\xff"), envelope.ErrTruncated},
		{"name empty", raw(1, 1, "", 3, nonce12, tag), envelope.ErrBadName},
		{"name A", raw(1, 1, "A", 3, nonce12, tag), envelope.ErrBadName},
		{"name ../x", raw(1, 1, "../x", 3, nonce12, tag), envelope.ErrBadName},
		{"name a//b", raw(1, 1, "a//b", 3, nonce12, tag), envelope.ErrBadName},
		{"name trailing slash", raw(1, 1, "a/", 3, nonce12, tag), envelope.ErrBadName},
		{"name NUL", raw(1, 1, "a\x00b", 3, nonce12, tag), envelope.ErrBadName},
		{"name non-ASCII", raw(1, 1, "cl\xc3\xa9", 3, nonce12, tag), envelope.ErrBadName},
		{"name 129 bytes", raw(1, 1, name128+"a", 3, nonce12, tag), envelope.ErrBadName},
		{"name 255 bytes", raw(1, 1, strings.Repeat("a", 255), 3, nonce12, tag), envelope.ErrBadName},
		{"version 0", raw(1, 1, "payments/db", 0, nonce12, tag), envelope.ErrBadVersion},
		{"version MaxVersion+1", raw(1, 1, "payments/db", keys.MaxVersion+1, nonce12, tag), envelope.ErrBadVersion},
		{"version 0xffffffff", raw(1, 2, "payments/db", 0xffffffff, nonce32, tag), envelope.ErrBadVersion},
		{"version cut", []byte("KW\x01\x01\x01k\x00\x00\x01"), envelope.ErrTruncated},
		{"nonce length missing", []byte("KW\x01\x01\x01k\x00\x00\x00\x01"), envelope.ErrTruncated},
		{"nonce 11 for alg 1", raw(1, 1, "payments/db", 3, nonce12[:11], tag), envelope.ErrBadNonce},
		{"nonce 32 for alg 1", raw(1, 1, "payments/db", 3, nonce32, tag), envelope.ErrBadNonce},
		{"nonce 12 for alg 2", raw(1, 2, "payments/db", 3, nonce12, tag), envelope.ErrBadNonce},
		{"nonce 0 for alg 2", raw(1, 2, "payments/db", 3, nil, tag), envelope.ErrBadNonce},
		{"nonce cut", raw(1, 2, "payments/db", 3, nonce32, nil)[:len(raw(1, 2, "payments/db", 3, nonce32, nil))-1], envelope.ErrTruncated},
		{"no ciphertext", raw(1, 1, "payments/db", 3, nonce12, nil), envelope.ErrTruncated},
		{"ciphertext 15 bytes", raw(1, 1, "payments/db", 3, nonce12, tag[:15]), envelope.ErrTruncated},
		{"oversized", raw(1, 1, "payments/db", 3, nonce12, make([]byte, keys.MaxBlob)), envelope.ErrTooLarge},
		{"oversized by 1", append(bytes.Clone(valid), make([]byte, keys.MaxBlob-len(valid)+1)...), envelope.ErrTooLarge},
		// Size is checked before anything else.
		{"oversized garbage", bytes.Repeat([]byte("X"), keys.MaxBlob+1), envelope.ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, ct, err := envelope.Decode(tt.blob)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Decode err = %v, want %v", err, tt.wantErr)
			}
			if !errors.Is(err, keys.ErrMalformed) {
				t.Errorf("Decode err = %v, does not match keys.ErrMalformed", err)
			}
			for _, other := range sentinels {
				if other != tt.wantErr && errors.Is(err, other) {
					t.Errorf("Decode err = %v also matches %v", err, other)
				}
			}
			if ct != nil || h.Name != "" || h.Nonce != nil || h.Version != 0 || h.Alg != 0 {
				t.Errorf("Decode returned data with an error: %+v, %d bytes", h, len(ct))
			}
		})
	}
}

// Every proper prefix of a valid blob is truncated, whatever field it ends in.
func TestDecodePrefixes(t *testing.T) {
	for _, h := range []envelope.Header{
		{Alg: envelope.AlgPKCS11GCM, Name: "a/b", Version: 1, Nonce: nonce12},
		{Alg: envelope.AlgTPMHMACGCM, Name: name128, Version: keys.MaxVersion, Nonce: nonce32},
	} {
		blob, err := envelope.Encode(h, append([]byte("xyz"), tag...))
		if err != nil {
			t.Fatal(err)
		}
		for n := range len(blob) - 3 {
			if _, _, err := envelope.Decode(blob[:n]); !errors.Is(err, envelope.ErrTruncated) {
				t.Errorf("Decode(blob[:%d]) err = %v, want ErrTruncated", n, err)
			}
		}
	}
}

var sentinels = []error{
	envelope.ErrBadMagic, envelope.ErrUnknownFormat, envelope.ErrUnknownAlg, envelope.ErrTruncated,
	envelope.ErrBadName, envelope.ErrBadVersion, envelope.ErrBadNonce, envelope.ErrTooLarge, envelope.ErrBadText,
}

func TestSentinels(t *testing.T) {
	for i, a := range sentinels {
		if !errors.Is(a, keys.ErrMalformed) {
			t.Errorf("%v does not match keys.ErrMalformed", a)
		}
		for j, b := range sentinels {
			if got := errors.Is(a, b); got != (i == j) {
				t.Errorf("errors.Is(%v, %v) = %v", a, b, got)
			}
		}
		for _, k := range []error{keys.ErrDecrypt, keys.ErrInvalidArgument, keys.ErrKeyNotFound} {
			if errors.Is(a, k) {
				t.Errorf("%v matches %v", a, k)
			}
		}
		if got := errors.Is(a, keys.ErrInvalidName); got != (a == envelope.ErrBadName) {
			t.Errorf("errors.Is(%v, keys.ErrInvalidName) = %v", a, got)
		}
	}
	if errors.Is(keys.ErrMalformed, envelope.ErrTruncated) {
		t.Errorf("keys.ErrMalformed matches ErrTruncated")
	}
}

// Error strings carry neither blob bytes nor an invalid name.
func TestErrorHygiene(t *testing.T) {
	const secret = "SECRET"
	tests := []struct {
		name string
		blob []byte
	}{
		{"bad name", raw(1, 1, "x/"+secret+"\n", 1, nonce12, tag)},
		{"bad magic", append([]byte(secret), raw(1, 1, "a", 1, nonce12, tag)...)},
		{"bad nonce", raw(1, 1, "a", 1, []byte(secret), tag)},
		{"short ciphertext", raw(1, 1, "a", 1, nonce12, []byte(secret))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := envelope.Decode(tt.blob)
			if err == nil {
				t.Fatal("Decode succeeded")
			}
			if msg := err.Error(); strings.Contains(msg, secret) || strings.Contains(msg, "\n") || !strings.Contains(msg, "envelope") {
				t.Errorf("error %q leaks input or lacks context", msg)
			}
		})
	}
	h := envelope.Header{Alg: envelope.AlgPKCS11GCM, Name: "x/" + secret, Version: 1, Nonce: nonce12}
	if err := h.Validate(); err == nil || strings.Contains(err.Error(), secret) {
		t.Errorf("Validate err = %v", err)
	}
	if _, err := envelope.DecodeText("QUJD" + secret + "!"); err == nil || strings.Contains(err.Error(), secret) {
		t.Errorf("DecodeText err = %v", err)
	}
}

func TestHeaderValidate(t *testing.T) {
	ok := envelope.Header{Alg: envelope.AlgPKCS11GCM, Name: "payments/db", Version: 1, Nonce: nonce12}
	with := func(f func(*envelope.Header)) envelope.Header { h := ok; f(&h); return h }
	tests := []struct {
		name    string
		h       envelope.Header
		wantErr error
	}{
		{"ok pkcs11", ok, nil},
		{"ok tpm", with(func(h *envelope.Header) { h.Alg, h.Nonce = envelope.AlgTPMHMACGCM, nonce32 }), nil},
		{"ok max", with(func(h *envelope.Header) { h.Name, h.Version = name128, keys.MaxVersion }), nil},
		{"zero header", envelope.Header{}, envelope.ErrUnknownAlg},
		{"alg 0", with(func(h *envelope.Header) { h.Alg = 0 }), envelope.ErrUnknownAlg},
		{"alg 3", with(func(h *envelope.Header) { h.Alg = 3 }), envelope.ErrUnknownAlg},
		{"empty name", with(func(h *envelope.Header) { h.Name = "" }), envelope.ErrBadName},
		{"name A", with(func(h *envelope.Header) { h.Name = "A" }), keys.ErrInvalidName},
		{"name ../x", with(func(h *envelope.Header) { h.Name = "../x" }), envelope.ErrBadName},
		{"name a//b", with(func(h *envelope.Header) { h.Name = "a//b" }), envelope.ErrBadName},
		{"name 129", with(func(h *envelope.Header) { h.Name = name128 + "a" }), envelope.ErrBadName},
		{"name 300", with(func(h *envelope.Header) { h.Name = strings.Repeat("a", 300) }), envelope.ErrBadName},
		{"version 0", with(func(h *envelope.Header) { h.Version = 0 }), envelope.ErrBadVersion},
		{"version over max", with(func(h *envelope.Header) { h.Version = keys.MaxVersion + 1 }), envelope.ErrBadVersion},
		{"nonce nil", with(func(h *envelope.Header) { h.Nonce = nil }), envelope.ErrBadNonce},
		{"nonce 11", with(func(h *envelope.Header) { h.Nonce = nonce12[:11] }), envelope.ErrBadNonce},
		{"nonce 32 for alg 1", with(func(h *envelope.Header) { h.Nonce = nonce32 }), envelope.ErrBadNonce},
		{"nonce 12 for alg 2", with(func(h *envelope.Header) { h.Alg = envelope.AlgTPMHMACGCM }), envelope.ErrBadNonce},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.h.Validate()
			if !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
				t.Fatalf("Validate err = %v, want %v", err, tt.wantErr)
			}
			// Marshal, AAD and Encode refuse exactly what Validate refuses.
			if _, err := tt.h.Marshal(); !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
				t.Errorf("Marshal err = %v, want %v", err, tt.wantErr)
			}
			if _, err := tt.h.AAD(nil); !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
				t.Errorf("AAD err = %v, want %v", err, tt.wantErr)
			}
			if _, err := envelope.Encode(tt.h, tag); !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
				t.Errorf("Encode err = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestEncodeCiphertext(t *testing.T) {
	h := envelope.Header{Alg: envelope.AlgTPMHMACGCM, Name: name128, Version: 1, Nonce: nonce32}
	hdr, err := h.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		ctLen   int
		wantErr error
	}{
		{"nil", 0, envelope.ErrTruncated},
		{"15 bytes", 15, envelope.ErrTruncated},
		{"tag only", 16, nil},
		{"fills MaxBlob", keys.MaxBlob - len(hdr), nil},
		{"one over MaxBlob", keys.MaxBlob - len(hdr) + 1, envelope.ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			blob, err := envelope.Encode(h, make([]byte, tt.ctLen))
			if !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
				t.Fatalf("Encode err = %v, want %v", err, tt.wantErr)
			}
			if err == nil {
				if _, _, err := envelope.Decode(blob); err != nil {
					t.Errorf("Decode(Encode) err = %v", err)
				}
			}
		})
	}
}

func TestAAD(t *testing.T) {
	h := envelope.Header{Alg: envelope.AlgPKCS11GCM, Name: "payments/db", Version: 9, Nonce: nonce12}
	hdr, err := h.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	c := keys.Context{"tenant": "t1", "purpose": "db"}
	aad, err := h.AAD(c)
	if err != nil {
		t.Fatal(err)
	}
	if want := append(bytes.Clone(hdr), envelope.CanonicalContext(c)...); !bytes.Equal(aad, want) {
		t.Errorf("AAD = %x, want %x", aad, want)
	}
	if aad, err := h.AAD(nil); err != nil || !bytes.Equal(aad, hdr) {
		t.Errorf("AAD(nil) = %x, %v; want the header bytes", aad, err)
	}

	big := keys.Context{}
	for i := range keys.MaxContext + 1 {
		big[strings.Repeat("k", i+1)] = "v"
	}
	bad := []struct {
		name string
		c    keys.Context
	}{
		{"empty key", keys.Context{"": "v"}},
		{"long key", keys.Context{strings.Repeat("k", keys.MaxContextKV+1): "v"}},
		{"long value", keys.Context{"k": strings.Repeat("v", keys.MaxContextKV+1)}},
		{"too many pairs", big},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := h.AAD(tt.c); !errors.Is(err, keys.ErrInvalidArgument) {
				t.Errorf("AAD err = %v, want keys.ErrInvalidArgument", err)
			}
		})
	}
}

func TestDecodeText(t *testing.T) {
	blob := raw(1, 1, "payments/db", 3, nonce12, tag)
	text := envelope.EncodeText(blob)
	tests := []struct {
		name    string
		s       string
		wantErr error
	}{
		{"plain", text, nil},
		{"trailing newline", text + "\n", nil},
		{"crlf and spaces", "  \t" + text + " \r\n", nil},
		{"empty", "", envelope.ErrBadText},
		{"only whitespace", " \n\t", envelope.ErrBadText},
		{"inner newline", text[:8] + "\n" + text[8:], envelope.ErrBadText},
		{"inner cr", text[:8] + "\r" + text[8:], envelope.ErrBadText},
		{"inner space", text[:8] + " " + text[8:], envelope.ErrBadText},
		{"url alphabet", strings.NewReplacer("+", "-", "/", "_").Replace(envelope.EncodeText([]byte{0xfb, 0xff, 0xbf})), envelope.ErrBadText},
		{"no padding", strings.TrimRight(envelope.EncodeText([]byte("ab")), "="), envelope.ErrBadText},
		{"non-canonical padding bits", "QR==", envelope.ErrBadText},
		{"junk after", text + "!", envelope.ErrBadText},
		{"non-ASCII space", "\u00a0" + text, envelope.ErrBadText},
		{"vertical tab", "\v" + text, envelope.ErrBadText},
		{"NUL", text + "\x00", envelope.ErrBadText},
		{"too large", envelope.EncodeText(make([]byte, keys.MaxBlob+1)), envelope.ErrTooLarge},
		{"max size", envelope.EncodeText(make([]byte, keys.MaxBlob)), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := envelope.DecodeText(tt.s)
			if !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
				t.Fatalf("DecodeText err = %v, want %v", err, tt.wantErr)
			}
			if err != nil && !errors.Is(err, keys.ErrMalformed) {
				t.Errorf("DecodeText err = %v, does not match keys.ErrMalformed", err)
			}
			if tt.name == "plain" && !bytes.Equal(b, blob) {
				t.Errorf("DecodeText = %x, want %x", b, blob)
			}
		})
	}
	if got := envelope.EncodeText([]byte("KW\x01")); got != "S1cB" {
		t.Errorf("EncodeText = %q", got)
	}
}

func TestAlgNonceSize(t *testing.T) {
	for a, want := range map[envelope.Alg]int{0: 0, envelope.AlgPKCS11GCM: 12, envelope.AlgTPMHMACGCM: 32, 3: 0, 255: 0} {
		if got := a.NonceSize(); got != want {
			t.Errorf("Alg(%d).NonceSize() = %d, want %d", a, got, want)
		}
	}
}
