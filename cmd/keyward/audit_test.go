package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyward/keyward/audit"
)

// auditLog writes n records to dir/audit.log, rotating at maxSize, and
// returns its path and the chain's last hash.
func auditLog(t *testing.T, dir string, n int, maxSize int64) (string, string) {
	t.Helper()
	path := filepath.Join(dir, "audit.log")
	l, err := audit.Open(path, audit.Options{MaxFileSize: maxSize})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		r := audit.Record{Op: "unwrap", Key: "payments/db", Version: 1, Result: "OK",
			Peer: audit.Peer{UID: 1000, GID: 1000, PID: 42}, Duration: time.Millisecond, RequestID: fmt.Sprint(i)}
		if err := l.Append(context.Background(), r); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	st := l.Stats()
	return path, hex.EncodeToString(st.Hash[:])
}

// TestAuditVerify runs keyward audit verify on real logs, intact and
// tampered with, and on bad command lines.
func TestAuditVerify(t *testing.T) {
	single := t.TempDir()
	one, oneHash := auditLog(t, single, 10, 0)
	rotated := t.TempDir()
	cur, curHash := auditLog(t, rotated, 40, 2048)
	chain, _, err := audit.Chain(cur)
	if err != nil || len(chain) < 3 {
		t.Fatalf("Chain: %v, %v", chain, err)
	}

	lines := func(path string) []string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return strings.SplitAfter(strings.TrimSuffix(string(b), "\n"), "\n")
	}
	tampered := func(name string, f func([]string) []string) string {
		p := filepath.Join(t.TempDir(), name)
		if err := os.WriteFile(p, []byte(strings.Join(f(lines(one)), "")), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	flipped := tampered("flipped", func(ls []string) []string {
		ls[4] = strings.Replace(ls[4], `"payments/db"`, `"payments/dc"`, 1)
		return ls
	})
	deleted := tampered("deleted", func(ls []string) []string { return append(ls[:4:4], ls[5:]...) })
	swapped := tampered("swapped", func(ls []string) []string { ls[4], ls[5] = ls[5], ls[4]; return ls })
	truncated := tampered("truncated", func(ls []string) []string { ls[9] = ls[9][:len(ls[9])/2]; return ls })

	twoLogs := t.TempDir()
	auditLog(t, twoLogs, 1, 0)
	os.WriteFile(filepath.Join(twoLogs, "other.log"), nil, 0o600)
	withTorn := t.TempDir()
	tornPath, _ := auditLog(t, withTorn, 3, 0)
	os.WriteFile(tornPath+".torn-20250101T000000.000000000Z", []byte("{\"seq\":4"), 0o600)

	tests := []struct {
		name   string
		args   []string
		code   int
		stdout []string // substrings of stdout
		stderr string   // substring of the one stderr line; "" for none
	}{
		{name: "one file", args: []string{one}, stdout: []string{"ok: 10 records, seq 1..10, last hash " + oneHash + "\n"}},
		{name: "rotated files in order", args: chain, stdout: []string{"ok: 40 records, seq 1..40, last hash " + curHash}},
		{name: "dir", args: []string{"--dir", rotated}, stdout: []string{"ok: 40 records, seq 1..40, last hash " + curHash}},
		{name: "current file alone", args: []string{cur}, stdout: []string{"ok: "}},
		{name: "dir with a torn tail", args: []string{"--dir", withTorn}, stdout: []string{"ok: 3 records", "note: " + tornPath + ".torn-"}},
		{name: "byte flipped", args: []string{flipped}, code: exitFailed, stdout: []string{"broken: " + flipped + ":5 (seq 5): hash does not match", "before it: 4 records verified, seq 1..4"}},
		{name: "record deleted", args: []string{deleted}, code: exitFailed, stdout: []string{"broken: " + deleted + ":5 (seq 6): seq 6 follows seq 4"}},
		{name: "records swapped", args: []string{swapped}, code: exitFailed, stdout: []string{"broken: " + swapped + ":5 (seq 6): seq 6 follows seq 4"}},
		{name: "tail truncated mid-line", args: []string{truncated}, code: exitFailed, stdout: []string{"broken: " + truncated + ":10 (seq 10): incomplete last line"}},
		{name: "rotated file missing", args: append([]string{chain[0]}, chain[2:]...), code: exitFailed, stdout: []string{"broken: " + chain[2] + ":1 "}},
		{name: "files out of order", args: append([]string{chain[1], chain[0]}, chain[2:]...), code: exitFailed, stdout: []string{"broken: " + chain[0] + ":1 (seq 1)"}},
		{name: "no files", args: nil, code: exitUsage, stderr: "missing the FILE"},
		{name: "files and dir", args: []string{one, "--dir", single}, code: exitUsage, stderr: "not both"},
		{name: "a directory as FILE", args: []string{single}, code: exitUsage, stderr: "use --dir"},
		{name: "dir with two logs", args: []string{"--dir", twoLogs}, code: exitUsage, stderr: "several logs"},
		{name: "empty dir", args: []string{"--dir", t.TempDir()}, code: exitNotFound, stderr: "no audit log"},
		{name: "missing dir", args: []string{"--dir", filepath.Join(single, "nope")}, code: exitNotFound, stderr: "no such file"},
		{name: "missing file", args: []string{filepath.Join(single, "nope")}, code: exitNotFound, stderr: "no such file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := keyward(t, nil, append([]string{"audit", "verify"}, tc.args...)...)
			if r.code != tc.code {
				t.Errorf("exit %d, want %d (stdout %q, stderr %q)", r.code, tc.code, r.stdout, r.stderr)
			}
			for _, want := range tc.stdout {
				if !strings.Contains(r.stdout, want) {
					t.Errorf("stdout %q lacks %q", r.stdout, want)
				}
			}
			if tc.stderr == "" {
				if r.stderr != "" {
					t.Errorf("stderr %q", r.stderr)
				}
			} else {
				checkErrLine(t, r, tc.stderr)
			}
		})
	}

	r := keyward(t, nil, "audit", "verify", "--help")
	for _, want := range []string{"keyward audit verify --dir /var/log/keyward", "Example:", "SHA-256(prev"} {
		if r.code != 0 || !bytes.Contains([]byte(r.stdout), []byte(want)) {
			t.Errorf("help: exit %d, lacks %q", r.code, want)
		}
	}
}
