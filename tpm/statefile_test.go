package tpm_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/tpm"
	"github.com/keyward/keyward/tpm/swtpmtest"
)

// TestStateFileNotRegular: a FIFO put in place of a key's record in the
// state directory is refused at start as an integrity failure, at once,
// not waited on (an open that waits for a writer would hang the start for
// ever, holding the state directory's lock and the TPM's connection).
func TestStateFileNotRegular(t *testing.T) {
	sw := swtpmtest.Start(t)
	dir := t.TempDir()
	be := open(t, sw.Device(), dir)
	mustCreate(t, be, "fifo/k", keys.HMACSHA256)
	be.Close()
	rec := filepath.Join(dir, "keys", "fifo%2Fk.json")
	if err := os.Remove(rec); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(rec, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		b, err := tpm.Open(t.Context(), tpm.Config{Device: sw.Device(), StateDir: dir, Auth: testAuth})
		if err == nil {
			b.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, keys.ErrIntegrity) || !strings.Contains(err.Error(), "not a regular file") {
			t.Fatalf("open with a FIFO for a record: %v, want an integrity failure naming it", err)
		}
	case <-time.After(30 * time.Second): // ends a hang only
		t.Fatal("open waits on a FIFO in the state directory")
	}
}

// TestLongKeyName: a valid key name whose record file name would be over
// NAME_MAX (each '/' is stored as %2F) is refused as an invalid name before
// the TPM makes anything, not reported as an unavailable backend.
func TestLongKeyName(t *testing.T) {
	sw := swtpmtest.Start(t)
	be := open(t, sw.Device(), t.TempDir())
	name := strings.Repeat("a/", 63) + "a" // 127 bytes: a valid name
	if _, err := be.CreateKey(t.Context(), name, keys.HMACSHA256); !errors.Is(err, keys.ErrInvalidName) {
		t.Fatalf("create a 127-byte name of 64 segments: %v, want ErrInvalidName", err)
	}
	mustCreate(t, be, strings.Repeat("a/", 61)+"a", keys.HMACSHA256) // 250-byte file name: fits
}
