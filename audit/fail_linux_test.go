//go:build linux

package audit

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestFailClosedFullDisk: the log on a real full filesystem (a 64 KiB tmpfs)
// refuses Appends, then serves them again once space is freed, with no
// successful Append missing from the file. Needs root to mount.
func TestFailClosedFullDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("not root: cannot mount a tmpfs (TestFailClosed covers the logic with injected errors)")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=64k,mode=0700"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("mount tmpfs as root under CI: %v", err)
		}
		t.Skipf("mount tmpfs: %v (no CAP_SYS_ADMIN here?)", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	path := filepath.Join(dir, "audit.log")
	l := open(t, path, Options{RetryInterval: 20 * time.Millisecond})
	filler := filepath.Join(dir, "filler")
	fill := func() {
		f, err := os.Create(filler)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		chunk := make([]byte, 1024)
		for {
			if _, err := f.Write(chunk); err != nil {
				if !errors.Is(err, syscall.ENOSPC) {
					t.Fatalf("fill: %v", err)
				}
				return
			}
		}
	}
	free := func() {
		if err := os.Remove(filler); err != nil {
			t.Fatal(err)
		}
	}
	outage(t, path, l, fill, free)
	if _, lastErr, _ := l.Status(); !errors.Is(lastErr, syscall.ENOSPC) {
		t.Errorf("last error %v, want ENOSPC", lastErr)
	}
}
