package audit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestOpenRefusesSymlinks: a symlink planted at the log's name, at its lock
// file's or at a rotated file's name makes Open fail with ErrUnsafe, and the
// file it points to is not touched.
func TestOpenRefusesSymlinks(t *testing.T) {
	tests := []struct {
		name string
		link func(path string) string // the name to plant the link at
	}{
		{name: "log file", link: func(p string) string { return p }},
		{name: "lock file", link: func(p string) string { return p + lockSuffix }},
		{name: "rotated file", link: func(p string) string { return RotatedName(p, 1, 5) }},
		{name: "context key", link: func(p string) string { return filepath.Join(filepath.Dir(p), ContextKeyName) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			victim := filepath.Join(t.TempDir(), "shadow")
			content := []byte("root:secret-hash:19000:0:99999:7:::\n")
			if err := os.WriteFile(victim, content, 0o640); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(t.TempDir(), "audit.log")
			if err := os.Symlink(victim, tc.link(path)); err != nil {
				t.Fatal(err)
			}
			l, err := Open(path, Options{})
			if err == nil {
				l.Append(context.Background(), rec("x"))
				l.Close()
			}
			if !errors.Is(err, ErrUnsafe) {
				t.Errorf("Open: %v, want ErrUnsafe", err)
			}
			if got, _ := os.ReadFile(victim); !bytes.Equal(got, content) {
				t.Errorf("the link's target was changed: %q", got)
			}
		})
	}
}

// TestRotationRefusesPlantedName: a symlink planted at the name the next
// rotation will use is neither replaced nor written through: the rotation
// fails (the log writes on in the same file) and the target is untouched.
func TestRotationRefusesPlantedName(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	l := open(t, path, Options{MaxFileSize: 1}) // rotate after every batch
	planted := RotatedName(path, 1, 1)
	if err := os.Symlink(victim, planted); err != nil {
		t.Fatal(err)
	}
	appendN(t, l, "a", 1)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(planted); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("%s replaced: %v, %v", planted, fi, err)
	}
	if got, _ := os.ReadFile(victim); string(got) != "keep" {
		t.Fatalf("victim changed: %q", got)
	}
	if st := l.Stats(); st.Rotations != 0 || st.Seq != 1 {
		t.Fatalf("stats %+v: want no rotation, seq 1", st)
	}
	if rs := records(t, path); len(rs) != 1 {
		t.Fatalf("%d records in %s, want 1", len(rs), path)
	}
}

// TestOpenRefusesUnsafeOwnership: a directory its group or others may
// write, or owned by another user, and a log file owned by another user or
// not a regular file, are refused.
func TestOpenRefusesUnsafeOwnership(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("not root: cannot chown to another user")
	}
	const other = 4242
	tests := []struct {
		name  string
		setup func(t *testing.T, dir, path string)
	}{
		{name: "directory writable by others", setup: func(t *testing.T, dir, _ string) { chmod(t, dir, 0o777) }},
		{name: "directory writable by its group", setup: func(t *testing.T, dir, _ string) { chmod(t, dir, 0o770) }},
		{name: "sticky directory writable by all", setup: func(t *testing.T, dir, _ string) { chmod(t, dir, 0o777|os.ModeSticky) }},
		{name: "directory owned by another user", setup: func(t *testing.T, dir, _ string) { chown(t, dir, other) }},
		{name: "parent owned by another user", setup: func(t *testing.T, dir, _ string) { chown(t, filepath.Dir(dir), other) }},
		{name: "log owned by another user", setup: func(t *testing.T, _, path string) {
			writeFile(t, path, nil)
			chown(t, path, other)
		}},
		{name: "lock owned by another user", setup: func(t *testing.T, _, path string) {
			writeFile(t, path+lockSuffix, nil)
			chown(t, path+lockSuffix, other)
		}},
		{name: "log is a directory", setup: func(t *testing.T, _, path string) {
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "log is a fifo", setup: func(t *testing.T, _, path string) {
			if err := syscall.Mkfifo(path, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "context key readable by others", setup: func(t *testing.T, dir, _ string) {
			writeFile(t, filepath.Join(dir, ContextKeyName), []byte(strings.Repeat("ab", 32)+"\n"))
			chmod(t, filepath.Join(dir, ContextKeyName), 0o644)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "log")
			if err := os.Mkdir(dir, 0o750); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "audit.log")
			tc.setup(t, dir, path)
			l, err := Open(path, Options{})
			if err == nil {
				l.Close()
			}
			if !errors.Is(err, ErrUnsafe) {
				t.Fatalf("Open: %v, want ErrUnsafe", err)
			}
		})
	}
	// The directory a root daemon gets from packaging: root-owned 0750.
	dir := t.TempDir()
	chmod(t, dir, 0o750)
	open(t, filepath.Join(dir, "audit.log"), Options{}).Close()
}

func chmod(t *testing.T, name string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(name, mode); err != nil {
		t.Fatal(err)
	}
}

func chown(t *testing.T, name string, uid int) {
	t.Helper()
	if err := os.Lchown(name, uid, uid); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, name string, b []byte) {
	t.Helper()
	if err := os.WriteFile(name, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestContextDigestKeyed: the digest is an HMAC under a key created once in
// the directory (0600, a regular file), the same across restarts, not the
// plain SHA-256 a dictionary could reverse; a record carrying it says so
// ("hmac-sha256:") and verifies, as does a record with a plain digest.
func TestContextDigestKeyed(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	canonical := []byte("\x00\x00\x00\x03app\x00\x00\x00\x07billing")

	l := open(t, path, Options{})
	d1 := l.ContextDigest(canonical)
	r := rec("keyed")
	r.ContextDigest, r.ContextKeyed = d1, true
	if err := l.Append(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	if err := l.Append(context.Background(), rec("plain")); err != nil {
		t.Fatal(err)
	}
	l.Close()

	keyFile := filepath.Join(dir, ContextKeyName)
	fi, err := os.Lstat(keyFile)
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v; want a regular 0600 file", fi, err)
	}
	key, err := ReadContextKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if d1 == sha256.Sum256(canonical) || d1 != ContextDigest(key, canonical) {
		t.Fatalf("digest %x: plain SHA-256, or not the HMAC under the key file", d1)
	}
	if d := l.ContextDigest(canonical); d == d1 {
		t.Error("the key survived Close")
	}

	l = open(t, path, Options{})
	if d := l.ContextDigest(canonical); d != d1 {
		t.Errorf("digest after restart %x, want %x", d, d1)
	}
	if d := l.ContextDigest([]byte("other")); d == d1 {
		t.Error("two contexts, one digest")
	}
	l.Close()

	rs := records(t, path)
	if len(rs) != 2 || !rs[0].ContextKeyed || rs[0].ContextDigest != d1 || rs[1].ContextKeyed {
		t.Fatalf("records read back: %+v", rs)
	}
	b, _ := os.ReadFile(path)
	if !bytes.Contains(b, []byte(`"context_digest":"hmac-sha256:`)) {
		t.Errorf("no marked keyed digest in %s", b)
	}
	verifyChain(t, path, 2)
	if logs, err := Logs(dir); err != nil || len(logs) != 1 {
		t.Errorf("Logs(%s) = %v, %v: the key file is no log", dir, logs, err)
	}
}
