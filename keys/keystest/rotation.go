package keystest

import (
	"testing"

	"github.com/keyward/keyward/keys"
)

// Long on purpose: a list of t.Run conformance cases, each a few lines, read top to bottom.
func testRotation(t *testing.T, be keys.Backend) {
	pt := []byte("rotate me")
	c := keys.Context{"app": "rotation"}

	// twoVersions returns a key with versions 1 and 2 and a blob of each.
	twoVersions := func(t *testing.T) (name string, b1, b2 []byte) {
		t.Helper()
		name = create(t, be, keys.AES256GCM).Name
		b1 = wrap(t, be, name, pt, c, 1)
		rotate(t, be, name)
		b2 = wrap(t, be, name, pt, c, 2)
		return name, b1, b2
	}
	unwrapErr := func(t *testing.T, blob []byte, what string, want error) {
		t.Helper()
		_, err := be.Unwrap(t.Context(), blob, c)
		wantErr(t, err, what, want)
	}

	t.Run("rotate", func(t *testing.T) {
		name, b1, b2 := twoVersions(t)
		describe(t, be, name, keys.Enabled, keys.Enabled)
		unwrapOK(t, be, b2, c, name, 2, pt)
		unwrapOK(t, be, b1, c, name, 1, pt)
	})

	t.Run("disable_enable", func(t *testing.T) {
		name, b1, b2 := twoVersions(t)
		setState(t, be, name, 1, keys.Disabled)
		describe(t, be, name, keys.Disabled, keys.Enabled)
		unwrapErr(t, b1, "Unwrap of a disabled version's blob", keys.ErrVersionDisabled)
		unwrapOK(t, be, b2, c, name, 2, pt)
		wrap(t, be, name, pt, c, 2)

		setState(t, be, name, 1, keys.Enabled)
		describe(t, be, name, keys.Enabled, keys.Enabled)
		unwrapOK(t, be, b1, c, name, 1, pt)
	})

	t.Run("disable_newest", func(t *testing.T) {
		name, _, b2 := twoVersions(t)
		setState(t, be, name, 2, keys.Disabled)
		wrap(t, be, name, pt, c, 1) // the newest enabled version
		unwrapErr(t, b2, "Unwrap of a disabled version's blob", keys.ErrVersionDisabled)
		setState(t, be, name, 2, keys.Enabled)
		wrap(t, be, name, pt, c, 2)
	})

	t.Run("min_decrypt_version", func(t *testing.T) {
		name, b1, b2 := twoVersions(t)
		info, err := be.SetMinDecryptVersion(t.Context(), name, 2)
		must(t, err, "SetMinDecryptVersion(2)")
		if info.MinDecryptVersion != 2 {
			t.Errorf("SetMinDecryptVersion(2) returned MinDecryptVersion %d", info.MinDecryptVersion)
		}
		if info := describe(t, be, name, keys.Enabled, keys.Enabled); info.MinDecryptVersion != 2 {
			t.Errorf("after SetMinDecryptVersion(2), DescribeKey says %d", info.MinDecryptVersion)
		}
		unwrapErr(t, b1, "Unwrap below the minimum decrypt version", keys.ErrBelowMinVersion)
		unwrapOK(t, be, b2, c, name, 2, pt)

		_, err = be.SetMinDecryptVersion(t.Context(), name, 3)
		wantErr(t, err, "SetMinDecryptVersion above the newest version", keys.ErrInvalidArgument)
		if info := describe(t, be, name, keys.Enabled, keys.Enabled); info.MinDecryptVersion != 2 {
			t.Errorf("a refused SetMinDecryptVersion(3) changed the minimum to %d", info.MinDecryptVersion)
		}
	})

	t.Run("destroy", func(t *testing.T) {
		name, b1, b2 := twoVersions(t)
		destroy(t, be, name, 1)
		describe(t, be, name, keys.Destroyed, keys.Enabled)
		unwrapErr(t, b1, "Unwrap of a destroyed version's blob", keys.ErrVersionDestroyed)
		unwrapOK(t, be, b2, c, name, 2, pt)

		_, err := be.SetVersionState(t.Context(), name, 1, keys.Enabled)
		wantErr(t, err, "SetVersionState(enabled) of a destroyed version", keys.ErrVersionDestroyed)
		describe(t, be, name, keys.Destroyed, keys.Enabled)
		unwrapErr(t, b1, "Unwrap of a destroyed version's blob after trying to enable it", keys.ErrVersionDestroyed)
	})

	t.Run("destroy_newest", func(t *testing.T) {
		name, _, b2 := twoVersions(t)
		destroy(t, be, name, 2)
		describe(t, be, name, keys.Enabled, keys.Destroyed)
		wrap(t, be, name, pt, c, 1)
		unwrapErr(t, b2, "Unwrap of a destroyed version's blob", keys.ErrVersionDestroyed)

		rotate(t, be, name) // v3: numbers are never reused
		b3 := wrap(t, be, name, pt, c, 3)
		unwrapOK(t, be, b3, c, name, 3, pt)
	})

	t.Run("no_enabled_version", func(t *testing.T) {
		name := create(t, be, keys.AES256GCM).Name
		setState(t, be, name, 1, keys.Disabled)
		_, err := be.Wrap(t.Context(), name, pt, c)
		wantErr(t, err, "Wrap with every version disabled", keys.ErrNoEnabledVersion)
		setState(t, be, name, 1, keys.Enabled)
		wrap(t, be, name, pt, c, 1)
	})

	t.Run("bad_requests", func(t *testing.T) {
		name := create(t, be, keys.AES256GCM).Name
		for _, tc := range []struct {
			name string
			call func(t *testing.T) error
			want error
		}{
			{"SetVersionState_unknown_version", func(t *testing.T) error {
				_, err := be.SetVersionState(t.Context(), name, 2, keys.Disabled)
				return err
			}, keys.ErrKeyNotFound},
			{"SetVersionState_bad_state", func(t *testing.T) error {
				_, err := be.SetVersionState(t.Context(), name, 1, keys.State("paused"))
				return err
			}, keys.ErrInvalidArgument},
			{"DestroyVersion_unknown_version", func(t *testing.T) error {
				_, err := be.DestroyVersion(t.Context(), name, 2)
				return err
			}, keys.ErrKeyNotFound},
			{"SetMinDecryptVersion_above_newest", func(t *testing.T) error {
				_, err := be.SetMinDecryptVersion(t.Context(), name, 2)
				return err
			}, keys.ErrInvalidArgument},
		} {
			t.Run(tc.name, func(t *testing.T) {
				wantErr(t, tc.call(t), tc.name, tc.want)
			})
		}
		describe(t, be, name, keys.Enabled) // nothing changed
	})
}
