//go:build unix

package safepath

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

const other = 4242 // a uid that is neither root nor trusted

func TestCheckDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files to other uids")
	}
	tests := []struct {
		name    string
		trusted []uint32
		// setup builds the tree under base and returns the path to check and
		// the directory it should resolve to.
		setup   func(t *testing.T, base string) (string, string)
		wantErr error
	}{
		{"private directory", nil, func(t *testing.T, b string) (string, string) {
			return mk(t, b, "d", 0o700, 0), filepath.Join(b, "d")
		}, nil},
		{"world-writable target", nil, func(t *testing.T, b string) (string, string) {
			return mk(t, b, "d", 0o777, 0), ""
		}, ErrUnsafe},
		{"group-writable target", nil, func(t *testing.T, b string) (string, string) {
			return mk(t, b, "d", 0o770, 0), ""
		}, ErrUnsafe},
		{"sticky world-writable target", nil, func(t *testing.T, b string) (string, string) {
			return mk(t, b, "d", os.ModeSticky|0o777, 0), ""
		}, ErrUnsafe},
		{"private directory under a sticky one", nil, func(t *testing.T, b string) (string, string) {
			mk(t, b, "tmp", os.ModeSticky|0o777, 0)
			d := mk(t, b, "tmp/d", 0o700, 0)
			return d, d
		}, nil},
		{"private directory under a world-writable, not sticky one", nil, func(t *testing.T, b string) (string, string) {
			mk(t, b, "w", 0o777, 0)
			return mk(t, b, "w/d", 0o700, 0), ""
		}, ErrUnsafe},
		{"target owned by another uid", nil, func(t *testing.T, b string) (string, string) {
			return mk(t, b, "d", 0o700, other), ""
		}, ErrUnsafe},
		{"target owned by a trusted uid", []uint32{other}, func(t *testing.T, b string) (string, string) {
			d := mk(t, b, "d", 0o700, other)
			return d, d
		}, nil},
		{"parent owned by another uid", nil, func(t *testing.T, b string) (string, string) {
			mk(t, b, "home", 0o755, other)
			return mk(t, b, "home/d", 0o700, 0), ""
		}, ErrUnsafe},
		{"symlink to a private directory", nil, func(t *testing.T, b string) (string, string) {
			d := mk(t, b, "real", 0o700, 0)
			return link(t, "real", filepath.Join(b, "l"), 0), d
		}, nil},
		{"relative symlink through ..", nil, func(t *testing.T, b string) (string, string) {
			mk(t, b, "a", 0o755, 0)
			d := mk(t, b, "real", 0o700, 0)
			return link(t, "../real", filepath.Join(b, "a", "l"), 0), d
		}, nil},
		{"symlink owned by another uid", nil, func(t *testing.T, b string) (string, string) {
			mk(t, b, "real", 0o700, 0)
			return link(t, "real", filepath.Join(b, "l"), other), ""
		}, ErrUnsafe},
		{"symlink into a world-writable directory", nil, func(t *testing.T, b string) (string, string) {
			mk(t, b, "w", 0o777, 0)
			mk(t, b, "w/d", 0o700, 0)
			return link(t, "w/d", filepath.Join(b, "l"), 0), ""
		}, ErrUnsafe},
		{"symlink's .. ends on a world-writable directory", nil, func(t *testing.T, b string) (string, string) {
			mk(t, b, "w", os.ModeSticky|0o777, 0)
			mk(t, b, "w/d", 0o700, 0)
			return link(t, "d/..", filepath.Join(b, "w", "l"), 0), ""
		}, ErrUnsafe},
		{"missing", nil, func(t *testing.T, b string) (string, string) {
			return filepath.Join(b, "nope"), ""
		}, fs.ErrNotExist},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := t.TempDir()
			p, want := tt.setup(t, base)
			got, err := CheckDir(p, tt.trusted...)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("CheckDir(%s) = %v, want %v", p, err, tt.wantErr)
			}
			if err == nil && got != want {
				t.Fatalf("resolved to %s, want %s", got, want)
			}
		})
	}
}

func mk(t *testing.T, base, rel string, mode os.FileMode, uid int) string {
	t.Helper()
	p := filepath.Join(base, rel)
	if err := os.Mkdir(p, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(p, uid, -1); err != nil {
		t.Fatal(err)
	}
	return p
}

func link(t *testing.T, target, p string, uid int) string {
	t.Helper()
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(p, uid, -1); err != nil {
		t.Fatal(err)
	}
	return p
}
