package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/keyward/keyward/api/keyward/v1"
	softhsmtest "github.com/keyward/keyward/softhsm-test"
)

var (
	tok *softhsmtest.Token
	bin string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "keywardd-test-")
	if err != nil {
		panic(err)
	}
	bin = filepath.Join(dir, "keywardd")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build keywardd: %v\n%s", err, out)
		os.Exit(1)
	}
	code := softhsmtest.Main(m, &tok)
	os.RemoveAll(dir)
	os.Exit(code)
}

type proc struct {
	cmd    *exec.Cmd
	stdout *bufio.Scanner
	stderr *strings.Builder
}

// startDaemon runs keywardd with args and waits until its socket answers.
func startDaemon(t *testing.T, sock string, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	return startCmd(t, sock, cmd)
}

// answers reports whether a daemon serves Status on sock; the probe's
// connection is closed.
func answers(sock string) bool {
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return false
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // a busy machine answers late
	defer cancel()
	_, err = pb.NewKeywardClient(conn).Status(ctx, &pb.StatusRequest{})
	return err == nil
}

// startCmd runs cmd (keywardd) and waits until its socket answers.
func startCmd(t *testing.T, sock string, cmd *exec.Cmd) *proc {
	t.Helper()
	out, _ := cmd.StdoutPipe()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, stdout: bufio.NewScanner(out), stderr: &stderr}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if answers(sock) {
			return p
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("keywardd did not come up: %s", stderr.String())
	return nil
}

func dial(t *testing.T, sock string) pb.KeywardClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewKeywardClient(conn)
}

// configFile writes a config for the test token; root may do everything.
func configFile(t *testing.T, dir, sock, extra string) string {
	t.Helper()
	body := fmt.Sprintf(`socket = %q
audit_log = %q
[backend]
module = %q
token = %q
pin_file = %q
%s
[[rule]]
name = "root"
uids = [0]
keys = ["**"]
operations = ["wrap", "unwrap", "rewrap", "datakey", "sign", "verify", "mac", "verify-mac", "public-key",
  "key.create", "key.rotate", "key.disable", "key.enable", "key.destroy", "key.read", "key.set-min-version", "key.adopt"]
`, sock, filepath.Join(dir, "audit.log"), tok.Module, tok.Label, tok.PINFile, extra)
	p := filepath.Join(dir, "keyward.toml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCheckConfig(t *testing.T) {
	softhsmtest.Need(t, tok)
	dir := t.TempDir()
	good := configFile(t, dir, filepath.Join(dir, "k.sock"), "")
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte("[backend]\ntoken = \"k\"\n\n[[rule]]\nname = \"r\"\nuids = [1]\nkeys = [\"**\"]\noperations = [\"*\"]\n"), 0o600)
	nogroup := filepath.Join(dir, "nogroup.toml")
	os.WriteFile(nogroup, []byte("socket_group = \"no-such-group-kw\"\n[backend]\ntoken = \"k\"\n"), 0o600)
	unknown := filepath.Join(dir, "unknown.toml")
	os.WriteFile(unknown, []byte("[backend]\ntoken = \"k\"\npin = \"1234\"\n"), 0o600)
	tests := []struct {
		name     string
		args     []string
		wantCode int
		want     string
	}{
		{"good", []string{"--check-config", "--config", good}, 0, "ok (1 rules)"},
		{"wildcard operation", []string{"--check-config", "--config", bad}, 3, "no wildcards"},
		{"unknown key names its line", []string{"--check-config", "--config", unknown}, 3, "unknown.toml:3: unknown key \"backend.pin\""},
		{"socket group that does not exist", []string{"--check-config", "--config", nogroup}, 3, "no-such-group-kw"},
		{"missing file", []string{"--check-config", "--config", filepath.Join(dir, "nope.toml")}, 3, "no such file"},
		{"usage", []string{"--bogus"}, 2, "flag provided but not defined"},
		{"socket without dev", []string{"--socket", "x", "--config", good}, 2, "are for --dev"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := exec.Command(bin, tt.args...).CombinedOutput()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			}
			if code != tt.wantCode || !strings.Contains(string(out), tt.want) {
				t.Fatalf("exit %d, output %q; want %d and %q", code, out, tt.wantCode, tt.want)
			}
			if strings.Contains(string(out), tok.PIN) {
				t.Fatal("PIN in output")
			}
		})
	}
}

// TestDev: --dev makes its own token, serves, says so, refuses core dumps,
// and removes everything on SIGTERM.
// TestDevRelativeDir: --dev-dir relative to the working directory (as
// `make run` gives it) makes a dev daemon whose paths are absolute.
func TestDevRelativeDir(t *testing.T) {
	softhsmtest.Need(t, tok)
	dir := t.TempDir()
	sock := filepath.Join(dir, "dev.sock")
	cmd := exec.Command(bin, "--dev", "--dev-dir", "rel/dev", "--socket", sock)
	cmd.Dir = dir
	startCmd(t, sock, cmd)
	c := dial(t, sock)
	if _, err := c.CreateKey(context.Background(), &pb.CreateKeyRequest{Key: "dev/rel", KeyType: "aes-256-gcm"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "rel", "dev", "audit.log")); err != nil {
		t.Errorf("the dev directory's audit log: %v", err)
	}
}

func TestDev(t *testing.T) {
	softhsmtest.Need(t, tok)
	dir := t.TempDir()
	sock := filepath.Join(dir, "dev.sock")
	p := startDaemon(t, sock, nil, "--dev", "--socket", sock)
	if !p.stdout.Scan() || p.stdout.Text() != "keywardd: serving on "+sock {
		t.Fatalf("banner line 1: %q", p.stdout.Text())
	}
	p.stdout.Scan()
	line := p.stdout.Text()
	_, rest, _ := strings.Cut(line, "SoftHSM2 token in ")
	tokenDir, _, _ := strings.Cut(rest, " (")
	if _, err := os.Stat(filepath.Join(tokenDir, "pin")); err != nil {
		t.Fatalf("dev token dir %q: %v", tokenDir, err)
	}
	go io.Copy(io.Discard, pipeRest(p))
	c := dial(t, sock)
	ctx := context.Background()
	if _, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: "dev/k", KeyType: "aes-256-gcm"}); err != nil {
		t.Fatal(err)
	}
	w, err := c.Wrap(ctx, &pb.WrapRequest{Key: "dev/k", Plaintext: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	if u, err := c.Unwrap(ctx, &pb.UnwrapRequest{Ciphertext: w.Ciphertext}); err != nil || string(u.Plaintext) != "x" {
		t.Fatalf("unwrap: %v", err)
	}
	limits, _ := os.ReadFile(fmt.Sprintf("/proc/%d/limits", p.cmd.Process.Pid))
	if !strings.Contains(string(limits), "Max core file size        0                    0") {
		t.Errorf("core dumps not refused:\n%s", limits)
	}
	// Graceful: a long batch in flight finishes although SIGTERM arrives.
	items := make([]*pb.WrapRequest, 1000)
	for i := range items {
		items[i] = &pb.WrapRequest{Key: "dev/k", Plaintext: []byte("x")}
	}
	done := make(chan error, 1)
	go func() {
		_, err := c.BatchWrap(ctx, &pb.BatchWrapRequest{Items: items})
		done <- err
	}()
	time.Sleep(5 * time.Millisecond)
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := <-done; err != nil {
		t.Errorf("batch in flight at SIGTERM: %v", err)
	}
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("keywardd exit: %v\n%s", err, p.stderr.String())
	}
	if _, err := os.Stat(tokenDir); !os.IsNotExist(err) {
		t.Errorf("dev token dir left behind: %v", err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
}

func pipeRest(p *proc) io.Reader {
	r, w := io.Pipe()
	go func() {
		for p.stdout.Scan() {
		}
		w.Close()
	}()
	return r
}

// TestFleet: two daemons on one token (the network-HSM case): a key
// created and rotated through one is used at its new version by the other,
// immediately with metadata_max_age < 0 and within the age by default.
func TestFleet(t *testing.T) {
	softhsmtest.Need(t, tok)
	for _, tc := range []struct {
		name, extra string
		within      time.Duration
	}{
		{"always fresh", `metadata_max_age = "-1ns"`, 0},
		{"default age", ``, time.Second + 30*time.Second}, // the age; the margin only ends a hang
	} {
		t.Run(tc.name, func(t *testing.T) {
			dirA, dirB := t.TempDir(), t.TempDir()
			sockA, sockB := filepath.Join(dirA, "a.sock"), filepath.Join(dirB, "b.sock")
			startDaemon(t, sockA, nil, "--config", configFile(t, dirA, sockA, tc.extra))
			startDaemon(t, sockB, nil, "--config", configFile(t, dirB, sockB, tc.extra))
			a, b := dial(t, sockA), dial(t, sockB)
			ctx := context.Background()
			key := "fleet/" + strings.ReplaceAll(tc.name, " ", "-")
			if _, err := a.CreateKey(ctx, &pb.CreateKeyRequest{Key: key, KeyType: "aes-256-gcm"}); err != nil {
				t.Fatal(err)
			}
			w1, err := b.Wrap(ctx, &pb.WrapRequest{Key: key, Plaintext: []byte("one")})
			if err != nil || w1.Version != 1 {
				t.Fatalf("b wraps a's new key: %+v %v", w1, err)
			}
			if _, err := a.RotateKey(ctx, &pb.RotateKeyRequest{Key: key}); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			for {
				w2, err := b.Wrap(ctx, &pb.WrapRequest{Key: key, Plaintext: []byte("two")})
				if err != nil {
					t.Fatal(err)
				}
				if w2.Version == 2 {
					if u, err := a.Unwrap(ctx, &pb.UnwrapRequest{Ciphertext: w2.Ciphertext}); err != nil || string(u.Plaintext) != "two" {
						t.Fatalf("a unwraps b's v2 blob: %v", err)
					}
					break
				}
				if time.Since(start) > tc.within {
					t.Fatalf("b still wraps at v%d %v after a rotated", w2.Version, time.Since(start))
				}
				time.Sleep(20 * time.Millisecond)
			}
			t.Logf("rotation through a used by b after %v", time.Since(start).Round(time.Millisecond))
			if u, err := a.Unwrap(ctx, &pb.UnwrapRequest{Ciphertext: w1.Ciphertext}); err != nil || string(u.Plaintext) != "one" {
				t.Fatalf("a unwraps b's v1 blob: %v", err)
			}
		})
	}
}

// TestAdminMissing: "keywardd doctor" without keywardd-admin beside
// keywardd says so, with exit 1, and runs nothing else.
func TestAdminMissing(t *testing.T) {
	cmd := exec.Command(bin, "doctor", "--token", "x")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitFail || !strings.Contains(stderr.String(), "keywardd-admin is not installed beside keywardd") {
		t.Fatalf("keywardd doctor without keywardd-admin: %v, %q", err, stderr.String())
	}
}
