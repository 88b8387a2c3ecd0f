package audit

import (
	"bytes"
	"errors"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestRestartLargeFile: with a file larger than the scan window, Open checks
// only its first record and its end, and still continues the chain, moves a
// torn tail aside and refuses a record after damage in the window; damage
// before the window does not stop Open (Verify still reports it).
func TestRestartLargeFile(t *testing.T) {
	const window = 2048 // a few records
	tests := []struct {
		name     string
		damage   func(lines [][]byte) []byte
		wantSeq  uint64
		wantTorn func(lines [][]byte) []byte
		wantErr  error
		broken   int // line at which Verify breaks after Open (0: intact)
	}{
		{name: "clean", damage: func(ls [][]byte) []byte { return bytes.Join(ls, nil) }, wantSeq: 100},
		{name: "torn last line", damage: func(ls [][]byte) []byte { return append(bytes.Join(ls[:99], nil), ls[99][:50]...) }, wantSeq: 99,
			wantTorn: func(ls [][]byte) []byte { return ls[99][:50] }},
		{name: "last newline lost", damage: func(ls [][]byte) []byte { b := bytes.Join(ls, nil); return b[:len(b)-1] }, wantSeq: 100},
		{name: "torn tail longer than the window", damage: func(ls [][]byte) []byte {
			return append(bytes.Join(ls, nil), bytes.Repeat([]byte("\x00\x00\x00\n"), 3*window/4)...)
		}, wantSeq: 100, wantTorn: func([][]byte) []byte { return bytes.Repeat([]byte("\x00\x00\x00\n"), 3*window/4) }},
		{name: "free space longer than the window", damage: func(ls [][]byte) []byte {
			return append(bytes.Join(ls, nil), make([]byte, 5*window)...)
		}, wantSeq: 100},
		{name: "torn write into free space", damage: func(ls [][]byte) []byte {
			return bytes.Join([][]byte{bytes.Join(ls[:99], nil), ls[99][:70], make([]byte, 5*window)}, nil)
		}, wantSeq: 99, wantTorn: func(ls [][]byte) []byte { return ls[99][:70] }},
		{name: "record after damage in the window", damage: func(ls [][]byte) []byte {
			return bytes.Join([][]byte{bytes.Join(ls[:97], nil), []byte("xx\n"), bytes.Join(ls[98:], nil)}, nil)
		}, wantErr: ErrCorrupt},
		{name: "record missing in the window", damage: func(ls [][]byte) []byte {
			return append(bytes.Join(ls[:97], nil), bytes.Join(ls[98:], nil)...)
		}, wantErr: ErrCorrupt},
		// The trade-off: Open does not see damage before the window.
		{name: "damaged record before the window", damage: func(ls [][]byte) []byte {
			return bytes.Join([][]byte{bytes.Join(ls[:10], nil), bytes.Replace(ls[10], []byte(`"op":"unwrap"`), []byte(`"op":"unwrab"`), 1), bytes.Join(ls[11:], nil)}, nil)
		}, wantSeq: 100, broken: 11},
		// The window is taken before the free space: still only the end is read.
		{name: "damaged record before the window, then free space", damage: func(ls [][]byte) []byte {
			return bytes.Join([][]byte{bytes.Join(ls[:10], nil), bytes.Replace(ls[10], []byte(`"op":"unwrap"`), []byte(`"op":"unwrab"`), 1),
				bytes.Join(ls[11:], nil), make([]byte, 5*window)}, nil)
		}, wantSeq: 100, broken: 11},
		{name: "first record damaged", damage: func(ls [][]byte) []byte {
			return append([]byte("xx\n"), bytes.Join(ls[1:], nil)...)
		}, wantErr: ErrCorrupt}, // the whole file is read, as before
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path, lines := writeLog(t, t.TempDir(), 100, Options{})
			content := tc.damage(lines)
			if int64(len(content)) <= 10*window {
				t.Fatalf("file of %d bytes: not large enough", len(content))
			}
			if err := os.WriteFile(path, content, 0o600); err != nil {
				t.Fatal(err)
			}
			// Rotate after the first Append, to check the first seq Open found.
			l, err := Open(path, Options{MaxFileSize: int64(len(bytes.Join(lines[:90], nil))), scanWindow: window})
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Open: %v, want %v", err, tc.wantErr)
				}
				if after, _ := os.ReadFile(path); !bytes.Equal(after, content) {
					t.Error("Open changed a corrupt file")
				}
				t.Log(err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			rep := l.OpenReport()
			if rep.Seq != tc.wantSeq || rep.From != path {
				t.Errorf("report %+v, want seq %d from %s", rep, tc.wantSeq, path)
			}
			if tc.wantTorn != nil {
				want := tc.wantTorn(lines)
				got, err := os.ReadFile(rep.TornFile)
				if err != nil || !bytes.Equal(got, want) || rep.TornBytes != int64(len(want)) {
					t.Errorf("torn file %q: %d bytes, %v; want %d", rep.TornFile, len(got), err, len(want))
				}
			} else if rep.TornFile != "" {
				t.Errorf("torn file %s", rep.TornFile)
			}
			appendN(t, l, "after", 5)
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			// The first append reached MaxFileSize: the file was rotated under
			// the name of its first and last seqs.
			rotated := RotatedName(path, 1, tc.wantSeq+1)
			if _, err := os.Stat(rotated); err != nil {
				t.Errorf("rotated file: %v", err)
			}
			if tc.broken == 0 {
				verifyChain(t, path, tc.wantSeq+5)
				return
			}
			files, _, _ := Chain(path)
			res, err := Verify(files...)
			var brk *Break
			if !errors.As(err, &brk) || brk.File != rotated || brk.Line != tc.broken {
				t.Fatalf("Verify: %+v, %v; want a break at %s:%d", res, err, rotated, tc.broken)
			}
			t.Logf("Open went on; Verify: %v", err)
		})
	}
}

// bigLog writes a log of about size bytes at dir/audit.log without fsyncs.
func bigLog(t testing.TB, dir string, size int) (string, uint64) {
	t.Helper()
	p, err := prepare(rec("bench-request-0123456789"), time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	var buf []byte
	var prev [32]byte
	var seq uint64
	for len(buf) < size {
		seq++
		buf, prev = appendLine(buf, seq, prev, p)
	}
	path := filepath.Join(dir, "audit.log")
	if err := os.WriteFile(path, buf, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, seq
}

// BenchmarkOpen: Open (and Close) on a 20 MB current file, checking the
// last window (now) or all of it (before).
func BenchmarkOpen(b *testing.B) {
	path, n := bigLog(b, b.TempDir(), 20<<20)
	for _, w := range []struct {
		name string
		size int64
	}{{"window=1MiB", 1 << 20}, {"window=64KiB", 64 << 10}, {"window=all", math.MaxInt64}} {
		b.Run(w.name, func(b *testing.B) {
			for b.Loop() {
				l, err := Open(path, Options{scanWindow: w.size})
				if err != nil {
					b.Fatal(err)
				}
				if rep := l.OpenReport(); rep.Seq != n {
					b.Fatalf("seq %d, want %d", rep.Seq, n)
				}
				l.Close()
			}
		})
	}
	b.Logf("%d records", n)
}
