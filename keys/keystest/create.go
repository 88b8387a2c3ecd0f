package keystest

import (
	"strings"
	"testing"

	"github.com/keyward/keyward/keys"
)

// Long on purpose: a list of t.Run conformance cases, each a few lines, read top to bottom.
func testCreate(t *testing.T, be keys.Backend) {
	for _, typ := range keys.Types {
		t.Run(string(typ), func(t *testing.T) {
			name := newName(t)
			checkNewKey(t, createNamed(t, be, name, typ), name, typ)

			info, err := be.DescribeKey(t.Context(), name)
			must(t, err, "DescribeKey(%s)", name)
			checkNewKey(t, info, name, typ)

			list, err := be.ListKeys(t.Context())
			must(t, err, "ListKeys")
			found := false
			for _, k := range list {
				if k.Name == name {
					found = true
					checkNewKey(t, k, name, typ)
				}
			}
			if !found {
				t.Errorf("ListKeys (%d keys) does not list %s", len(list), name)
			}

			_, err = be.CreateKey(t.Context(), name, typ)
			wantErr(t, err, "CreateKey of an existing name", keys.ErrKeyExists)
			other := keys.AES256GCM
			if typ == other {
				other = keys.HMACSHA256
			}
			_, err = be.CreateKey(t.Context(), name, other)
			wantErr(t, err, "CreateKey of an existing name with another type", keys.ErrKeyExists, keys.ErrUnsupported)
		})
	}

	t.Run("longest_name", func(t *testing.T) {
		name := newName(t)
		name += strings.Repeat("z", keys.MaxNameLen-len(name))
		checkNewKey(t, createNamed(t, be, name, keys.AES256GCM), name, keys.AES256GCM)
	})

	t.Run("invalid_name", func(t *testing.T) {
		for _, tc := range []struct{ name, key string }{
			{"empty", ""},
			{"upper_case", "A"},
			{"dot_dot", "../x"},
			{"empty_segment", "a//b"},
			{"trailing_slash", "a/"},
			{"leading_slash", "/a"},
			{"leading_dot", "a/.b"},
			{"space", "a b"},
			{"nul", "a\x00b"},
			{"non_ascii", "cl\u00e9"},
			{"too_long", strings.Repeat("a", keys.MaxNameLen+1)},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := be.CreateKey(t.Context(), tc.key, keys.AES256GCM)
				wantErr(t, err, "CreateKey", keys.ErrInvalidName)
			})
		}
	})

	t.Run("unknown_type", func(t *testing.T) {
		for _, typ := range []keys.Type{"", "aes-128-gcm", "AES-256-GCM", "rsa-2048-pss"} {
			t.Run(string(typ), func(t *testing.T) {
				_, err := be.CreateKey(t.Context(), newName(t), typ)
				wantErr(t, err, "CreateKey", keys.ErrInvalidArgument)
			})
		}
	})

	t.Run("unknown_key", func(t *testing.T) {
		name := newName(t) // never created
		sig := make([]byte, 64)
		for _, tc := range []struct {
			name string
			call func(t *testing.T) error
		}{
			{"DescribeKey", func(t *testing.T) error { _, err := be.DescribeKey(t.Context(), name); return err }},
			{"RotateKey", func(t *testing.T) error { _, err := be.RotateKey(t.Context(), name); return err }},
			{"SetVersionState", func(t *testing.T) error {
				_, err := be.SetVersionState(t.Context(), name, 1, keys.Disabled)
				return err
			}},
			{"DestroyVersion", func(t *testing.T) error { _, err := be.DestroyVersion(t.Context(), name, 1); return err }},
			{"SetMinDecryptVersion", func(t *testing.T) error { _, err := be.SetMinDecryptVersion(t.Context(), name, 1); return err }},
			{"Wrap", func(t *testing.T) error { _, err := be.Wrap(t.Context(), name, []byte("x"), nil); return err }},
			{"Sign", func(t *testing.T) error { _, err := be.Sign(t.Context(), name, []byte("x")); return err }},
			{"Verify", func(t *testing.T) error { return be.Verify(t.Context(), name, 1, []byte("x"), sig) }},
			{"MAC", func(t *testing.T) error { _, err := be.MAC(t.Context(), name, []byte("x")); return err }},
			{"VerifyMAC", func(t *testing.T) error { return be.VerifyMAC(t.Context(), name, 1, []byte("x"), sig[:32]) }},
			{"PublicKey", func(t *testing.T) error { _, _, err := be.PublicKey(t.Context(), name, 0); return err }},
		} {
			t.Run(tc.name, func(t *testing.T) {
				wantErr(t, tc.call(t), tc.name+" of a key that does not exist", keys.ErrKeyNotFound)
			})
		}
	})
}

// checkNewKey checks the KeyInfo of a key just created.
func checkNewKey(t *testing.T, info keys.KeyInfo, name string, typ keys.Type) {
	t.Helper()
	if info.Name != name || info.Type != typ {
		t.Errorf("KeyInfo names %q of type %q, want %q of type %q", info.Name, info.Type, name, typ)
	}
	if info.MinDecryptVersion > 1 {
		t.Errorf("new key %s: MinDecryptVersion = %d, want 0 or 1", name, info.MinDecryptVersion)
	}
	if info.Created.IsZero() {
		t.Errorf("new key %s: Created is zero", name)
	}
	if info.Adopted {
		t.Errorf("new key %s: Adopted is set on a created key", name)
	}
	checkVersions(t, info, keys.Enabled)
}
