package tpm_test

// Found by running the backend against a live swtpm as an attacker would:
// a hostile state directory, names at the limits, a TPM that hangs or is
// changed under keywardd, and swtpm's few object slots.

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
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

// TestCloseWithHungCommand: Close does not wait for a command the TPM never
// answers (a hung TPM, swtpm stopped) past its bound: it cuts that
// connection, flushes nothing, releases the state directory and reports
// it, and the command fails rather than hangs.
func TestCloseWithHungCommand(t *testing.T) {
	sw := swtpmtest.Start(t)
	var armed atomic.Bool
	entered := make(chan struct{}, 1)
	be, err := tpm.Open(t.Context(), tpm.HoldWire(tpm.Config{Device: sw.Device(), StateDir: t.TempDir(), Auth: testAuth}, &armed, entered, 50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	mustCreate(t, be, "hung/mac", keys.HMACSHA256)
	armed.Store(true)
	macErr := make(chan error, 1)
	go func() { _, err := be.MAC(context.Background(), "hung/mac", []byte("m")); macErr <- err }()
	<-entered // the command is on the wire, and will get no answer
	closed := make(chan error, 1)
	go func() { closed <- be.Close() }()
	select {
	case err := <-closed:
		if !errors.Is(err, keys.ErrUnavailable) {
			t.Errorf("Close with a hung command: %v, want it said", err)
		}
	case <-time.After(30 * time.Second): // ends a hang only
		t.Fatal("Close waits for a command the TPM never answers")
	}
	select {
	case err := <-macErr:
		if err == nil {
			t.Error("the hung command succeeded")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the hung command still hangs after Close")
	}
}

// TestCreateWithKeysLoaded: with the most key objects loaded that keyward
// keeps (swtpm has 3 object slots: the parent and 2 keys), a key create or
// rotation makes room for TPM2_Create's own object first, rather than
// failing with TPM_RC_OBJECT_MEMORY and reconnecting to the TPM.
func TestCreateWithKeysLoaded(t *testing.T) {
	sw := swtpmtest.Start(t)
	be := open(t, sw.Device(), t.TempDir())
	mustCreate(t, be, "slots/a", keys.AES256GCM)
	mustCreate(t, be, "slots/m", keys.HMACSHA256)
	for range 3 {
		if _, err := be.Wrap(t.Context(), "slots/a", []byte("x"), nil); err != nil {
			t.Fatal(err)
		}
		if _, err := be.MAC(t.Context(), "slots/m", []byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, err := be.RotateKey(t.Context(), "slots/m"); err != nil {
			t.Fatal(err)
		}
	}
	if n := be.Resets(); n != 0 {
		t.Errorf("%d reconnects to the TPM for 3 rotations with 2 keys loaded, want 0", n)
	}
}

// TestOwnerAuthSet: a TPM whose owner hierarchy another user gave a
// password cannot hold keyward's parent under it: Open says so as a
// configuration error naming parent_handle, not as a device failure.
func TestOwnerAuthSet(t *testing.T) {
	sw := swtpmtest.Start(t)
	tool, err := exec.LookPath("tpm2_changeauth")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("tpm2_changeauth not found: make test installs tpm2-tools")
		}
		t.Skip("tpm2-tools not installed")
	}
	cmd := exec.Command(tool, "-c", "o", "owner-password-of-someone-else")
	cmd.Env = append(os.Environ(), sw.ToolsEnv()...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tpm2_changeauth: %v\n%s", err, out)
	}
	_, err = tpm.Open(t.Context(), tpm.Config{Device: sw.Device(), StateDir: t.TempDir(), Auth: testAuth})
	if !errors.Is(err, tpm.ErrConfig) || !strings.Contains(err.Error(), "parent_handle") {
		t.Fatalf("open with an owner password set: %v, want a configuration error naming parent_handle", err)
	}
}

// TestCounterGoneWhileRunning: the rollback counter removed while keywardd
// runs (swtpm restarted meanwhile, the index undefined) makes the next key
// change that needs it an integrity failure naming the counter, as at
// start, not "unavailable, retry later" for good.
func TestCounterGoneWhileRunning(t *testing.T) {
	sw := swtpmtest.Start(t)
	be := open(t, sw.Device(), t.TempDir())
	mustCreate(t, be, "gone/k", keys.HMACSHA256)
	index, _, _, _ := be.CounterStatus()
	sw.Restart(t) // the backend reconnects at its next command
	undefine(t, sw.Device(), index)
	var err error
	for range 3 { // the first may still be recorded before the counter step
		if _, err = be.RotateKey(t.Context(), "gone/k"); errors.Is(err, keys.ErrIntegrity) {
			break
		}
	}
	if !errors.Is(err, tpm.ErrHistoryLost) || !strings.Contains(err.Error(), "gone from the TPM") {
		t.Fatalf("rotations with the counter gone: %v, want ErrHistoryLost naming it", err)
	}
}
