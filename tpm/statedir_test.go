package tpm_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/keyward/keyward/tpm"
	"github.com/keyward/keyward/tpm/swtpmtest"
)

// TestStateDirOwnership: the daemon refuses a state directory that is a
// symlink, or that a user other than root and its own owns or could move;
// doctor's read-only look at the daemon's directory is still allowed.
func TestStateDirOwnership(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give directories to other uids")
	}
	const other = 4242
	sw := swtpmtest.Start(t)
	chown := func(t *testing.T, p string) {
		t.Helper()
		if err := os.Lchown(p, other, other); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name     string
		readOnly bool
		setup    func(t *testing.T, base string) string // returns the state dir
		wantErr  error
	}{
		{"own directory", false, func(t *testing.T, b string) string { return filepath.Join(b, "state") }, nil},
		{"symlink to a directory", false, func(t *testing.T, b string) string {
			real := filepath.Join(b, "real")
			os.Mkdir(real, 0o700)
			l := filepath.Join(b, "state")
			if err := os.Symlink(real, l); err != nil {
				t.Fatal(err)
			}
			return l
		}, tpm.ErrConfig},
		{"owned by another uid", false, func(t *testing.T, b string) string {
			d := filepath.Join(b, "state")
			os.Mkdir(d, 0o700)
			chown(t, d)
			return d
		}, tpm.ErrConfig},
		{"keys/ owned by another uid", false, func(t *testing.T, b string) string {
			d := filepath.Join(b, "state")
			os.MkdirAll(filepath.Join(d, "keys"), 0o700)
			chown(t, filepath.Join(d, "keys"))
			return d
		}, tpm.ErrConfig},
		{"in a directory another uid owns", false, func(t *testing.T, b string) string {
			home := filepath.Join(b, "home")
			os.Mkdir(home, 0o755)
			chown(t, home)
			return filepath.Join(home, "state")
		}, tpm.ErrConfig},
		{"read-only look at another uid's directory", true, func(t *testing.T, b string) string {
			d := filepath.Join(b, "state")
			be := open(t, sw.Device(), d)
			be.Close()
			filepath.Walk(d, func(p string, _ os.FileInfo, _ error) error { chown(t, p); return nil })
			return d
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := tt.setup(t, t.TempDir())
			be, err := tpm.Open(t.Context(), tpm.Config{Device: sw.Device(), StateDir: dir, Auth: testAuth, ReadOnly: tt.readOnly})
			if err == nil {
				be.Close()
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Open(%s): %v, want %v", dir, err, tt.wantErr)
			}
		})
	}
}
