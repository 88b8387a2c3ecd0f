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
		{"a directory others may write", []string{"--dev", "--socket", filepath.Join(dir, "s"), "--ready-file", filepath.Join(openDir(t, dir), "ready")}, "others"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			if code := run(context.Background(), tc.args, &out, &errOut); code != exitUsage || !strings.Contains(errOut.String(), tc.want) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, errOut.String(), exitUsage, tc.want)
			}
		})
	}
}

// openDir makes a directory in dir that anyone may write (no sticky bit).
func openDir(t *testing.T, dir string) string {
	d := filepath.Join(dir, "open")
	if err := os.Mkdir(d, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(d, 0o777); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestReadyFileNoFollow: a symlink at the ready file's name is removed and
// replaced, never followed (the file it points to is untouched), and once
// the directory is checked and opened, replacing it with a symlink to
// another directory does not move keywardd's writes or unlinks there.
func TestReadyFileNoFollow(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	readyDir := filepath.Join(dir, "r")
	if err := os.Mkdir(readyDir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(readyDir, "ready")
	if err := os.Symlink(victim, path); err != nil {
		t.Fatal(err)
	}
	rf, err := newReadyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("the stale symlink is still there: %v", err)
	}
	// The directory is swapped for a symlink to another one.
	other := filepath.Join(dir, "other")
	if err := os.Mkdir(other, 0o700); err != nil {
		t.Fatal(err)
	}
	moved := filepath.Join(dir, "moved")
	if err := os.Rename(readyDir, moved); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(other, readyDir); err != nil {
		t.Fatal(err)
	}
	if err := rf.write("/run/x.sock"); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(moved, "ready")); err != nil || !strings.HasPrefix(string(b), "socket=/run/x.sock\n") {
		t.Errorf("the ready file is not in the directory that was checked: %q, %v", b, err)
	}
	if left, _ := os.ReadDir(other); len(left) != 0 {
		t.Errorf("keywardd wrote through the swapped-in symlink: %v", left)
	}
	rf.remove()
	if _, err := os.Lstat(filepath.Join(moved, "ready")); !os.IsNotExist(err) {
		t.Errorf("the ready file was not removed: %v", err)
	}
	if b, err := os.ReadFile(victim); err != nil || string(b) != "precious" {
		t.Errorf("the symlink's target changed: %q, %v", b, err)
	}
}
