package keystest

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"testing"

	"github.com/keyward/keyward/keys"
)

func testWrongKeyType(t *testing.T, be keys.Backend) {
	// One key per type, made when a row first needs it.
	made := map[keys.Type]string{}
	keyOf := func(t *testing.T, typ keys.Type) string {
		t.Helper()
		if made[typ] == "" {
			made[typ] = create(t, be, typ).Name
		}
		return made[typ]
	}
	msg := []byte("message")
	for _, tc := range []struct {
		name string
		typ  keys.Type
		call func(t *testing.T, name string) error
	}{
		{"Wrap_hmac", keys.HMACSHA256, func(t *testing.T, name string) error {
			_, err := be.Wrap(t.Context(), name, msg, nil)
			return err
		}},
		{"Wrap_ecdsa", keys.ECDSAP256, func(t *testing.T, name string) error {
			_, err := be.Wrap(t.Context(), name, msg, nil)
			return err
		}},
		{"Sign_aes", keys.AES256GCM, func(t *testing.T, name string) error {
			_, err := be.Sign(t.Context(), name, msg)
			return err
		}},
		{"Sign_hmac", keys.HMACSHA256, func(t *testing.T, name string) error {
			_, err := be.Sign(t.Context(), name, msg)
			return err
		}},
		{"Verify_aes", keys.AES256GCM, func(t *testing.T, name string) error {
			return be.Verify(t.Context(), name, 1, msg, make([]byte, 64))
		}},
		{"MAC_ecdsa", keys.ECDSAP256, func(t *testing.T, name string) error {
			_, err := be.MAC(t.Context(), name, msg)
			return err
		}},
		{"MAC_aes", keys.AES256GCM, func(t *testing.T, name string) error {
			_, err := be.MAC(t.Context(), name, msg)
			return err
		}},
		{"VerifyMAC_ecdsa", keys.ECDSAP256, func(t *testing.T, name string) error {
			return be.VerifyMAC(t.Context(), name, 1, msg, make([]byte, 32))
		}},
		{"PublicKey_aes", keys.AES256GCM, func(t *testing.T, name string) error {
			_, _, err := be.PublicKey(t.Context(), name, 0)
			return err
		}},
		{"PublicKey_hmac", keys.HMACSHA256, func(t *testing.T, name string) error {
			_, _, err := be.PublicKey(t.Context(), name, 0)
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantErr(t, tc.call(t, keyOf(t, tc.typ)), tc.name, keys.ErrWrongKeyType)
		})
	}
}

// Long on purpose: a list of t.Run conformance cases, each a few lines, read top to bottom.
func testMAC(t *testing.T, be keys.Backend) {
	name := create(t, be, keys.HMACSHA256).Name
	msg := []byte("authenticate me")

	mac := func(t *testing.T, wantVersion uint32) []byte {
		t.Helper()
		s, err := be.MAC(t.Context(), name, msg)
		must(t, err, "MAC(%s)", name)
		if s.Name != name || s.Version != wantVersion || len(s.Bytes) != sha256.Size {
			t.Fatalf("MAC gave %s v%d, %d bytes; want %s v%d, %d bytes", s.Name, s.Version, len(s.Bytes), name, wantVersion, sha256.Size)
		}
		return s.Bytes
	}
	verifyErr := func(t *testing.T, v uint32, m, tag []byte, what string, want error) {
		t.Helper()
		wantErr(t, be.VerifyMAC(t.Context(), name, v, m, tag), what, want)
	}

	m1 := mac(t, 1)

	t.Run("verify", func(t *testing.T) {
		must(t, be.VerifyMAC(t.Context(), name, 1, msg, m1), "VerifyMAC of a fresh MAC")
		if again := mac(t, 1); !bytes.Equal(again, m1) {
			t.Error("two MACs of the same message by one version differ")
		}
		// HMAC pads keys with zeros, so this also stands for an empty key.
		zero := hmac.New(sha256.New, make([]byte, 32))
		zero.Write(msg)
		if bytes.Equal(zero.Sum(nil), m1) {
			t.Error("the MAC equals HMAC-SHA256 under an all-zero key")
		}
	})

	t.Run("bad_mac", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			m, tag []byte
		}{
			{"wrong_message", []byte("authenticate m3"), m1},
			{"empty_message", []byte{}, m1},
			{"flipped_first_byte", msg, flip(m1, 0)},
			{"flipped_last_byte", msg, flip(m1, len(m1)-1)},
			{"short", msg, m1[:len(m1)-1]},
			{"long", msg, append(bytes.Clone(m1), 0)},
		} {
			t.Run(tc.name, func(t *testing.T) {
				verifyErr(t, 1, tc.m, tc.tag, "VerifyMAC", keys.ErrInvalidSignature)
			})
		}
	})

	t.Run("unknown_version", func(t *testing.T) {
		verifyErr(t, 9, msg, m1, "VerifyMAC with a version that does not exist", keys.ErrKeyNotFound)
	})

	t.Run("rotation", func(t *testing.T) {
		name := create(t, be, keys.HMACSHA256).Name
		old, err := be.MAC(t.Context(), name, msg)
		must(t, err, "MAC")
		rotate(t, be, name)
		cur, err := be.MAC(t.Context(), name, msg)
		must(t, err, "MAC after rotation")
		if cur.Version != 2 {
			t.Errorf("MAC after rotation used v%d, want v2", cur.Version)
		}
		if bytes.Equal(cur.Bytes, old.Bytes) {
			t.Error("v1 and v2 give the same MAC: rotation did not make a new key")
		}
		must(t, be.VerifyMAC(t.Context(), name, 1, msg, old.Bytes), "VerifyMAC of a v1 MAC after rotation")
		must(t, be.VerifyMAC(t.Context(), name, 2, msg, cur.Bytes), "VerifyMAC of a v2 MAC")
		wantErr(t, be.VerifyMAC(t.Context(), name, 2, msg, old.Bytes), "VerifyMAC of a v1 MAC as v2", keys.ErrInvalidSignature)

		setState(t, be, name, 1, keys.Disabled)
		wantErr(t, be.VerifyMAC(t.Context(), name, 1, msg, old.Bytes), "VerifyMAC with a disabled version", keys.ErrVersionDisabled)
		setState(t, be, name, 1, keys.Enabled)
		must(t, be.VerifyMAC(t.Context(), name, 1, msg, old.Bytes), "VerifyMAC after enabling v1 again")

		destroy(t, be, name, 1)
		wantErr(t, be.VerifyMAC(t.Context(), name, 1, msg, old.Bytes), "VerifyMAC with a destroyed version", keys.ErrVersionDestroyed)
		must(t, be.VerifyMAC(t.Context(), name, 2, msg, cur.Bytes), "VerifyMAC of a v2 MAC after destroying v1")

		rotate(t, be, name)
		v3, err := be.MAC(t.Context(), name, msg)
		must(t, err, "MAC after the second rotation")
		if v3.Version != 3 {
			t.Errorf("MAC after the second rotation used v%d, want v3", v3.Version)
		}
		_, err = be.SetMinDecryptVersion(t.Context(), name, 3)
		must(t, err, "SetMinDecryptVersion(3)")
		wantErr(t, be.VerifyMAC(t.Context(), name, 2, msg, cur.Bytes), "VerifyMAC below the minimum version", keys.ErrBelowMinVersion)
		must(t, be.VerifyMAC(t.Context(), name, 3, msg, v3.Bytes), "VerifyMAC at the minimum version")
	})
}
