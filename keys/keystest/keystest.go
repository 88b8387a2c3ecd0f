// Package keystest is the conformance suite every keys.Backend passes
// (DEVELOPERS.md, "Every backend passes keys/keystest"): the same cases run on SoftHSM2, swtpm and the TPM simulator,
// so a behaviour the daemon relies on is written down once, here.
//
// A backend test calls Run with a constructor:
//
//	func TestConformance(t *testing.T) {
//		keystest.Run(t, func(t *testing.T) keys.Backend { return newTestToken(t) })
//	}
//
// The suite creates keys with unique names (derived from the test name plus a
// random suffix), never deletes them and never closes the backend itself
// (only a backend's Hooks.Reopen, where given, closes and reopens it), so
// one backend may serve several groups, or even several test binaries
// sharing a token. Grant cases (a backend that is a keys.GrantStore) delete the
// grants they store: their number is bounded. Cases that need a backend's
// own abilities (restarting it, editing its storage) take them from the
// Hooks given to RunWith, and skip without them. A key type whose
// CreateKey returns keys.ErrUnsupported is skipped
// with the backend's reason. Errors are checked with errors.Is against the
// keys sentinels only: the wording of an error is the backend's business.
//
// Decisions the suite makes where keys' doc leaves room:
//   - a new key's MinDecryptVersion may be 0 or 1 (both mean "no minimum");
//   - an empty plaintext wraps and unwraps; a nil and an empty context are the
//     same context;
//   - a version that does not exist is ErrKeyNotFound, a minimum decrypt
//     version above the newest version is ErrInvalidArgument;
//   - destroying the newest enabled version is allowed: wraps fall back to the
//     next newest enabled one, and version numbers are never reused;
//   - a destroyed version stays destroyed: enabling it fails with
//     ErrVersionDestroyed;
//   - limits (keys.MaxContext, keys.MaxPlaintext...) are checked on the way in,
//     on Unwrap as on Wrap, with ErrInvalidArgument;
//   - RSA-PSS signatures have a salt of exactly keys.PSSSaltLength bytes, and
//     ECDSA signatures a low s (at most n/2): the high-S twin (r, n-s) of a
//     valid signature does not verify;
//   - the public key of a version below the minimum decrypt version is
//     served (verify refuses it with ErrBelowMinVersion); that of a disabled
//     or destroyed version is not.
package keystest

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/keyward/keyward/envelope"
	"github.com/keyward/keyward/keys"
)

// NewBackend returns a backend for one subtest group. It may return the same
// backend every time: the suite uses unique key names. The constructor owns
// the backend's lifetime (close it with t.Cleanup if it is fresh).
type NewBackend func(t *testing.T) keys.Backend

// Hooks are what a backend's own test gives the suite beyond keys.Backend:
// abilities only that test has (restarting the backend, editing its
// storage behind its back). A nil hook skips the cases that need it.
type Hooks struct {
	// Reopen closes be and opens the backend again on the same device and
	// state, as a restart of the daemon does, and returns the new instance.
	// If the constructor shares one backend between groups, its next calls
	// must return the new instance.
	Reopen func(t *testing.T, be keys.Backend) keys.Backend
	// ReadOnly opens another instance of be's device and state, read-only
	// (closed when t ends).
	ReadOnly func(t *testing.T, be keys.Backend) keys.Backend
	// TamperGrant edits the stored newest record of grant id where the
	// backend keeps it, as someone who can write the device's storage but
	// has none of its keys could.
	TamperGrant func(t *testing.T, be keys.Backend, id string)
	// LimitGrants makes be refuse a new grant id while n or more grants
	// are stored, until t ends (keys.MaxGrants is too many to fill in a
	// test).
	LimitGrants func(t *testing.T, be keys.Backend, n int)
}

// Run runs the conformance suite against the backends newBackend returns,
// without backend hooks.
func Run(t *testing.T, newBackend NewBackend) { RunWith(t, newBackend, Hooks{}) }

// RunWith runs the conformance suite with the backend's hooks.
func RunWith(t *testing.T, newBackend NewBackend, h Hooks) {
	groups := []struct {
		name string
		run  func(t *testing.T, be keys.Backend)
	}{
		{"Create", testCreate},
		{"Wrap", testWrap},
		{"Rotation", testRotation},
		{"Schedule", testSchedule},
		{"DisableAfter", func(t *testing.T, be keys.Backend) { testDisableAfter(t, be, h) }},
		{"WrongKeyType", testWrongKeyType},
		{"MAC", testMAC},
		{"Sign", testSign},
		{"OpenSSL", testOpenSSL},
		{"Random", testRandom},
		{"Limits", testLimits},
		{"Concurrency", testConcurrency},
		{"Health", testHealth},
		{"Grants", func(t *testing.T, be keys.Backend) { testGrants(t, be, h) }},
	}
	for _, g := range groups {
		t.Run(g.name, func(t *testing.T) {
			be := newBackend(t)
			if be == nil {
				t.Fatal("NewBackend returned nil")
			}
			g.run(t, be)
		})
	}
}

// newName returns a fresh valid key name derived from t.Name(), so that a key
// left in a shared token says which test made it.
func newName(t *testing.T) string {
	t.Helper()
	seg := []byte(strings.ToLower(t.Name()))
	for i, c := range seg {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			seg[i] = '.'
		}
	}
	if len(seg) > 96 {
		seg = seg[len(seg)-96:] // the innermost subtest names say the most
	}
	// One segment that starts with [a-z0-9]; the suffix keeps names unique.
	name := fmt.Sprintf("keystest/k%s-%08x", seg, rand.Uint32())
	if err := keys.ValidateName(name); err != nil {
		t.Fatalf("keystest made an invalid key name: %v", err)
	}
	return name
}

// wantErr fails the test unless err matches one of targets.
func wantErr(t *testing.T, err error, what string, targets ...error) {
	t.Helper()
	for _, target := range targets {
		if errors.Is(err, target) {
			return
		}
	}
	t.Errorf("%s: err = %v, want %s", what, err, errList(targets))
}

func errList(targets []error) string {
	s := make([]string, len(targets))
	for i, e := range targets {
		s[i] = fmt.Sprintf("%q", e)
	}
	return strings.Join(s, " or ")
}

// must stops the test on an unexpected error in a step a case depends on.
func must(t *testing.T, err error, format string, args ...any) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", fmt.Sprintf(format, args...), err)
	}
}

// create makes a key of type typ under a fresh name, skipping the test if the
// backend does not support typ.
func create(t *testing.T, be keys.Backend, typ keys.Type) keys.KeyInfo {
	t.Helper()
	return createNamed(t, be, newName(t), typ)
}

func createNamed(t *testing.T, be keys.Backend, name string, typ keys.Type) keys.KeyInfo {
	t.Helper()
	info, err := be.CreateKey(t.Context(), name, typ)
	if errors.Is(err, keys.ErrUnsupported) {
		t.Skipf("%s keys: %v", typ, err)
	}
	must(t, err, "CreateKey(%s, %s)", name, typ)
	return info
}

// checkVersions compares info's versions with want (the state of v1, v2...).
func checkVersions(t *testing.T, info keys.KeyInfo, want ...keys.State) {
	t.Helper()
	if len(info.Versions) != len(want) {
		t.Fatalf("key %s has %d versions %v, want %d", info.Name, len(info.Versions), info.Versions, len(want))
	}
	for i, vi := range info.Versions {
		if vi.Version != uint32(i+1) || vi.State != want[i] {
			t.Errorf("key %s: Versions[%d] = v%d %s, want v%d %s", info.Name, i, vi.Version, vi.State, i+1, want[i])
		}
		if vi.Created.IsZero() {
			t.Errorf("key %s v%d: Created is zero", info.Name, vi.Version)
		}
	}
}

// describe returns DescribeKey(name) and checks its versions.
func describe(t *testing.T, be keys.Backend, name string, want ...keys.State) keys.KeyInfo {
	t.Helper()
	info, err := be.DescribeKey(t.Context(), name)
	must(t, err, "DescribeKey(%s)", name)
	checkVersions(t, info, want...)
	return info
}

// rotate rotates name and checks that the new version is the next number.
func rotate(t *testing.T, be keys.Backend, name string) keys.KeyInfo {
	t.Helper()
	before, err := be.DescribeKey(t.Context(), name)
	must(t, err, "DescribeKey(%s)", name)
	info, err := be.RotateKey(t.Context(), name)
	must(t, err, "RotateKey(%s)", name)
	want := make([]keys.State, 0, len(before.Versions)+1)
	for _, vi := range before.Versions {
		want = append(want, vi.State)
	}
	checkVersions(t, info, append(want, keys.Enabled)...)
	return info
}

func setState(t *testing.T, be keys.Backend, name string, v uint32, s keys.State) {
	t.Helper()
	_, err := be.SetVersionState(t.Context(), name, v, s)
	must(t, err, "SetVersionState(%s, v%d, %s)", name, v, s)
}

func destroy(t *testing.T, be keys.Backend, name string, v uint32) {
	t.Helper()
	_, err := be.DestroyVersion(t.Context(), name, v)
	must(t, err, "DestroyVersion(%s, v%d)", name, v)
}

// wrap wraps pt and checks the blob's header names the key and wantVersion.
func wrap(t *testing.T, be keys.Backend, name string, pt []byte, c keys.Context, wantVersion uint32) []byte {
	t.Helper()
	blob, err := be.Wrap(t.Context(), name, pt, c)
	must(t, err, "Wrap(%s, %d bytes)", name, len(pt))
	h, _ := decode(t, blob)
	if h.Name != name || h.Version != wantVersion {
		t.Errorf("Wrap(%s): blob header names %s v%d, want %s v%d", name, h.Name, h.Version, name, wantVersion)
	}
	if len(blob) > keys.MaxBlob {
		t.Errorf("Wrap(%s, %d bytes): blob of %d bytes, over keys.MaxBlob", name, len(pt), len(blob))
	}
	return blob
}

// unwrapOK unwraps blob and checks the plaintext, name and version.
func unwrapOK(t *testing.T, be keys.Backend, blob []byte, c keys.Context, name string, v uint32, pt []byte) {
	t.Helper()
	u, err := be.Unwrap(t.Context(), blob, c)
	if err != nil {
		t.Errorf("Unwrap(%s v%d blob): %v", name, v, err)
		return
	}
	if !bytes.Equal(u.Plaintext, pt) {
		t.Errorf("Unwrap(%s v%d blob): plaintext of %d bytes differs from the %d wrapped", name, v, len(u.Plaintext), len(pt))
	}
	if u.Name != name || u.Version != v {
		t.Errorf("Unwrap: got %s v%d, want %s v%d", u.Name, u.Version, name, v)
	}
}

func decode(t *testing.T, blob []byte) (envelope.Header, []byte) {
	t.Helper()
	h, ct, err := envelope.Decode(blob)
	must(t, err, "envelope.Decode of a backend's blob")
	return h, ct
}

// reencode decodes blob, lets edit change the header and encodes it again:
// a well-formed blob that the backend must still refuse.
func reencode(t *testing.T, blob []byte, edit func(h *envelope.Header)) []byte {
	t.Helper()
	h, ct := decode(t, blob)
	edit(&h)
	out, err := envelope.Encode(h, ct)
	must(t, err, "envelope.Encode of an edited header")
	return out
}

// flip returns a copy of b with bit 0 of byte i flipped.
func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 1
	return c
}
