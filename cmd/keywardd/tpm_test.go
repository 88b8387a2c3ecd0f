package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/keyward/keyward/client"
	"github.com/keyward/keyward/hsm"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/tpm"
	"github.com/keyward/keyward/tpm/swtpmtest"
)

// TestDevTPM: --dev --backend tpm (this binary has no simulator, so swtpm)
// serves, says which device, round-trips through the client, stops swtpm
// on SIGTERM, and a restart on the same --dev-dir finds the same TPM: the
// first run's blob still unwraps.
func TestDevTPM(t *testing.T) {
	swtpmtest.Need(t)
	// Short: swtpm's socket goes in it, and a Unix socket path is short.
	base, err := os.MkdirTemp("", "kwtpm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	devDir := filepath.Join(base, "dev")
	sock := filepath.Join(base, "dev.sock")
	// The auth secret dev mode would make (32 random bytes, base64), but one
	// known to work: see testAuth. Dev mode keeps a directory's secret.
	if err := os.Mkdir(devDir, 0o700); err != nil {
		t.Fatal(err)
	}
	writeSecret(t, devDir, "tpm-auth", testAuth)
	ctx := context.Background()
	encCtx := map[string]string{"app": "dev"}

	// start runs keywardd --dev --backend tpm on devDir and returns it with
	// the swtpm pid its banner names.
	start := func(t *testing.T) (*proc, int) {
		p := startDaemon(t, sock, nil, "--dev", "--backend", "tpm", "--dev-dir", devDir, "--socket", sock)
		var lines []string
		for range 3 {
			if !p.stdout.Scan() {
				t.Fatalf("banner cut short after %q", lines)
			}
			lines = append(lines, p.stdout.Text())
		}
		go io.Copy(io.Discard, pipeRest(p))
		if lines[0] != "keywardd: serving on "+sock {
			t.Errorf("banner line 1: %q", lines[0])
		}
		if want := "keywardd: development mode: TPM (swtpm) in " + devDir + " (kept for the next start)"; !strings.HasPrefix(lines[1], want) {
			t.Errorf("banner line 2: %q, want prefix %q", lines[1], want)
		}
		want := "keywardd: backend tpm: device swtpm+unix:" + filepath.Join(devDir, "swtpm.sock") + " (swtpm pid "
		rest, ok := strings.CutPrefix(lines[2], want)
		pid, err := strconv.Atoi(strings.SplitN(rest, ",", 2)[0])
		if !ok || err != nil {
			t.Fatalf("banner line 3: %q, want prefix %q and a pid", lines[2], want)
		}
		return p, pid
	}
	// stop sends SIGTERM and checks that keywardd exits 0 and swtpm is gone.
	stop := func(t *testing.T, p *proc, swtpmPID int) {
		p.cmd.Process.Signal(syscall.SIGTERM)
		if err := p.cmd.Wait(); err != nil {
			t.Fatalf("keywardd exit: %v\n%s", err, p.stderr.String())
		}
		if err := syscall.Kill(swtpmPID, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("swtpm (pid %d) still there after keywardd exited: %v", swtpmPID, err)
		}
		if c, err := net.Dial("unix", filepath.Join(devDir, "swtpm.sock")); err == nil {
			c.Close()
			t.Error("swtpm's socket still accepts after keywardd exited")
		}
	}

	p, swtpmPID := start(t)
	c, err := client.Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateKey(ctx, "dev/k", "aes-256-gcm"); err != nil {
		t.Fatal(err)
	}
	w, err := c.Wrap(ctx, "dev/k", []byte("first run"), encCtx)
	if err != nil {
		t.Fatal(err)
	}
	if u, err := c.Unwrap(ctx, w.Ciphertext, encCtx); err != nil || string(u.Plaintext) != "first run" {
		t.Fatalf("unwrap: %v", err)
	}
	if st, err := c.Status(ctx); err != nil || st.Backend != "tpm" || !st.BackendHealthy {
		t.Fatalf("status %+v, %v", st, err)
	}
	c.Close()
	for _, f := range []struct {
		name string
		mode os.FileMode
	}{{"tpm-auth", 0o600}, {"tpm-state", 0o700 | os.ModeDir}, {"tpm-state/parent.pub", 0o600}, {"swtpm-state", 0o700 | os.ModeDir}} {
		if fi, err := os.Stat(filepath.Join(devDir, f.name)); err != nil || fi.Mode() != f.mode {
			t.Errorf("%s: %v, want mode %v (%v)", f.name, fi.Mode(), f.mode, err)
		}
	}
	stop(t, p, swtpmPID)

	p, swtpmPID = start(t)
	c, err = client.Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	if u, err := c.Unwrap(ctx, w.Ciphertext, encCtx); err != nil || string(u.Plaintext) != "first run" {
		t.Fatalf("after a restart on the same --dev-dir, the first run's blob: %v", err)
	}
	c.Close()
	stop(t, p, swtpmPID)

	// A second keywardd on a dev directory in use is refused before it
	// touches swtpm's socket.
	p, swtpmPID = start(t)
	out, err := exec.Command(bin, "--dev", "--backend", "tpm", "--dev-dir", devDir, "--socket", filepath.Join(base, "two.sock")).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitFail || !strings.Contains(string(out), "in use by another keywardd") {
		t.Errorf("second keywardd on the same dev dir: %v\n%s", err, out)
	}
	if !answers(sock) {
		t.Error("the first keywardd stopped answering")
	}
	stop(t, p, swtpmPID)
}

// TestDevBackendFlag: --backend is for --dev, and only pkcs11 or tpm.
func TestDevBackendFlag(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"backend without dev", []string{"--backend", "tpm"}, "are for --dev"},
		{"unknown backend", []string{"--dev", "--backend", "hsm"}, `--backend "hsm": want pkcs11 or tpm`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := exec.Command(bin, tt.args...).CombinedOutput()
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitUsage || !strings.Contains(string(out), tt.want) {
				t.Fatalf("%v: %v\n%s; want exit %d and %q", tt.args, err, out, exitUsage, tt.want)
			}
		})
	}
}

// TestTPMConfig: keywardd on backend.kind "tpm" (swtpm) serves; what the
// TPM backend refuses at start ends it with the exit code keyward.service
// does not restart on.
func TestTPMConfig(t *testing.T) {
	sw := swtpmtest.Start(t)
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	good := writeSecret(t, dir, "good", testAuth)
	wrong := writeSecret(t, dir, "wrong", "keyward-test-tpm-auth-secret-02")
	short := writeSecret(t, dir, "short", "15-bytes-secret")
	// Initialise the state directory with the right secret, as a first
	// keywardd start would.
	be, err := tpm.Open(context.Background(), tpm.Config{Device: sw.Device(), StateDir: state, PINFile: good})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := be.CreateKey(context.Background(), "tpm/k", keys.AES256GCM); err != nil {
		t.Fatal(err)
	}
	be.Close()
	open := filepath.Join(dir, "open-state")
	if err := os.Mkdir(open, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(open, 0o777)
	// A copy of the state directory with one record edited.
	edited := filepath.Join(dir, "edited-state")
	if out, err := exec.Command("cp", "-a", state, edited).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	rec := filepath.Join(edited, "keys", "tpm%2Fk.json")
	data, err := os.ReadFile(rec)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(rec, bytes.Replace(data, []byte(`"enabled"`), []byte(`"disabled"`), 1), 0o600); err != nil {
		t.Fatal(err)
	}

	conf := func(name, stateDir, authFile, extra string) string {
		p := filepath.Join(dir, name+".toml")
		body := fmt.Sprintf("socket = %q\naudit_log = \"off\"\n[backend]\nkind = \"tpm\"\ndevice = %q\nstate_dir = %q\npin_file = %q\n%s",
			filepath.Join(dir, name+".sock"), sw.Device(), stateDir, authFile, extra)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"check a tpm config", []string{"--check-config", "--config", conf("ok", state, good, "")}, exitOK, "ok (0 rules)"},
		{"pkcs11 key with kind tpm", []string{"--check-config", "--config", conf("module", state, good, "module = \"/x.so\"\n")}, exitConfig,
			`module.toml:8: "backend.module" is not a setting of backend.kind "tpm"`},
		{"wrong auth secret", []string{"--config", conf("wrong", state, wrong, "")}, exitLogin, "wrong auth secret"},
		{"auth secret too short", []string{"--config", conf("short", state, short, "")}, exitConfig, "at least 16 needed"},
		{"state dir others may write", []string{"--config", conf("open", open, good, "")}, exitConfig, "writable by group or others"},
		{"edited keyring record", []string{"--config", conf("edited", edited, good, "")}, exitIntegrity, "fails its MAC"},
		{"parent handle not there", []string{"--config", conf("handle", filepath.Join(dir, "handle-state"), good, "parent_handle = 0x81000001\n")}, exitFail, "cannot open the key backend"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := exec.Command(bin, tt.args...).CombinedOutput()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			}
			if code != tt.code || !strings.Contains(string(out), tt.want) {
				t.Fatalf("exit %d, output %q; want %d and %q", code, out, tt.code, tt.want)
			}
			if strings.Contains(string(out), testAuth) {
				t.Error("the auth secret was printed")
			}
		})
	}

	sock := filepath.Join(dir, "ok.sock")
	p := startDaemon(t, sock, nil, "--config", conf("ok", state, good, ""))
	go io.Copy(io.Discard, pipeRest(p))
	c, err := client.Dial(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, err := c.Status(context.Background())
	if err != nil || st.Backend != "tpm" || !st.BackendHealthy {
		t.Fatalf("status %+v, %v", st, err)
	}
}

// testAuth is the TPM auth secret of these tests.
const testAuth = "keyward-test-tpm-auth-secret-01"

func writeSecret(t *testing.T, dir, name, secret string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestOpenFailure: the exit code for each way a backend refuses to open.
func TestOpenFailure(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want int
	}{
		{"pkcs11 pin refused", fmt.Errorf("token k: %w", hsm.ErrCredential), exitLogin},
		{"tpm auth refused", fmt.Errorf("open: %w", tpm.ErrCredential), exitLogin},
		{"tpm setting refused", fmt.Errorf("tpm auth secret is 3 bytes: %w", tpm.ErrConfig), exitConfig},
		{"tpm simulator missing", tpm.ErrNoSimulator, exitConfig},
		{"tpm state dir locked", fmt.Errorf("state: %w", tpm.ErrLocked), exitFail},
		{"tpm parent mismatch", fmt.Errorf("%w: %w", tpm.ErrParentMismatch, keys.ErrIntegrity), exitIntegrity},
		{"edited keyring record", fmt.Errorf("keys/a.json: fails its MAC: %w", keys.ErrIntegrity), exitIntegrity},
		{"state directory rolled back", fmt.Errorf("manifest.json is at change 3 but the TPM's counter is at 5: %w", tpm.ErrRollback), exitIntegrity},
		{"tpm away", fmt.Errorf("%w: %w", tpm.ErrTransport, keys.ErrUnavailable), exitFail},
		{"other", errors.New("boom"), exitFail},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := openFailure(tt.err); got != tt.want {
				t.Errorf("openFailure(%v) = %d, want %d", tt.err, got, tt.want)
			}
		})
	}
}
