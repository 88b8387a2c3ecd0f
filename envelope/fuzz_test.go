package envelope_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/keyward/keyward/envelope"
	"github.com/keyward/keyward/keys"
)

// FuzzDecode: Decode never panics, every error is keys.ErrMalformed, and an
// accepted blob is canonical: Encode gives back the exact input bytes.
// The seed corpus is in testdata/fuzz/FuzzDecode.
func FuzzDecode(f *testing.F) {
	f.Add(raw(1, 1, "payments/db", 1, nonce12, tag))
	f.Add(raw(1, 2, name128, keys.MaxVersion, nonce32, append([]byte("ct"), tag...)))
	f.Add([]byte("KW"))
	f.Fuzz(func(t *testing.T, blob []byte) {
		in := bytes.Clone(blob)
		h, ct, err := envelope.Decode(blob)
		if !bytes.Equal(in, blob) {
			t.Fatal("Decode modified its input")
		}
		if err != nil {
			if !errors.Is(err, keys.ErrMalformed) {
				t.Fatalf("Decode err = %v, not keys.ErrMalformed", err)
			}
			return
		}
		if err := h.Validate(); err != nil {
			t.Fatalf("Decode accepted a header that Validate refuses: %v", err)
		}
		out, err := envelope.Encode(h, ct)
		if err != nil {
			t.Fatalf("Encode(Decode(blob)) err = %v", err)
		}
		if !bytes.Equal(out, blob) {
			t.Fatalf("Encode(Decode(%x)) = %x", blob, out)
		}
		back, err := envelope.DecodeText(envelope.EncodeText(blob))
		if err != nil || !bytes.Equal(back, blob) {
			t.Fatalf("text round trip: %v", err)
		}
	})
}

// FuzzText: DecodeText never panics, and what it accepts is canonical
// apart from the surrounding whitespace it allows.
func FuzzText(f *testing.F) {
	f.Add("S1cB\n")
	f.Add(" QR== ")
	f.Add("S1c\nB")
	f.Fuzz(func(t *testing.T, s string) {
		b, err := envelope.DecodeText(s)
		if err != nil {
			if !errors.Is(err, envelope.ErrBadText) && !errors.Is(err, envelope.ErrTooLarge) {
				t.Fatalf("DecodeText err = %v", err)
			}
			return
		}
		text := envelope.EncodeText(b)
		if strings.Trim(s, " \t\r\n") != text {
			t.Fatalf("DecodeText(%q) accepted a non-canonical form of %q", s, text)
		}
	})
}
