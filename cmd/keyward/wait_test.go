package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestStatusWait: `status --wait` started before keywardd exits 0 once the
// daemon it waited for serves; with nothing to wait for it gives up after
// TIMEOUT with exit 5 and says why.
func TestStatusWait(t *testing.T) {
	startDaemon(t)                       // builds keywardd into binDir
	dir, err := os.MkdirTemp("", "kww-") // short: a socket path has at most 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "k.sock")

	waiter := exec.Command(bin, "--socket", socket, "status", "--wait=60s")
	waiter.Env = testEnv(nil)
	var out, errOut strings.Builder
	waiter.Stdout, waiter.Stderr = &out, &errOut
	if err := waiter.Start(); err != nil {
		t.Fatal(err)
	}
	// keywardd starts after the waiter did; the waiter has no way to know when.
	d := exec.Command(filepath.Join(binDir, "keywardd"), "--dev", "--socket", socket)
	d.Env = testEnv(nil)
	d.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Process.Signal(syscall.SIGTERM); d.Wait() })
	if err := waiter.Wait(); err != nil {
		t.Fatalf("status --wait: %v\n%s%s", err, out.String(), errOut.String())
	}
	if !strings.Contains(out.String(), "backend pkcs11: healthy\n") {
		t.Errorf("status --wait printed %q", out.String())
	}

	t.Run("timeout", func(t *testing.T) {
		absent := filepath.Join(dir, "absent.sock")
		start := time.Now()
		r := kw(t, absent, nil, "status", "--wait=300ms")
		if r.code != exitUnavailable || !strings.Contains(r.stderr, "did not answer healthy within 300ms") ||
			!strings.Contains(r.stderr, "the socket does not exist") {
			t.Errorf("status --wait on no daemon: exit %d, %q", r.code, r.stderr)
		}
		if took := time.Since(start); took < 300*time.Millisecond {
			t.Errorf("gave up after %v, before its 300ms", took)
		}
	})
	t.Run("refused at once", func(t *testing.T) {
		r := kw(t, socket, nil, "status", "--wait=-1s")
		if r.code != exitUsage || !strings.Contains(r.stderr, "negative") {
			t.Errorf("status --wait=-1s: exit %d, %q", r.code, r.stderr)
		}
	})
}
