package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	softhsmtest "github.com/keyward/keyward/softhsm-test"
)

// TestCredentialExitStatus: a PIN that cannot be had (no source, a file
// missing, unreadable, open to others) is a configuration error, exit 3,
// which keyward.service does not restart (RestartPreventExitStatus=3 4 5),
// rather than 1, which it restarts every 5 s for ever.
func TestCredentialExitStatus(t *testing.T) {
	softhsmtest.Need(t, tok)
	pin, err := os.ReadFile(tok.PINFile)
	if err != nil {
		t.Fatal(err)
	}
	// 0755 all the way down (t.TempDir's parent is 0700): the unreadable
	// case runs keywardd as nobody, which must still read its config file.
	dir, err := os.MkdirTemp("", "keywardd-exit-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	open := write("pin-open", pin, 0o644)
	private := write("pin-private", pin, 0o600) // root's: nobody may not read it
	cfg := func(name, pinLine string) string {
		return write(name, []byte(fmt.Sprintf("socket = %q\naudit_log = \"off\"\n[backend]\nmodule = %q\ntoken = %q\n%s\n",
			filepath.Join(dir, name+".sock"), tok.Module, tok.Label, pinLine)), 0o644)
	}
	nobody := &syscall.Credential{Uid: 65534, Gid: 65534}
	exe, err := os.ReadFile(bin) // bin's directory is closed to nobody
	if err != nil {
		t.Fatal(err)
	}
	nobodyBin := write("keywardd", exe, 0o755)
	tests := []struct {
		name string
		cfg  string
		cred *syscall.Credential
		want string
	}{
		{"missing", cfg("missing.toml", fmt.Sprintf("pin_file = %q", filepath.Join(dir, "no-such-pin"))), nil, "no such file"},
		{"open to others", cfg("open.toml", fmt.Sprintf("pin_file = %q", open)), nil, "readable by group or others"},
		{"no source", cfg("nosource.toml", ""), nil, "CREDENTIALS_DIRECTORY is not set"},
		{"unreadable", cfg("unreadable.toml", fmt.Sprintf("pin_file = %q", private)), nobody, "permission denied"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.cred != nil && os.Getuid() != 0 {
				t.Skip("needs root, to run keywardd as another uid")
			}
			cmd := exec.Command(bin, "--config", tt.cfg)
			cmd.Env = append(os.Environ(), "CREDENTIALS_DIRECTORY=")
			if tt.cred != nil {
				cmd.Path = nobodyBin
				cmd.SysProcAttr = &syscall.SysProcAttr{Credential: tt.cred}
				cmd.Dir = "/"
			}
			out, err := cmd.CombinedOutput()
			ee, ok := err.(*exec.ExitError)
			if !ok || ee.ExitCode() != exitConfig || !strings.Contains(string(out), tt.want) {
				t.Fatalf("keywardd: %v, output:\n%s\nwant exit %d and %q", err, out, exitConfig, tt.want)
			}
			if strings.Contains(string(out), strings.TrimSpace(string(pin))) {
				t.Fatal("the PIN is in the output")
			}
		})
	}
}

// TestCheckConfigEveryProblem: --check-config prints every problem of a
// file, one per line, each with its line and key, then exits 3.
func TestCheckConfigEveryProblem(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "bad.toml")
	body := `[backend]
uri = "pkcs11:token=k?pin-value=87654321"
[limits]
idle_timeout = 5
max_batch = 0
[[rule]]
uids = [0]
units = ["backup.timer"]
keys = ["**"]
operations = ["sign"]
context = { app = "x" }
`
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "--check-config", "--config", p).CombinedOutput()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != exitConfig {
		t.Fatalf("exit %v, want %d; output:\n%s", err, exitConfig, out)
	}
	want := []string{
		"keywardd: " + p + ":4: limits.idle_timeout: \"5\" is not a duration",
		"keywardd: " + p + ":2: backend.uri: carries pin-value",
		"keywardd: " + p + ":5: limits.max_batch = 0: want 1..1000",
		"keywardd: " + p + ": rule #1: unit \"backup.timer\": callers run in service, scope or socket units",
		"keywardd: " + p + ": rule #1: context pairs, but sign requests carry no context",
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != len(want) {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), len(want), out)
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("line %d: %q\nwant it to start with %q", i+1, lines[i], w)
		}
	}
	if strings.Contains(string(out), "87654321") {
		t.Fatal("the PIN is in the output")
	}
}

// TestCheckConfigWarnings: what is legal but pointless is a warning on
// stderr; the file is still valid (exit 0).
func TestCheckConfigWarnings(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "warn.toml")
	body := "[backend]\ntoken = \"k\"\n[[rule]]\nname = \"r\"\nunits = [\"keyward-x.socket\"]\nkeys = [\"a\", \"a\"]\noperations = [\"wrap\"]\n"
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--check-config", "--config", p)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%v: %s", err, stderr.String())
	}
	if !strings.Contains(stdout.String(), "ok (1 rules)") ||
		!strings.Contains(stderr.String(), "keywardd: warning: "+p+`: rule "r": unit "keyward-x.socket": only the socket unit's own`) ||
		!strings.Contains(stderr.String(), `rule "r": key pattern "a" listed twice`) {
		t.Fatalf("stdout %q\nstderr %q", stdout.String(), stderr.String())
	}
}
