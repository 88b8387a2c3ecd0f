package audit

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
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
