package hsm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSoftHSMTokenDir(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, conf, want, err string
	}{
		{"plain", "directories.tokendir = /var/lib/softhsm/tokens\n", "/var/lib/softhsm/tokens", ""},
		{"spacing and comments", "# directories.tokendir = /old\n\n  directories.tokendir=/srv/t  \nobjectstore.backend = file\n", "/srv/t", ""},
		{"missing", "objectstore.backend = file\n", "", "no directories.tokendir"},
		{"empty value", "directories.tokendir = \n", "", "no directories.tokendir"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".conf")
			if err := os.WriteFile(p, []byte(tc.conf), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := softhsmTokenDir(p)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("softhsmTokenDir: %q, %v; want an error with %q", got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("softhsmTokenDir: %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	if _, err := softhsmTokenDir(filepath.Join(dir, "absent.conf")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("absent conf: %v", err)
	}
}

func TestLockFileSafe(t *testing.T) {
	for in, want := range map[string]string{
		"4b2a3f9c1d0e7a65": "4b2a3f9c1d0e7a65",
		"  12ab  ":         "12ab",
		"../../etc/x":      "etcx",
		"":                 "token",
		"/":                "token",
	} {
		if got := lockFileSafe(in); got != want {
			t.Errorf("lockFileSafe(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestCrossLockWaits: a second holder of the same lock file (another open,
// as another process has) waits for the first, and gives up with ctx.
func TestCrossLockWaits(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "softhsm2.conf")
	if err := os.WriteFile(conf, []byte("directories.tokendir = "+dir+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", conf)
	a, err := openCrossLock("abc")
	if err != nil {
		t.Fatal(err)
	}
	defer a.close()
	b, err := openCrossLock("abc")
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	if fi, err := os.Stat(filepath.Join(dir, ".keyward-abc.lock")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("lock file: %v %v", fi, err)
	}
	unlockA, err := a.lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := b.lock(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second holder while the first holds it: %v, want DeadlineExceeded", err)
	}
	unlockA()
	unlockB, err := b.lock(context.Background())
	if err != nil {
		t.Fatalf("second holder after the first released: %v", err)
	}
	unlockB()
	var none *crossLock // not SoftHSM2: no lock, no wait
	unlock, err := none.lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	unlock()
}
