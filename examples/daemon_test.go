package examples

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keyward/keyward/hsm"
)

// binDir holds keywardd and keyward, built once for this test binary.
var binDir string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "keyward-examples-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	build := exec.Command("go", "build", "-o", dir+"/", "../cmd/keywardd", "../cmd/keyward")
	build.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
		return 1
	}
	binDir = dir
	return m.Run()
}

// need skips the test when a tool it needs is missing, or fails it under
// CI, where every example must run. install says what provides it.
func need(t *testing.T, err error, install string) {
	t.Helper()
	if err == nil {
		return
	}
	msg := fmt.Sprintf("%v: run `make test`, which installs %s", err, install)
	if os.Getenv("CI") != "" {
		t.Fatalf("%s (CI is set: this test must not be skipped)", msg)
	}
	t.Skip(msg)
}

// devDaemon is a keywardd --dev of one test.
type devDaemon struct {
	socket string
	dir    string // --dev-dir: the token and audit.log
	log    string // stdout and stderr
}

// startDev starts keywardd --dev on a fresh SoftHSM2 token in a temporary
// directory and returns once `keyward status --wait` has it answer healthy
// through its socket.
// The daemon is stopped (SIGTERM, and it must exit cleanly) when the test
// ends.
func startDev(t *testing.T) *devDaemon {
	t.Helper()
	_, err := hsm.SoftHSMModule()
	need(t, err, "softhsm2")
	tmp := t.TempDir()
	d := &devDaemon{socket: filepath.Join(tmp, "k.sock"), dir: filepath.Join(tmp, "dev"), log: filepath.Join(tmp, "keywardd.log")}
	logf, err := os.OpenFile(d.log, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(filepath.Join(binDir, "keywardd"), "--dev", "--dev-dir", d.dir, "--socket", d.socket)
	cmd.Env = cleanEnv(nil)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Should the test binary die first, the kernel stops the daemon.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	done := make(chan error, 1)
	started := make(chan error, 1)
	go func() {
		// Pdeathsig follows the thread that started the child.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		done <- cmd.Wait()
	}()
	if err := <-started; err != nil {
		t.Fatalf("start keywardd: %v", err)
	}
	t.Cleanup(func() { stopDev(t, cmd, done, d.log) })
	if err := waitReady(d.socket, done); err != nil {
		t.Fatalf("%v\nkeywardd's output:\n%s", err, readFile(d.log))
	}
	return d
}

// waitReady runs `keyward status --wait=30s` (the 30 s only ends a hang),
// which exits 0 once the daemon answers healthy. Should keywardd exit
// first, the wait ends at once and says so; its exit is put back on done
// for stopDev.
func waitReady(socket string, done chan error) error {
	st := exec.Command(filepath.Join(binDir, "keyward"), "--socket", socket, "status", "--wait=30s")
	st.Env = cleanEnv(nil)
	var out bytes.Buffer
	st.Stdout, st.Stderr = &out, &out
	if err := st.Start(); err != nil {
		return err
	}
	waited := make(chan error, 1)
	go func() { waited <- st.Wait() }()
	select {
	case err := <-waited:
		if err == nil {
			return nil
		}
		select {
		case derr := <-done:
			done <- derr
			return fmt.Errorf("keywardd exited before it answered: %v", derr)
		default:
		}
		return fmt.Errorf("keywardd did not answer `keyward status --wait=30s`: %v\n%s", err, out.Bytes())
	case derr := <-done:
		done <- derr
		st.Process.Kill()
		<-waited
		return fmt.Errorf("keywardd exited before it answered: %v", derr)
	}
}

func stopDev(t *testing.T, cmd *exec.Cmd, done <-chan error, log string) {
	select {
	case err := <-done:
		t.Errorf("keywardd exited during the test: %v\n%s", err, readFile(log))
		return
	default:
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("keywardd did not exit cleanly on SIGTERM: %v\n%s", err, readFile(log))
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Errorf("keywardd still running 30s after SIGTERM\n%s", readFile(log))
	}
	if t.Failed() {
		t.Logf("keywardd's output:\n%s", readFile(log))
	}
}

// cleanEnv is this process's environment without the variables that would
// point a child at another token or daemon, plus extra.
func cleanEnv(extra map[string]string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "SOFTHSM2_CONF", "CREDENTIALS_DIRECTORY", "KEYWARD_SOCKET", "PYTHONPATH", "NODE_PATH":
			continue
		}
		env = append(env, kv)
	}
	for k, v := range extra {
		env = append(env, k+"="+v)
	}
	return env
}

func readFile(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// run runs a command and returns its stdout, stderr and exit code; a
// command that cannot start fails the test.
func run(t *testing.T, cmd *exec.Cmd) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatalf("run %v: %v", cmd.Args, err)
	}
	return o.String(), e.String(), code
}
