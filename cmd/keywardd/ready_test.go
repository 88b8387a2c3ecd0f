package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	softhsmtest "github.com/keyward/keyward/softhsm-test"
)

// TestReadyFile: --ready-file appears (0600, whole) only once the socket
// answers, replaces a stale one, and is removed on exit.
func TestReadyFile(t *testing.T) {
	softhsmtest.Need(t, tok)
	dir := t.TempDir()
	sock := filepath.Join(dir, "dev.sock")
	ready := filepath.Join(dir, "ready")
	if err := os.WriteFile(ready, []byte("stale"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--dev", "--socket", sock, "--ready-file", ready)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	deadline := time.Now().Add(30 * time.Second)
	var content []byte
	for {
		b, err := os.ReadFile(ready)
		if err == nil && string(b) != "stale" {
			content = b
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no ready file: %v\n%s", err, stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !answers(sock) {
		t.Error("the ready file exists but the socket does not answer")
	}
	want := fmt.Sprintf("socket=%s\npid=%d\nversion=", sock, cmd.Process.Pid)
	if !strings.HasPrefix(string(content), want) {
		t.Errorf("ready file %q, want it to start %q", content, want)
	}
	if fi, err := os.Lstat(ready); err != nil || fi.Mode() != 0o600 {
		t.Errorf("ready file mode: %v %v, want 0600", fi.Mode(), err)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("keywardd: %v\n%s", err, stderr.String())
	}
	if _, err := os.Lstat(ready); !os.IsNotExist(err) {
		t.Errorf("ready file left behind: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".ready.tmp*")); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

// TestReadyFileRefused: a --ready-file keywardd could not honour is a usage
// error before anything starts.
func TestReadyFileRefused(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no directory", []string{"--dev", "--socket", filepath.Join(dir, "s"), "--ready-file", filepath.Join(dir, "nope", "ready")}, "its directory must exist"},
		{"a directory", []string{"--dev", "--socket", filepath.Join(dir, "s"), "--ready-file", dir}, "is a directory"},
		{"with --check-config", []string{"--check-config", "--ready-file", filepath.Join(dir, "r")}, "not --check-config"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			if code := run(context.Background(), tc.args, &out, &errOut); code != exitUsage || !strings.Contains(errOut.String(), tc.want) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, errOut.String(), exitUsage, tc.want)
			}
		})
	}
}
