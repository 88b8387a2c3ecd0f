package keystest

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/keyward/keyward/envelope"
	"github.com/keyward/keyward/keys"
)

// Long on purpose: a list of t.Run conformance cases, each a few lines, read top to bottom.
func testWrap(t *testing.T, be keys.Backend) {
	key := create(t, be, keys.AES256GCM).Name
	pt := []byte("the quick brown fox jumps over the lazy dog")
	c := keys.Context{"tenant": "acme", "purpose": "db-password"}

	t.Run("round_trip", func(t *testing.T) {
		for _, tc := range []struct {
			name           string
			pt             []byte
			wrapC, unwrapC keys.Context
		}{
			{"context", pt, c, keys.Context{"purpose": "db-password", "tenant": "acme"}},
			{"nil_context", pt, nil, nil},
			{"nil_is_empty_context", pt, nil, keys.Context{}},
			{"empty_is_nil_context", pt, keys.Context{}, nil},
			{"empty_value", pt, keys.Context{"k": ""}, keys.Context{"k": ""}},
			{"empty_plaintext", []byte{}, c, c},
			{"nil_plaintext", nil, c, c},
			{"max_plaintext", bytes.Repeat([]byte{0xa5}, keys.MaxPlaintext), c, c},
		} {
			t.Run(tc.name, func(t *testing.T) {
				blob := wrap(t, be, key, tc.pt, tc.wrapC, 1)
				unwrapOK(t, be, blob, tc.unwrapC, key, 1, tc.pt)
			})
		}
	})

	t.Run("plaintext_too_large", func(t *testing.T) {
		_, err := be.Wrap(t.Context(), key, make([]byte, keys.MaxPlaintext+1), c)
		wantErr(t, err, "Wrap of keys.MaxPlaintext+1 bytes", keys.ErrInvalidArgument)
	})

	t.Run("fresh_nonce", func(t *testing.T) {
		a, b := wrap(t, be, key, pt, c, 1), wrap(t, be, key, pt, c, 1)
		if bytes.Equal(a, b) {
			t.Fatal("two wraps of the same plaintext gave the same blob")
		}
		ha, _ := decode(t, a)
		hb, _ := decode(t, b)
		if bytes.Equal(ha.Nonce, hb.Nonce) {
			t.Error("two wraps used the same nonce")
		}
	})

	blob := wrap(t, be, key, pt, c, 1)

	t.Run("wrong_context", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			c    keys.Context
		}{
			{"changed_value", keys.Context{"tenant": "evil", "purpose": "db-password"}},
			{"changed_key", keys.Context{"tenant": "acme", "purpose_": "db-password"}},
			{"extra_pair", keys.Context{"tenant": "acme", "purpose": "db-password", "x": "y"}},
			{"missing_pair", keys.Context{"tenant": "acme"}},
			{"nil", nil},
			// Pairs must not run together: "ab"="c" is not "a"="bc".
			{"shifted_boundary", keys.Context{"tenantacme": "", "purpose": "db-password"}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := be.Unwrap(t.Context(), blob, tc.c)
				wantErr(t, err, "Unwrap under another context", keys.ErrDecrypt)
			})
		}
	})

	t.Run("tampered", func(t *testing.T) {
		_, ct := decode(t, blob)
		ctStart := len(blob) - len(ct)
		for _, tc := range []struct {
			name string
			blob []byte
			want error
		}{
			{"tag_byte", flip(blob, len(blob)-1), keys.ErrDecrypt},
			{"ciphertext_byte", flip(blob, ctStart), keys.ErrDecrypt},
			{"nonce_byte", reencode(t, blob, func(h *envelope.Header) { h.Nonce[0] ^= 1 }), keys.ErrDecrypt},
			{"appended_byte", append(bytes.Clone(blob), 0), keys.ErrDecrypt},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := be.Unwrap(t.Context(), tc.blob, c)
				wantErr(t, err, "Unwrap of a tampered blob", tc.want)
			})
		}
	})

	t.Run("truncated", func(t *testing.T) {
		// Every prefix, so that each field is cut at each byte.
		for n := range len(blob) {
			err := unwrapNoPanic(t, be, blob[:n:n], c)
			if err == nil {
				t.Errorf("Unwrap of the first %d of %d bytes succeeded", n, len(blob))
				continue
			}
			wantErr(t, err, fmt.Sprintf("Unwrap of the first %d of %d bytes", n, len(blob)), keys.ErrMalformed, keys.ErrDecrypt)
		}
	})

	t.Run("garbage", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			blob []byte
		}{
			{"nil", nil},
			{"text_form", []byte(envelope.EncodeText(blob))},
			{"bad_magic", flip(blob, 0)},
			{"bad_format", flip(blob, 2)},
			{"too_large", make([]byte, keys.MaxBlob+1)},
		} {
			t.Run(tc.name, func(t *testing.T) {
				err := unwrapNoPanic(t, be, tc.blob, c)
				wantErr(t, err, "Unwrap", keys.ErrMalformed, keys.ErrInvalidArgument)
			})
		}
	})

	t.Run("other_alg", func(t *testing.T) {
		// A blob sealed for another kind of device must be refused, not
		// opened with whatever this backend does for its own alg.
		other := reencode(t, blob, func(h *envelope.Header) {
			if h.Alg == envelope.AlgPKCS11GCM {
				h.Alg = envelope.AlgTPMHMACGCM
			} else {
				h.Alg = envelope.AlgPKCS11GCM
			}
			h.Nonce = make([]byte, h.Alg.NonceSize())
		})
		_, err := be.Unwrap(t.Context(), other, c)
		wantErr(t, err, "Unwrap of a blob with the other alg", keys.ErrMalformed, keys.ErrDecrypt, keys.ErrUnsupported)
	})

	t.Run("other_key_name", func(t *testing.T) {
		other := create(t, be, keys.AES256GCM).Name
		_, err := be.Unwrap(t.Context(), reencode(t, blob, func(h *envelope.Header) { h.Name = other }), c)
		wantErr(t, err, "Unwrap of a blob renamed to another key", keys.ErrDecrypt)
	})

	t.Run("unknown_key_name", func(t *testing.T) {
		missing := newName(t)
		_, err := be.Unwrap(t.Context(), reencode(t, blob, func(h *envelope.Header) { h.Name = missing }), c)
		wantErr(t, err, "Unwrap of a blob naming a key that does not exist", keys.ErrKeyNotFound)
	})

	t.Run("unknown_version", func(t *testing.T) {
		for _, v := range []uint32{2, 99, keys.MaxVersion} {
			_, err := be.Unwrap(t.Context(), reencode(t, blob, func(h *envelope.Header) { h.Version = v }), c)
			wantErr(t, err, fmt.Sprintf("Unwrap of a blob naming v%d of a one-version key", v), keys.ErrKeyNotFound)
		}
	})

	t.Run("other_version", func(t *testing.T) {
		k := create(t, be, keys.AES256GCM).Name
		b1 := wrap(t, be, k, pt, c, 1)
		rotate(t, be, k)
		b2 := wrap(t, be, k, pt, c, 2)
		for _, tc := range []struct {
			name string
			blob []byte
			to   uint32
		}{
			{"v1_as_v2", b1, 2},
			{"v2_as_v1", b2, 1},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := be.Unwrap(t.Context(), reencode(t, tc.blob, func(h *envelope.Header) { h.Version = tc.to }), c)
				wantErr(t, err, "Unwrap of a blob relabelled to another version", keys.ErrDecrypt)
			})
		}
	})
}

// unwrapNoPanic unwraps hostile bytes and turns a panic into an error that
// matches no sentinel, so that the failure names the input.
func unwrapNoPanic(t *testing.T, be keys.Backend, blob []byte, c keys.Context) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("Unwrap panicked: %v", r)
		}
	}()
	_, err = be.Unwrap(t.Context(), blob, c)
	return err
}
