package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyward/keyward/audit"
	"github.com/keyward/keyward/envelope"
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
	cur, curHash := auditLog(t, rotated, 42, 2048)
	chain, _, err := audit.Chain(cur)
	if err != nil || len(chain) < 3 {
		t.Fatalf("Chain: %v, %v", chain, err)
	}

	lines := func(path string) []string {
		ls, err := audit.FileLines(path)
		if err != nil {
			t.Fatal(err)
		}
		out := make([]string, len(ls))
		for i, l := range ls {
			out[i] = string(l) + "\n"
		}
		return out
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

	// Where the current file and the second file start: the "file:" lines
	// of a run over the whole trail.
	type start struct{ seq, hash string }
	starts := map[string]start{}
	whole := keyward(t, nil, append([]string{"audit", "verify"}, chain...)...)
	for _, line := range strings.Split(whole.stdout, "\n") {
		var f, s, h string
		var last int
		if n, _ := fmt.Sscanf(line, "file: %s seq %s start --from-seq %d --from-hash %s", &f, &s, &last, &h); n == 4 {
			starts[f] = start{fmt.Sprint(last), h}
		}
	}
	curStart, second := starts[cur], starts[chain[1]]
	if whole.code != 0 || len(starts) != len(chain) || second.seq == "" || curStart.seq == "" {
		t.Fatalf("whole trail: exit %d, %q", whole.code, whole.stdout)
	}

	emptyLog := filepath.Join(t.TempDir(), "audit.log")
	if err := os.WriteFile(emptyLog, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		args   []string
		code   int
		stdout []string // substrings of stdout
		stderr string   // substring of the one stderr line; "" for none
	}{
		{name: "one file", args: []string{one}, stdout: []string{"ok: 10 records, seq 1..10, last hash " + oneHash + "\n"}},
		{name: "rotated files in order", args: chain, stdout: []string{"ok: 42 records, seq 1..42, last hash " + curHash}},
		{name: "dir", args: []string{"--dir", rotated}, stdout: []string{"ok: 42 records, seq 1..42, last hash " + curHash}},
		{name: "current file alone", args: []string{cur}, code: exitFailed,
			stdout: []string{"broken: " + cur + ":1 (seq " + curStart.seq + "): the first record is seq " + curStart.seq + ", not the genesis record", "hint: "}},
		{name: "current file from its start", args: []string{cur, "--from-seq", curStart.seq, "--from-hash", curStart.hash},
			stdout: []string{"ok: ", "file: " + cur + " seq " + curStart.seq + "..42, start --from-seq " + curStart.seq + " --from-hash " + curStart.hash + "\n"}},
		{name: "oldest file removed", args: chain[1:], code: exitFailed, stdout: []string{"broken: " + chain[1] + ":1 ", "not the genesis record"}},
		{name: "oldest file removed, start given", args: append([]string{"--from-seq", second.seq, "--from-hash", second.hash}, chain[1:]...),
			stdout: []string{"ok: ", "last hash " + curHash}},
		{name: "two files removed, start of the second given", args: append([]string{"--from-seq", second.seq, "--from-hash", second.hash}, chain[2:]...),
			code: exitFailed, stdout: []string{"broken: " + chain[2] + ":1 ", "are missing"}},
		{name: "start hash wrong", args: append([]string{"--from-seq", second.seq, "--from-hash", curHash}, chain[1:]...),
			code: exitFailed, stdout: []string{"not the hash given"}},
		{name: "from-seq without from-hash", args: []string{"--from-seq", "3", one}, code: exitUsage, stderr: "together"},
		{name: "from-hash not hex", args: []string{"--from-seq", "3", "--from-hash", "xyz", one}, code: exitUsage, stderr: "64 lower-case hex"},
		{name: "dir with a torn tail", args: []string{"--dir", withTorn}, stdout: []string{"ok: 3 records", "note: " + tornPath + ".torn-"}},
		{name: "byte flipped", args: []string{flipped}, code: exitFailed, stdout: []string{"broken: " + flipped + ":5 (seq 5): hash does not match", "before it: 4 records verified, seq 1..4"}},
		{name: "record deleted", args: []string{deleted}, code: exitFailed, stdout: []string{"broken: " + deleted + ":5 (seq 6): seq 6 follows seq 4"}},
		{name: "records swapped", args: []string{swapped}, code: exitFailed, stdout: []string{"broken: " + swapped + ":5 (seq 6): seq 6 follows seq 4"}},
		{name: "tail truncated mid-line", args: []string{truncated}, code: exitFailed, stdout: []string{"broken: " + truncated + ":10 (seq 10): incomplete last line"}},
		{name: "rotated file missing", args: append([]string{chain[0]}, chain[2:]...), code: exitFailed, stdout: []string{"broken: " + chain[2] + ":1 "}},
		{name: "files out of order", args: append([]string{chain[1], chain[0]}, chain[2:]...), code: exitFailed, stdout: []string{"broken: " + chain[1] + ":1 ", "not the genesis record"}},
		{name: "empty file", args: []string{emptyLog}, code: exitFailed, stdout: []string{"broken: no records", "--allow-empty"}},
		{name: "empty file, allowed", args: []string{"--allow-empty", emptyLog}, stdout: []string{"ok: 0 records\n"}},
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

// TestAuditContextDigest: the command prints what keywardd writes for a
// context (the HMAC under the directory's key, marked), reads the key only
// from a private regular file, and refuses bad command lines.
func TestAuditContextDigest(t *testing.T) {
	dir := t.TempDir()
	auditLog(t, dir, 1, 0) // creates dir/context.key
	key, err := audit.ReadContextKey(filepath.Join(dir, audit.ContextKeyName))
	if err != nil {
		t.Fatal(err)
	}
	d := audit.ContextDigest(key, envelope.CanonicalContext(map[string]string{"app": "billing", "env": "prod"}))
	want := audit.ContextHMACPrefix + hex.EncodeToString(d[:]) + "\n"

	open := filepath.Join(t.TempDir(), "open.key")
	b, _ := os.ReadFile(filepath.Join(dir, audit.ContextKeyName))
	os.WriteFile(open, b, 0o644)
	link := filepath.Join(t.TempDir(), "link.key")
	os.Symlink(filepath.Join(dir, audit.ContextKeyName), link)

	tests := []struct {
		name   string
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{name: "dir", args: []string{"--dir", dir, "--context", "env=prod", "--context", "app=billing"}, stdout: want},
		{name: "key file", args: []string{"--key-file", filepath.Join(dir, audit.ContextKeyName), "--context", "app=billing", "--context", "env=prod"}, stdout: want},
		{name: "no context", args: []string{"--dir", dir}, stdout: strings.Repeat("0", 64) + "\n"},
		{name: "key readable by others", args: []string{"--key-file", open, "--context", "a=b"}, code: exitUsage, stderr: "readable by group or others"},
		{name: "key through a symlink", args: []string{"--key-file", link, "--context", "a=b"}, code: exitUsage, stderr: "context key"},
		{name: "no key here", args: []string{"--dir", t.TempDir(), "--context", "a=b"}, code: exitNotFound, stderr: "no such file"},
		{name: "neither dir nor key", args: []string{"--context", "a=b"}, code: exitUsage, stderr: "missing --dir"},
		{name: "both", args: []string{"--dir", dir, "--key-file", open}, code: exitUsage, stderr: "not both"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := keyward(t, nil, append([]string{"audit", "context-digest"}, tc.args...)...)
			if r.code != tc.code || r.stdout != tc.stdout {
				t.Fatalf("exit %d stdout %q stderr %q; want exit %d stdout %q", r.code, r.stdout, r.stderr, tc.code, tc.stdout)
			}
			if tc.stderr != "" {
				checkErrLine(t, r, tc.stderr)
			}
		})
	}
	if plain := sha256.Sum256(envelope.CanonicalContext(map[string]string{"app": "billing", "env": "prod"})); strings.Contains(want, hex.EncodeToString(plain[:])) {
		t.Error("the digest is the plain SHA-256")
	}
}
