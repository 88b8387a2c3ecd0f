package audit

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Fault modes for faultyFile.
const (
	noFault   = iota
	failWrite // write half the bytes, then ENOSPC
	failSync  // writes work, fsync returns EIO
)

// faultyFile is the log file with failures on demand.
type faultyFile struct {
	*os.File
	mode *atomic.Int32
}

func (f faultyFile) WriteAt(b []byte, off int64) (int, error) {
	if f.mode.Load() == failWrite {
		n, _ := f.File.WriteAt(b[:len(b)/2], off)
		return n, syscall.ENOSPC
	}
	return f.File.WriteAt(b, off)
}

func (f faultyFile) Sync() error {
	if f.mode.Load() == failSync {
		return syscall.EIO
	}
	return f.File.Sync()
}

func faultyOpener(mode *atomic.Int32) func(string, int, fs.FileMode) (file, error) {
	return func(name string, flag int, perm fs.FileMode) (file, error) {
		f, err := os.OpenFile(name, flag, perm)
		if err != nil {
			return nil, err
		}
		return faultyFile{File: f, mode: mode}, nil
	}
}

// outage drives a log through an outage: records before, Appends refused
// during (fail and setFault start and end it), records after. It checks that
// the file never holds a half line, that every successful Append is in the
// file and no refused one is, and that the chain verifies.
func outage(t *testing.T, path string, l *Log, fail, heal func()) {
	t.Helper()
	ok := map[string]bool{}
	refused := map[string]bool{}
	for _, id := range appendN(t, l, "before", 10) {
		ok[id] = true
	}

	fail()
	// Until the disk fails, Appends may still succeed (a tmpfs page with
	// room left); then they all fail.
	var firstErr error
	for i := 0; i < 1000 && firstErr == nil; i++ {
		id := fmt.Sprintf("filling-%d", i)
		if err := l.Append(context.Background(), rec(id)); err != nil {
			firstErr = err
			refused[id] = true
		} else {
			ok[id] = true
		}
	}
	if !errors.Is(firstErr, ErrUnavailable) {
		t.Fatalf("Append on a failing disk: %v, want ErrUnavailable", firstErr)
	}
	failing, lastErr, _ := l.Status()
	if !failing || lastErr == nil {
		t.Fatalf("Status: failing %v, lastErr %v", failing, lastErr)
	}
	t.Logf("failing: %v", lastErr)

	// Concurrent Appends during the outage all fail.
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i := range 20 {
		wg.Go(func() {
			id := fmt.Sprintf("during-%d", i)
			err := l.Append(context.Background(), rec(id))
			mu.Lock()
			defer mu.Unlock()
			if !errors.Is(err, ErrUnavailable) {
				t.Errorf("Append during the outage: %v", err)
			}
			refused[id] = true
		})
	}
	wg.Wait()
	// No half line in the file while failing: it verifies as it stands.
	if _, err := Verify(path); err != nil {
		t.Fatalf("during the outage: %v", err)
	}

	heal()
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; ; i++ {
		id := fmt.Sprintf("retry-%d", i)
		err := l.Append(context.Background(), rec(id))
		if err == nil {
			ok[id] = true
			break
		}
		refused[id] = true
		if !errors.Is(err, ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("Append after the disk healed: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if failing, _, _ := l.Status(); failing {
		t.Fatal("still failing after a successful Append")
	}
	for _, id := range appendN(t, l, "after", 10) {
		ok[id] = true
	}
	st := l.Stats()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if st.Refused != uint64(len(refused)) {
		t.Errorf("Stats.Refused %d, %d refused", st.Refused, len(refused))
	}

	verifyChain(t, path, uint64(len(ok)))
	for i, r := range records(t, path) {
		if r.Seq != uint64(i+1) {
			t.Fatalf("record %d has seq %d", i, r.Seq)
		}
		if !ok[r.RequestID] {
			t.Errorf("record %s is in the file but its Append failed", r.RequestID)
		}
		delete(ok, r.RequestID)
	}
	if len(ok) != 0 {
		t.Errorf("successful Appends missing from the file: %v", ok)
	}
}

// TestFailClosed: a write or fsync error fails the batch and the Appends
// after it with ErrUnavailable; the log recovers when the disk does.
func TestFailClosed(t *testing.T) {
	for _, tc := range []struct {
		name string
		mode int32
	}{
		{name: "write fails halfway", mode: failWrite},
		{name: "fsync fails", mode: failSync},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.log")
			var mode atomic.Int32
			l := open(t, path, Options{RetryInterval: 20 * time.Millisecond, openFile: faultyOpener(&mode)})
			outage(t, path, l, func() { mode.Store(tc.mode) }, func() { mode.Store(noFault) })
		})
	}
}

// TestFailClosedRotation: rotation keeps working around an outage.
func TestFailClosedRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	var mode atomic.Int32
	l := open(t, path, Options{MaxFileSize: 1500, RetryInterval: 10 * time.Millisecond, openFile: faultyOpener(&mode)})
	appendN(t, l, "a", 7)
	mode.Store(failWrite)
	if err := l.Append(context.Background(), rec("x")); !errors.Is(err, ErrUnavailable) {
		t.Fatal(err)
	}
	mode.Store(noFault)
	// The first Append after RetryInterval retries the disk; those before
	// it fail fast.
	for deadline := time.Now().Add(30 * time.Second); ; {
		err := l.Append(context.Background(), rec("b"))
		if err == nil {
			break
		}
		if !errors.Is(err, ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("Append after the disk healed: %v", err)
		}
		time.Sleep(time.Millisecond)
	}
	appendN(t, l, "b", 19)
	l.Close()
	verifyChain(t, path, 27)
}
