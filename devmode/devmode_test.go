package devmode

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/hsm"
)

// TestStartSWTPMRefusedPaths: dev directories swtpm cannot be given are
// refused with a clear reason, before swtpm is started: a comma (swtpm's
// options are comma-separated, with no escape) or a socket path too long.
func TestStartSWTPMRefusedPaths(t *testing.T) {
	tests := []struct {
		name, dir, want string
	}{
		{"comma", filepath.Join(t.TempDir(), "dev,1"), "holds a comma"},
		{"too long", filepath.Join(t.TempDir(), strings.Repeat("d", 120)), "use a shorter --dev-dir"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sw, err := startSWTPM(tt.dir)
			if err == nil {
				sw.stop()
				t.Fatal("startSWTPM accepted the directory")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("startSWTPM: %v, want %q", err, tt.want)
			}
		})
	}
}

// TestDevDirRefused: a --dev-dir that is a symlink, or that another user
// owns or can write, is refused before anything is written in it; a
// softhsm2.conf planted as a symlink is not written through.
func TestDevDirRefused(t *testing.T) {
	if _, err := hsm.SoftHSMModule(); err != nil {
		t.Skipf("SoftHSM2: %v", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to give directories to other uids")
	}
	t.Setenv("SOFTHSM2_CONF", os.Getenv("SOFTHSM2_CONF")) // New sets it
	const other = 4242
	tests := []struct {
		name    string
		setup   func(t *testing.T, base string) string // returns --dev-dir
		wantErr error
	}{
		{"symlink", func(t *testing.T, b string) string {
			real := filepath.Join(b, "real")
			os.Mkdir(real, 0o700)
			l := filepath.Join(b, "dev")
			if err := os.Symlink(real, l); err != nil {
				t.Fatal(err)
			}
			return l
		}, config.ErrConfig},
		{"world-writable", func(t *testing.T, b string) string {
			d := filepath.Join(b, "dev")
			os.Mkdir(d, 0o700)
			os.Chmod(d, 0o777)
			return d
		}, config.ErrConfig},
		{"another uid's", func(t *testing.T, b string) string {
			d := filepath.Join(b, "dev")
			os.Mkdir(d, 0o700)
			os.Lchown(d, other, other)
			return d
		}, config.ErrConfig},
		{"in another uid's directory", func(t *testing.T, b string) string {
			h := filepath.Join(b, "home")
			os.Mkdir(h, 0o755)
			os.Lchown(h, other, other)
			return filepath.Join(h, "dev")
		}, config.ErrConfig},
		{"softhsm2.conf is a symlink", func(t *testing.T, b string) string {
			d := filepath.Join(b, "dev")
			os.Mkdir(d, 0o700)
			if err := os.Symlink(filepath.Join(b, "victim"), filepath.Join(d, "softhsm2.conf")); err != nil {
				t.Fatal(err)
			}
			return d
		}, syscall.ELOOP},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := t.TempDir()
			victim := filepath.Join(base, "victim")
			if err := os.WriteFile(victim, []byte("keep"), 0o644); err != nil {
				t.Fatal(err)
			}
			dir := tt.setup(t, base)
			d, err := New(dir, filepath.Join(base, "s.sock"), "error", "pkcs11")
			if err == nil {
				d.Close()
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("New(%s): %v, want %v", dir, err, tt.wantErr)
			}
			if b, _ := os.ReadFile(victim); string(b) != "keep" {
				t.Errorf("a file outside the dev directory was written: %q", b)
			}
			for _, name := range []string{"pin", "tokens"} {
				if _, err := os.Lstat(filepath.Join(dir, name)); err == nil && errors.Is(tt.wantErr, config.ErrConfig) {
					t.Errorf("%s was created in a refused directory", name)
				}
			}
		})
	}
}
