package audit

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/keyward/keyward/internal/testutil"
)

// countingFile counts the fsyncs of the log file and fails them on demand.
type countingFile struct {
	*os.File
	syncs *atomic.Int64
	fail  *atomic.Bool
}

func (f countingFile) Sync() error {
	if f.fail.Load() {
		return syscall.EIO
	}
	f.syncs.Add(1)
	return f.File.Sync()
}

func countingOpener(syncs *atomic.Int64, fail *atomic.Bool) func(string, int, fs.FileMode) (file, error) {
	return func(name string, flag int, perm fs.FileMode) (file, error) {
		f, err := os.OpenFile(name, flag, perm)
		if err != nil {
			return nil, err
		}
		return countingFile{File: f, syncs: syncs, fail: fail}, nil
	}
}

// syncedWithin polls until the log's Synced reaches its Seq.
func syncedWithin(t *testing.T, l *Log, d time.Duration) Stats {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		st := l.Stats()
		if st.Synced == st.Seq {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: synced %d of %d records", d, st.Synced, st.Seq)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestParseSyncMode(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want SyncMode
		err  bool
	}{
		{"fsync", SyncEach, false},
		{"write", SyncWrite, false},
		{"", 0, true},
		{"FSYNC", 0, true},
		{"none", 0, true},
	} {
		got, err := ParseSyncMode(tc.in)
		if (err != nil) != tc.err || (err == nil && (got != tc.want || got.String() != tc.in)) {
			t.Errorf("ParseSyncMode(%q) = %v, %v", tc.in, got, err)
		}
	}
	if _, err := Open(filepath.Join(t.TempDir(), "a"), Options{Sync: SyncMode(7)}); err == nil {
		t.Error("Open with an unknown sync mode: no error")
	}
}

// TestSyncWrite: with SyncWrite an Append returns once its record is
// written, the file is fsynced within SyncInterval (by the writer when the
// log goes quiet, by a commit when appends keep coming), at rotation and at
// Close; SyncEach fsyncs every batch.
func TestSyncWrite(t *testing.T) {
	t.Parallel() // its own Log in its own directory; it mostly waits
	t.Run("each", func(t *testing.T) {
		var syncs atomic.Int64
		l := open(t, filepath.Join(t.TempDir(), "audit.log"), Options{openFile: countingOpener(&syncs, new(atomic.Bool))})
		base := syncs.Load()
		appendN(t, l, "r", 10)
		if st := l.Stats(); syncs.Load()-base != 10 || st.Synced != 10 {
			t.Fatalf("%d fsyncs for 10 sequential appends, synced %d", syncs.Load()-base, st.Synced)
		}
	})

	t.Run("released before the fsync", func(t *testing.T) {
		var syncs atomic.Int64
		path := filepath.Join(t.TempDir(), "audit.log")
		l, err := Open(path, Options{Sync: SyncWrite, SyncInterval: time.Hour, openFile: countingOpener(&syncs, new(atomic.Bool))})
		if err != nil {
			t.Fatal(err)
		}
		base := syncs.Load()
		appendN(t, l, "seq", 20)
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Go(func() { appendN(t, l, fmt.Sprintf("g%d", g), 10) })
		}
		wg.Wait()
		st := l.Stats()
		if n := syncs.Load() - base; n != 0 || st.Seq != 100 || st.Synced != 0 {
			t.Fatalf("%d fsyncs, seq %d, synced %d: want 100 records written, none fsynced yet", n, st.Seq, st.Synced)
		}
		// Written: another reader sees every record now.
		verifyChain(t, path, 100)
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		if n := syncs.Load() - base; n != 1 || l.Stats().Synced != 100 {
			t.Fatalf("Close: %d fsyncs, synced %d; want 1 and 100", n, l.Stats().Synced)
		}
	})

	t.Run("idle log synced by the writer", func(t *testing.T) {
		var syncs atomic.Int64
		const interval = 2 * time.Second // long enough that a busy machine does not reach it mid-test
		l := open(t, filepath.Join(t.TempDir(), "audit.log"), Options{Sync: SyncWrite, SyncInterval: interval, openFile: countingOpener(&syncs, new(atomic.Bool))})
		time.Sleep(interval + 50*time.Millisecond) // the open's fsync is old: the first record is synced at once
		base := syncs.Load()
		appendN(t, l, "a", 1)
		if st := l.Stats(); st.Synced != 1 || syncs.Load()-base != 1 {
			t.Fatalf("first record after a quiet interval: synced %d, %d fsyncs", st.Synced, syncs.Load()-base)
		}
		appendN(t, l, "b", 5)
		if st := l.Stats(); st.Synced != 1 {
			t.Fatalf("records within the interval: synced %d, want 1 (not yet)", st.Synced)
		}
		syncedWithin(t, l, interval+30*time.Second) // no Append: the writer syncs them
		if n := syncs.Load() - base; n != 2 {
			t.Errorf("%d fsyncs for 2 intervals' records, want 2", n)
		}
	})

	t.Run("steady appends", func(t *testing.T) {
		var syncs atomic.Int64
		const interval = 20 * time.Millisecond
		l := open(t, filepath.Join(t.TempDir(), "audit.log"), Options{Sync: SyncWrite, SyncInterval: interval, openFile: countingOpener(&syncs, new(atomic.Bool))})
		base := syncs.Load()
		var lag atomic.Int64 // the most records written and not synced seen
		start := time.Now()
		stop := start.Add(300 * time.Millisecond)
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Go(func() {
				for i := 0; time.Now().Before(stop); i++ {
					if err := l.Append(context.Background(), rec(fmt.Sprintf("g%d-%d", g, i))); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		wg.Go(func() {
			for time.Now().Before(stop) {
				time.Sleep(interval / 2)
				st := l.Stats()
				if st.Synced > 0 { // after the first fsync: the age of unsynced records is bounded
					lag.Store(max(lag.Load(), int64(st.Seq-st.Synced)))
				}
			}
		})
		wg.Wait()
		st := syncedWithin(t, l, 30*time.Second)
		// Batched: far fewer fsyncs than records, at most one per interval
		// of the time this really took (a slow machine takes longer, and
		// a slow disk syncs less often: neither fails this).
		n := syncs.Load() - base
		if most := int64(time.Since(start)/interval) + 2; n < 1 || n > most || uint64(n) >= st.Records/4 {
			t.Errorf("%d fsyncs for %d records in %v at a %v interval, want 1..%d", n, st.Records, time.Since(start), interval, most)
		}
		t.Logf("%d records, %d batches, %d fsyncs, at most %d records unsynced", st.Records, st.Batches, n, lag.Load())
	})

	t.Run("rotation syncs the old file", func(t *testing.T) {
		var syncs atomic.Int64
		path := filepath.Join(t.TempDir(), "audit.log")
		l := open(t, path, Options{Sync: SyncWrite, SyncInterval: time.Hour, MaxFileSize: 4096, openFile: countingOpener(&syncs, new(atomic.Bool))})
		for i := 0; l.Stats().Rotations == 0; i++ {
			if i > 100 {
				t.Fatal("no rotation after 100 records of a 4 KiB file")
			}
			appendN(t, l, fmt.Sprintf("r%d", i), 1)
		}
		files, _, err := Chain(path)
		if err != nil {
			t.Fatal(err)
		}
		last := records(t, files[0])
		if st := l.Stats(); st.Synced < last[len(last)-1].Seq {
			t.Fatalf("rotated %s ends at seq %d, synced only to %d", files[0], last[len(last)-1].Seq, st.Synced)
		}
	})
}

// TestSyncWriteFailure: with SyncWrite a failed fsync fails the log closed,
// names the records acknowledged but not known to be on disk, and the log
// recovers when fsync works again.
func TestSyncWriteFailure(t *testing.T) {
	t.Parallel() // its own Log in its own directory; it mostly waits
	var syncs atomic.Int64
	var failSync atomic.Bool
	var logBuf testutil.SyncBuffer
	path := filepath.Join(t.TempDir(), "audit.log")
	// An interval long enough that the 5 appends below are done before it
	// ends, on any machine.
	const interval = 2 * time.Second
	l := open(t, path, Options{Sync: SyncWrite, SyncInterval: interval, RetryInterval: 10 * time.Millisecond,
		openFile: countingOpener(&syncs, &failSync), Logger: slog.New(slog.NewTextHandler(&logBuf, nil))})
	time.Sleep(interval + 50*time.Millisecond)
	appendN(t, l, "synced", 1) // past the interval: synced at once
	failSync.Store(true)
	appendN(t, l, "acked", 5) // written and acknowledged, fsync pending

	deadline := time.Now().Add(interval + 30*time.Second)
	for failing, _, _ := l.Status(); !failing; failing, _, _ = l.Status() {
		if time.Now().After(deadline) {
			t.Fatal("the writer's failed fsync did not fail the log")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := l.Append(context.Background(), rec("refused")); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Append while failing: %v", err)
	}
	logs := logBuf.String()
	if !strings.Contains(logs, "not yet fsynced") || !strings.Contains(logs, "seqs=2..6") {
		t.Fatalf("log does not name the unsynced acknowledged records 2..6:\n%s", logs)
	}

	failSync.Store(false)
	deadline = time.Now().Add(30 * time.Second)
	for {
		err := l.Append(context.Background(), rec("after"))
		if err == nil {
			break
		}
		if !errors.Is(err, ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("Append after fsync healed: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	syncedWithin(t, l, interval+30*time.Second)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	verifyChain(t, path, 7) // synced, 5 acked, after
}

// TestSyncWriteSurvivesKill: SyncWrite's promise is that a record whose
// Append returned outlives the process. A child process appends and
// reports each acknowledged seq; it is SIGKILLed mid-stream, and every
// acknowledged record is in the file, whose chain verifies and reopens.
func TestSyncWriteSurvivesKill(t *testing.T) {
	if dir := os.Getenv("AUDIT_KILL_CHILD"); dir != "" {
		killChild(dir)
		return
	}
	for round := range 5 {
		dir := t.TempDir()
		cmd := exec.Command(os.Args[0], "-test.run=^TestSyncWriteSurvivesKill$")
		cmd.Env = append(os.Environ(), "AUDIT_KILL_CHILD="+dir)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var acked uint64
		sc := bufio.NewScanner(out)
		target := uint64(200 + 150*round)
		for acked < target && sc.Scan() {
			if n, err := strconv.ParseUint(strings.TrimPrefix(sc.Text(), "acked "), 10, 64); err == nil {
				acked = n
			}
		}
		cmd.Process.Kill()
		cmd.Wait()
		if acked < target {
			t.Fatalf("round %d: child stopped after %d acknowledged records", round, acked)
		}
		// Open moves a torn last line aside (the kill can cut a write at
		// a page boundary); every acknowledged record is before it.
		path := filepath.Join(dir, "audit.log")
		l := open(t, path, Options{})
		found := l.Stats().Seq
		if found < acked {
			t.Fatalf("round %d: %d records acknowledged before the kill, the file has %d", round, acked, found)
		}
		appendN(t, l, "after", 1)
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		verifyChain(t, path, found+1)
		t.Logf("round %d: killed after %d acknowledged, %d in the file", round, acked, found)
	}
}

// killChild appends until killed, printing each acknowledged seq.
func killChild(dir string) {
	l, err := Open(filepath.Join(dir, "audit.log"), Options{Sync: SyncWrite, SyncInterval: time.Hour})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	w := bufio.NewWriter(os.Stdout)
	for i := 1; ; i++ {
		if err := l.Append(context.Background(), rec(fmt.Sprintf("k%d", i))); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		fmt.Fprintf(w, "acked %d\n", i)
		w.Flush()
	}
}

// blockingFile's fsync waits until release is closed.
type blockingFile struct {
	*os.File
	entered chan struct{}
	release chan struct{}
}

func (f blockingFile) Sync() error {
	select {
	case f.entered <- struct{}{}:
	default:
	}
	<-f.release
	return f.File.Sync()
}

// TestMaxWait: an Append queued behind a stuck fsync gives up after MaxWait
// with context.DeadlineExceeded; the stuck one finishes once the disk does.
func TestMaxWait(t *testing.T) {
	entered, release := make(chan struct{}, 1), make(chan struct{})
	var blocking atomic.Bool
	opener := func(name string, flag int, perm fs.FileMode) (file, error) {
		f, err := os.OpenFile(name, flag, perm)
		if err != nil {
			return nil, err
		}
		if !blocking.Load() {
			return f, nil // Open's own fsync
		}
		return blockingFile{File: f, entered: entered, release: release}, nil
	}
	blocking.Store(false)
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path, Options{MaxWait: 50 * time.Millisecond, openFile: opener})
	if err != nil {
		t.Fatal(err)
	}
	blocking.Store(true)
	l.mu.Lock()
	l.dirty = true // the next commit reopens through the blocking opener
	l.mu.Unlock()
	first := make(chan error, 1)
	go func() { first <- l.Append(context.Background(), rec("stuck")) }()
	<-entered // the reopen's fsync is stuck: the log is committing
	start := time.Now()
	err = l.Append(context.Background(), rec("queued"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("queued Append behind a stuck fsync: %v, want DeadlineExceeded", err)
	}
	// It gave up while the fsync is still stuck, and not before MaxWait.
	if d := time.Since(start); d < 40*time.Millisecond {
		t.Errorf("gave up after %v, MaxWait 50ms", d)
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatalf("the stuck Append, once the disk answered: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// The queued record may still have been written after its caller gave
	// up (never the reverse: no reply without a record).
	res := verifyChainAtLeast(t, path, 1)
	t.Logf("%d records in the file", res.Records)
}

func verifyChainAtLeast(t *testing.T, path string, n uint64) Result {
	t.Helper()
	res, err := Verify(path)
	if err != nil || res.Records < n {
		t.Fatalf("Verify: %+v, %v; want at least %d records", res, err, n)
	}
	return res
}
