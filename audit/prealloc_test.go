package audit

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fileState reads path: its size and where its free space starts.
func fileState(t testing.TB, path string) (size, end int64) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return int64(len(b)), int64(len(bytes.TrimRight(b, "\x00")))
}

// TestFreeSpace: the current file is extended ahead of its records with
// zeros, one full fsync per extension; every other batch costs one
// fdatasync; readers and Verify see the records and not the free space;
// Close and rotation leave files that end at their last record.
func TestFreeSpace(t *testing.T) {
	t.Run("one data-only sync per batch", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "audit.log")
		l := open(t, path, Options{chunk: 4096})
		base := l.Stats()
		appendN(t, l, "r", 12)
		st := l.Stats()
		size, end := fileState(t, path)
		// 12 records of ~440 bytes: two extensions of the 4 KiB chunk.
		if st.Fsyncs-base.Fsyncs != 12 || st.Datasyncs-base.Datasyncs != 10 {
			t.Errorf("12 batches: %d syncs, %d of them data-only; want 12 and 10", st.Fsyncs-base.Fsyncs, st.Datasyncs-base.Datasyncs)
		}
		if size != 8192 || end >= size {
			t.Errorf("file of %d bytes, records end at %d: want 8192 with free space", size, end)
		}
		if recs := records(t, path); len(recs) != 12 {
			t.Errorf("reader: %d records, want 12", len(recs))
		}
		verifyChain(t, path, 12)
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		if size, end := fileState(t, path); size != end || end == 0 {
			t.Errorf("after Close: %d bytes, records end at %d; want no free space", size, end)
		}
		l = open(t, path, Options{chunk: 4096})
		appendN(t, l, "s", 3)
		verifyChain(t, path, 15)
	})

	t.Run("rotation", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "audit.log")
		l := open(t, path, Options{MaxFileSize: 2048, chunk: 4096})
		appendN(t, l, "r", 30)
		files, _, err := Chain(path)
		if err != nil || len(files) < 3 {
			t.Fatalf("Chain: %v, %v", files, err)
		}
		for _, f := range files[:len(files)-1] {
			if size, end := fileState(t, f); size != end {
				t.Errorf("rotated %s: %d bytes, records end at %d: free space left in it", f, size, end)
			}
		}
		// The chunk is bounded by MaxFileSize.
		if size, _ := fileState(t, path); size > 2048 {
			t.Errorf("current file of %d bytes, over MaxFileSize", size)
		}
		verifyChain(t, path, 30)
	})

	for _, off := range []struct {
		name string
		opts Options
	}{
		{"off", Options{NoPreallocate: true}},
		{"never with SyncWrite", Options{Sync: SyncWrite, SyncInterval: time.Millisecond}},
	} {
		t.Run(off.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.log")
			l := open(t, path, off.opts)
			appendN(t, l, "r", 5)
			if size, end := fileState(t, path); size != end {
				t.Errorf("%d bytes, records end at %d: free space", size, end)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			if st := l.Stats(); st.Datasyncs != 0 {
				t.Errorf("%d data-only syncs", st.Datasyncs)
			}
			verifyChain(t, path, 5)
		})
	}

	// A batch larger than half of Open's window is synced in pieces of
	// whole lines, so that what a crash can tear lies in that window.
	t.Run("large batch in pieces", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "audit.log")
		const window = 4096
		l := open(t, path, Options{scanWindow: window})
		rs := make([]Record, 40)
		for i := range rs {
			rs[i] = rec(fmt.Sprintf("big-%d", i))
		}
		base := l.Stats()
		if err := l.AppendAll(t.Context(), rs); err != nil {
			t.Fatal(err)
		}
		_, end := fileState(t, path)
		st := l.Stats()
		if syncs := int64(st.Fsyncs - base.Fsyncs); syncs < end/(window/2) || st.Batches-base.Batches != 1 {
			t.Errorf("one batch of %d bytes: %d syncs, want one per %d bytes at least", end, syncs, window/2)
		}
		verifyChain(t, path, 40)
	})

	t.Run("retry cuts the free space", func(t *testing.T) {
		var mode atomic.Int32
		path := filepath.Join(t.TempDir(), "audit.log")
		l := open(t, path, Options{chunk: 1 << 20, RetryInterval: 1, openFile: faultyOpener(&mode)})
		appendN(t, l, "r", 3)
		mode.Store(failSync)
		if err := l.Append(t.Context(), rec("lost")); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Append with fsync failing: %v", err)
		}
		if size, end := fileState(t, path); size != end {
			t.Errorf("failing: %d bytes, records end at %d; want the file cut to its records", size, end)
		}
		mode.Store(0)
		for deadline := time.Now().Add(30 * time.Second); !l.Accepting(); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the log does not accept a retry")
			}
		}
		appendN(t, l, "s", 2)
		if recs := records(t, path); len(recs) != 5 {
			t.Errorf("%d records after the retry, want 5", len(recs))
		}
		verifyChain(t, path, 5)
	})
}

// TestVerifyFreeSpace: free space is accepted at the end of the current
// file only, and must be NULs to the end.
func TestVerifyFreeSpace(t *testing.T) {
	dir := t.TempDir()
	path, lines := writeLog(t, dir, 6, Options{})
	body := bytes.Join(lines, nil)
	free := make([]byte, 5000)
	write := func(name string, parts ...[]byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, bytes.Join(parts, nil), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	stray := bytes.Clone(free)
	stray[4000] = '\n'
	rotated := RotatedName(path, 1, 6)
	tests := []struct {
		name   string
		files  []string
		reason string // "" for ok
	}{
		{name: "free space after the last record", files: []string{write("a.log", body, free)}},
		{name: "only free space", files: []string{write("b.log", free)}},
		{name: "a byte in the free space", files: []string{write("c.log", body, stray)}, reason: "a byte that is not NUL in the free space"},
		{name: "torn record", files: []string{write("d.log", body, lines[0][:40], free)}, reason: "a record torn by NUL bytes"},
		{name: "NULs before records", files: []string{write("e.log", lines[0], free[:3], bytes.Join(lines[1:], nil))}, reason: "a byte that is not NUL in the free space"},
		{name: "NULs inside a record", files: []string{write("h.log", lines[0][:20], free[:3], lines[0][20:])}, reason: "a record torn by NUL bytes"},
		{name: "a rotated file", files: []string{write(filepath.Base(rotated), body, free)}, reason: "only the current file may end with free space"},
		{name: "not the last file", files: []string{write("f.log", bytes.Join(lines[:3], nil), free), write("g.log", bytes.Join(lines[3:], nil))},
			reason: "only the current file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, err := Verify(tc.files...)
			if tc.reason == "" {
				if err != nil {
					t.Fatalf("%+v, %v; want ok", res, err)
				}
				return
			}
			var brk *Break
			if !errors.As(err, &brk) || !strings.Contains(brk.Reason, tc.reason) {
				t.Fatalf("err = %v; want a break ~%q", err, tc.reason)
			}
		})
	}
}

// TestReadLines: the tolerant reader returns complete lines, stops before
// free space and a line being written, and resumes from its offset.
func TestReadLines(t *testing.T) {
	_, lines := writeLog(t, t.TempDir(), 4, Options{})
	partial := lines[3][:30]
	content := bytes.Join([][]byte{lines[0], lines[1], lines[2], partial, make([]byte, 100)}, nil)
	var got [][]byte
	collect := func(line []byte) error { got = append(got, bytes.Clone(line)); return nil }
	off, err := ReadLines(bytes.NewReader(content), 0, collect)
	want := int64(len(bytes.Join(lines[:3], nil)))
	if err != nil || off != want || len(got) != 3 {
		t.Fatalf("ReadLines: %d lines, offset %d, %v; want 3 lines to %d", len(got), off, err, want)
	}
	// The write completes: reading on from the offset gives the rest.
	content = append(bytes.Join(lines, nil), make([]byte, 100)...)
	off, err = ReadLines(bytes.NewReader(content), off, collect)
	if err != nil || off != int64(len(bytes.Join(lines, nil))) || len(got) != 4 || !bytes.Equal(append(got[3], '\n'), lines[3]) {
		t.Fatalf("resumed: %d lines, offset %d, %v", len(got), off, err)
	}
}
