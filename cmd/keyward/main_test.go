package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	softhsmtest "github.com/keyward/keyward/softhsm-test"
)

// bin is the keyward binary built for this test run, in binDir.
var bin, binDir string

// The CLI is tested end to end: a real binary, real SoftHSM2 tokens made by
// softhsm-test/provision-token.sh, no mocks.
func TestMain(m *testing.M) {
	if os.Getenv(impostorEnv) != "" {
		os.Exit(serveImpostor())
	}
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "keyward-cli-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	// 0755, not 0700: tests run keyward as another uid, and that uid must
	// reach the binary and the shared daemon's socket, both kept here.
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	binDir = dir
	bin = filepath.Join(dir, "keyward")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build keyward: %v\n%s", err, out)
		return 1
	}
	code := m.Run()
	if err := stopDaemon(); err != nil {
		fmt.Fprintf(os.Stderr, "keywardd: %v\n", err)
		code = max(code, 1)
	}
	return code
}

// needSoftHSM skips the test when SoftHSM2 is not installed, or fails it
// under CI, where the SoftHSM2 tests must run.
func needSoftHSM(t *testing.T) {
	t.Helper()
	_, errUtil := exec.LookPath("softhsm2-util")
	mod, errMod := softhsmModule()
	if errMod == nil {
		_, errMod = os.Stat(mod)
	}
	if errUtil == nil && errMod == nil {
		return
	}
	msg := "softhsm2 is not installed: run `make test`, which installs it (apt-get install softhsm2 opensc)"
	if os.Getenv("CI") != "" {
		t.Fatalf("%s (CI is set: these tests must not be skipped)", msg)
	}
	t.Skip(msg)
}

// provision makes a token labelled keyward in a fresh directory with
// softhsm-test/provision-token.sh and returns the directory.
func provision(t *testing.T) string {
	t.Helper()
	needSoftHSM(t)
	dir := filepath.Join(t.TempDir(), "softhsm")
	cmd := exec.Command("bash", "../../softhsm-test/provision-token.sh", "--dir", dir, "--label", "keyward")
	cmd.Env = testEnv(nil)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("provision-token.sh: %v\n%s", err, stderr.String())
	}
	if !strings.HasPrefix(stdout.String(), "export SOFTHSM2_CONF=") {
		t.Fatalf("provision-token.sh printed %q, want the export line", stdout.String())
	}
	return dir
}

// pin returns the user PIN of a provisioned directory, to check it is never printed.
func pin(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "pin"))
	if err != nil || len(b) < 8 {
		t.Fatalf("read pin: %v (%d bytes)", err, len(b))
	}
	return string(b)
}

// testEnv is the environment of child processes: this one's, without the
// variables that would make results depend on the caller's token set-up,
// plus extra ($KEYWARD_PKCS11_MODULE stays: it names this machine's module).
func testEnv(extra map[string]string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if k == "SOFTHSM2_CONF" || k == "CREDENTIALS_DIRECTORY" {
			continue
		}
		env = append(env, kv)
	}
	for k, v := range extra {
		env = append(env, k+"="+v)
	}
	return env
}

type result struct {
	stdout, stderr string
	code           int
	took           time.Duration
	pid            int // of the keyward process
}

// keyward runs the binary with args and returns its output and exit status.
func keyward(t *testing.T, env map[string]string, args ...string) result {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = testEnv(env)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String(), took: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("run keyward %v: %v", args, err)
	}
	return r
}

// checkErrLine checks that stderr is exactly one "keyward: " line containing want.
func checkErrLine(t *testing.T, r result, want string) {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(r.stderr, "\n"), "\n")
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "keyward: ") || !strings.HasSuffix(r.stderr, "\n") {
		t.Errorf("stderr is not one \"keyward: ...\" line: %q", r.stderr)
	}
	if !strings.Contains(r.stderr, want) {
		t.Errorf("stderr %q does not contain %q", r.stderr, want)
	}
}

func TestUsageErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{name: "no command", args: nil, want: "no command given"},
		{name: "unknown command", args: []string{"frobnicate"}, want: `unknown command "frobnicate"`},
		{name: "help unknown topic", args: []string{"help", "nope"}, want: `no help for "nope"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := keyward(t, tt.env, tt.args...)
			if r.code != exitUsage {
				t.Errorf("exit %d, want %d (stderr %q)", r.code, exitUsage, r.stderr)
			}
			if r.stdout != "" {
				t.Errorf("stdout not empty on a usage error: %q", r.stdout)
			}
			checkErrLine(t, r, tt.want)
		})
	}
}

func TestHelp(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{name: "-h", args: []string{"-h"}, want: []string{"keyward policy explain", "keyward status", "Exit status"}},
		{name: "--help", args: []string{"--help"}, want: []string{"Examples:"}},
		{name: "help", args: []string{"help"}, want: []string{"keyward policy explain", "keyward status"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := keyward(t, nil, tt.args...)
			if r.code != 0 || r.stderr != "" {
				t.Fatalf("exit %d, stderr %q; want 0 and nothing", r.code, r.stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(r.stdout, w) {
					t.Errorf("usage lacks %q:\n%s", w, r.stdout)
				}
			}
		})
	}
}

func TestOneLine(t *testing.T) {
	if got := oneLine("a\nb\r\n  c\td"); got != "a b c d" {
		t.Errorf("oneLine = %q", got)
	}
}

// softhsmModule is SoftHSM2's PKCS#11 module on this machine
// ($KEYWARD_PKCS11_MODULE, else the distributions' paths).
func softhsmModule() (string, error) { return softhsmtest.ModulePath() }
