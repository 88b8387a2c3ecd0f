package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keyward/keyward/audit"
)

// syncBuffer is a bytes.Buffer safe for one writer and one reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// appendIDs appends a record per id to l.
func appendIDs(t *testing.T, l *audit.Log, prefix string, n int) []string {
	t.Helper()
	var ids []string
	for i := range n {
		id := fmt.Sprintf("%s-%d", prefix, i)
		r := audit.Record{Op: "unwrap", Key: "payments/db", Result: "OK", Peer: audit.Peer{UID: 1000}, RequestID: id}
		if err := l.Append(context.Background(), r); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

// requestIDs reads the request ids of the JSON lines out printed, and fails
// on anything that is not a whole record.
func requestIDs(t *testing.T, out string) []string {
	t.Helper()
	if strings.IndexByte(out, 0) >= 0 {
		t.Fatalf("NUL bytes in the output: %q", out)
	}
	var ids []string
	for _, line := range strings.SplitAfter(out, "\n") {
		if line == "" {
			continue
		}
		_, id, ok := strings.Cut(line, `"request_id":"`)
		id, _, ok2 := strings.Cut(id, `"`)
		if !ok || !ok2 || !strings.HasSuffix(line, "\"}\n") {
			t.Fatalf("not a whole record: %q", line)
		}
		ids = append(ids, id)
	}
	return ids
}

// TestAuditTail: audit tail prints the last records of a log that
// keywardd's writer holds open (its current file ending in free space),
// counting back across rotated files, and only complete records.
func TestAuditTail(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	l, err := audit.Open(path, audit.Options{MaxFileSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ids := appendIDs(t, l, "r", 25)
	if b, _ := os.ReadFile(path); bytes.IndexByte(b, 0) < 0 {
		t.Fatal("the open log's current file has no free space: nothing under test")
	}
	// audit verify takes the free space for what it is.
	if r := keyward(t, nil, "audit", "verify", "--dir", dir); r.code != 0 || !strings.Contains(r.stdout, "ok: 25 records") {
		t.Fatalf("audit verify of the open log: exit %d, %q %q", r.code, r.stdout, r.stderr)
	}
	tests := []struct {
		name string
		args []string
		want []string
		code int
	}{
		{name: "default 10", args: []string{"--dir", dir}, want: ids[15:]},
		{name: "across rotated files", args: []string{"--dir", dir, "-n", "22"}, want: ids[3:]},
		{name: "more than there are", args: []string{path, "-n", "1000"}, want: ids},
		{name: "none", args: []string{"--dir", dir, "-n", "0"}},
		{name: "negative", args: []string{"--dir", dir, "-n", "-1"}, code: exitUsage},
		{name: "both", args: []string{"--dir", dir, path}, code: exitUsage},
		{name: "no log", args: []string{"--dir", t.TempDir()}, code: exitNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := keyward(t, nil, append([]string{"audit", "tail"}, tc.args...)...)
			if r.code != tc.code {
				t.Fatalf("exit %d, want %d: %s", r.code, tc.code, r.stderr)
			}
			if got := requestIDs(t, r.stdout); tc.code == 0 && strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Errorf("printed %v, want %v", got, tc.want)
			}
		})
	}
}

// TestAuditTailFollow: audit tail -f prints every record written after it
// started, once each and in order, while the log rotates under it; it
// exits with status 0 on SIGINT.
func TestAuditTailFollow(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	l, err := audit.Open(path, audit.Options{MaxFileSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	before := appendIDs(t, l, "before", 3)

	cmd := exec.Command(bin, "audit", "tail", "-f", "-n", "1", "--dir", dir)
	cmd.Env = testEnv(nil)
	var stdout, stderr syncBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	waitIDs := func(n int) []string {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			if got := requestIDs(t, stdout.String()); len(got) >= n || time.Now().After(deadline) {
				return got
			}
		}
	}
	if got := waitIDs(1); len(got) != 1 || got[0] != before[2] {
		t.Fatalf("before following: printed %v, want [%s]", got, before[2])
	}
	var want []string
	for i := range 6 { // in bursts, so that polls fall between and within them
		want = append(want, appendIDs(t, l, fmt.Sprintf("during%d", i), 10)...)
		time.Sleep(time.Duration(i) * 50 * time.Millisecond)
	}
	if st := l.Stats(); st.Rotations < 3 {
		t.Fatalf("%d rotations while following: nothing under test", st.Rotations)
	}
	got := waitIDs(1 + len(want))
	if strings.Join(got[1:], ",") != strings.Join(want, ",") {
		t.Fatalf("printed %d records while following:\n%v\nwant %d:\n%v", len(got)-1, got[1:], len(want), want)
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("after SIGINT: %v, stderr %q", err, stderr.String())
	}
	if stderr.String() != "" {
		t.Errorf("stderr: %q", stderr.String())
	}
}

// TestAuditTailRollback: when keywardd cuts back records that tail -f
// printed (a write or sync that failed: the file is truncated to its last
// durable record and the next records, with the same seqs, are written
// there), tail says so on stderr and prints the records that are there now.
func TestAuditTailRollback(t *testing.T) {
	logLines := func(prefix string) [][]byte {
		path := filepath.Join(t.TempDir(), "audit.log")
		l, err := audit.Open(path, audit.Options{})
		if err != nil {
			t.Fatal(err)
		}
		appendIDs(t, l, prefix, 10)
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		lines, err := audit.FileLines(path)
		if err != nil {
			t.Fatal(err)
		}
		return lines
	}
	a, b := logLines("a"), logLines("b")
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	join := func(ls ...[]byte) []byte { return append(bytes.Join(ls, []byte("\n")), '\n') }
	if err := os.WriteFile(path, append(join(a...), make([]byte, 4096)...), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "audit", "tail", "-f", "-n", "100", path)
	cmd.Env = testEnv(nil)
	var stdout, stderr syncBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	wait := func(n int) []string {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			if got := requestIDs(t, stdout.String()); len(got) >= n || time.Now().After(deadline) {
				return got
			}
		}
	}
	wait(10)
	rolled := append(append([][]byte{}, a[:7]...), b[7:]...)
	if err := os.WriteFile(path, append(join(rolled...), make([]byte, 4096)...), 0o600); err != nil {
		t.Fatal(err)
	}
	got := wait(13)
	want := "a-0,a-1,a-2,a-3,a-4,a-5,a-6,a-7,a-8,a-9,b-7,b-8,b-9"
	if strings.Join(got, ",") != want {
		t.Fatalf("printed %v, want %s", got, want)
	}
	if !strings.Contains(stderr.String(), "rolled back") || !strings.Contains(stderr.String(), "from seq 8 on") {
		t.Errorf("stderr: %q", stderr.String())
	}
	cmd.Process.Signal(syscall.SIGINT)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("after SIGINT: %v", err)
	}
}

// TestAuditTailControlBytes: a line with control bytes (a crafted file or
// an older log: keywardd's records hold none) is named on stderr, never written to
// the terminal: C0 escapes, a C1 CSI (U+009B) and a lone 0x9b byte.
func TestAuditTailControlBytes(t *testing.T) {
	tests := []struct{ name, line, named string }{
		{"C0", "\x1b]0;PWNED\x07\x1b[2J", "control character"},
		{"C1", "{\"reason\":\"\u009b2J\"}", "control character"},
		{"not UTF-8", "{\"reason\":\"\x9b2J\"}", "not UTF-8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.log")
			body := "{\"seq\":1}\n" + tt.line + "\n{\"seq\":2}\n"
			if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
			r := keyward(t, nil, "audit", "tail", path, "-n", "10")
			if strings.ContainsAny(r.stdout, "\x1b\x07\u009b") || strings.Contains(r.stdout, "\x9b") || !strings.Contains(r.stdout, `{"seq":2}`) {
				t.Errorf("stdout %q: want the records without the control bytes", r.stdout)
			}
			if !strings.Contains(r.stderr, tt.named) {
				t.Errorf("stderr %q: want the line named (%q)", r.stderr, tt.named)
			}
		})
	}
}
