// Package container_test builds keyward's container image with
// build-image.sh, runs it with podman, and uses the daemon in it from the
// host through the socket in the shared volume.
package container_test

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// podmanRunFlags are what `podman run` needs on every host: no network
// (the daemon needs none), and rlimits the runtime may set even where it
// may not raise the host's (see docs/ci.md).
var podmanRunFlags = []string{"--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"}

type env struct {
	podman string
	bin    string // keywardd and keyward for the host
	image  string
}

func setup(t *testing.T) env {
	t.Helper()
	podman, err := exec.LookPath("podman")
	if err == nil {
		_, err = exec.LookPath("softhsm2-util")
	}
	if err != nil {
		msg := fmt.Sprintf("%v: run `make test`, which installs podman and softhsm2", err)
		if os.Getenv("CI") != "" {
			t.Fatalf("%s (CI is set: this test must not be skipped)", msg)
		}
		t.Skip(msg)
	}
	if os.Geteuid() != 0 {
		// Rootless podman maps uids: the daemon would see another uid.
		msg := "the image test runs rootful podman: run it as root"
		if os.Getenv("CI") != "" {
			t.Fatalf("%s (CI is set: this test must not be skipped)", msg)
		}
		t.Skip(msg)
	}
	e := env{podman: podman, bin: t.TempDir(), image: "localhost/keyward-test-" + randomHex(t) + ":dev"}
	for _, d := range []string{filepath.Dir(e.bin), e.bin} { // another uid runs keyward from there
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	build := exec.Command("go", "build", "-o", e.bin+"/", "../cmd/keywardd", "../cmd/keywardd-admin", "../cmd/keyward")
	build.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	start := time.Now()
	img := exec.Command("./build-image.sh", e.image)
	img.Env = append(os.Environ(), "BIN_DIR="+e.bin, "PODMAN="+podman)
	out, err := img.CombinedOutput()
	if err != nil {
		t.Fatalf("build-image.sh: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command(podman, "rmi", "-f", e.image).Run() })
	if strings.TrimSpace(string(out)) != e.image {
		t.Errorf("build-image.sh printed %q, want the image name", out)
	}
	t.Logf("image built in %v", time.Since(start).Round(time.Millisecond))
	return e
}

func randomHex(t *testing.T) string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

type result struct {
	stdout, stderr string
	code           int
}

func run(t *testing.T, cmd *exec.Cmd) result {
	t.Helper()
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	r := result{stdout: o.String(), stderr: e.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("run %v: %v", cmd.Args, err)
	}
	return r
}

// container runs the image detached with dir as its /run/keyward, extra
// `podman run` flags and, when given, cmd instead of the image's command;
// it is removed when the test ends. A runtime that cannot create
// containers on this kernel skips the test (fails it under CI).
func (e env) container(t *testing.T, dir string, extra []string, cmd ...string) string {
	t.Helper()
	name := "keyward-test-" + randomHex(t)
	args := append([]string{"run", "-d", "--name", name}, podmanRunFlags...)
	args = append(append(args, extra...), "-v", dir+":/run/keyward", e.image)
	args = append(args, cmd...)
	r := run(t, exec.Command(e.podman, args...))
	t.Cleanup(func() { exec.Command(e.podman, "rm", "-f", "-t", "0", name).Run() })
	if r.code != 0 {
		if strings.Contains(r.stderr, "OCI runtime") || strings.Contains(r.stderr, "create failed") {
			msg := "podman cannot run a container on this host: " + r.stderr
			if os.Getenv("CI") != "" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
		t.Fatalf("podman run: exit %d\n%s", r.code, r.stderr)
	}
	return name
}

// keyward runs the host's keyward against the socket, as cred when set.
func (e env) keyward(t *testing.T, socket string, cred *syscall.Credential, stdin string, args ...string) result {
	t.Helper()
	cmd := exec.Command(filepath.Join(e.bin, "keyward"), append([]string{"--socket", socket}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	if cred != nil {
		// The daemon runs as cred's uid too, which keyward trusts as its
		// own; naming it as docs/ci.md does checks that recipe as well.
		cmd.Env = append(cmd.Env, fmt.Sprintf("KEYWARD_DAEMON_UID=%d", cred.Uid))
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	return run(t, cmd)
}

// waitReady runs the host's `keyward status --wait=30s` (the 30 s only ends
// a hang) until the daemon in the container answers healthy, and returns
// how long that took. On failure it says whether the container still runs,
// and shows its logs.
func (e env) waitReady(t *testing.T, name, socket string, cred *syscall.Credential) time.Duration {
	t.Helper()
	start := time.Now()
	r := e.keyward(t, socket, cred, "", "status", "--wait=30s")
	if r.code == 0 {
		return time.Since(start)
	}
	state := run(t, exec.Command(e.podman, "inspect", "-f", "{{.State.Running}} {{.State.ExitCode}}", name))
	logs := run(t, exec.Command(e.podman, "logs", name))
	running, code, _ := strings.Cut(strings.TrimSpace(state.stdout), " ")
	what := "did not answer healthy within 30s"
	if running != "true" {
		what = "exited before it answered (exit status " + code + ")"
	}
	t.Fatalf("keywardd in the container %s: keyward status --wait: exit %d: %s\nlogs:\n%s%s", what, r.code, r.stderr, logs.stdout, logs.stderr)
	return 0
}

// roundTrip creates a key, wraps and unwraps through the socket, and checks
// that another context is refused with keyward's reason.
func (e env) roundTrip(t *testing.T, socket string, cred *syscall.Credential) {
	t.Helper()
	if r := e.keyward(t, socket, cred, "", "key", "create", "ci/app", "--type", "aes-256-gcm"); r.code != 0 {
		t.Fatalf("key create: exit %d: %s", r.code, r.stderr)
	}
	w := e.keyward(t, socket, cred, "s3cr3t", "wrap", "--key", "ci/app", "--context", "app=ci")
	if w.code != 0 {
		t.Fatalf("wrap: exit %d: %s", w.code, w.stderr)
	}
	if u := e.keyward(t, socket, cred, w.stdout, "unwrap", "--context", "app=ci"); u.code != 0 || u.stdout != "s3cr3t" {
		t.Errorf("unwrap: exit %d, %q: %s", u.code, u.stdout, u.stderr)
	}
	if u := e.keyward(t, socket, cred, w.stdout, "unwrap", "--context", "app=other"); u.code != 1 || !strings.Contains(u.stderr, "reason DECRYPTION_FAILED") {
		t.Errorf("unwrap with another context: exit %d: %s", u.code, u.stderr)
	}
}

// stop stops the container and checks keywardd exited cleanly on SIGTERM.
func (e env) stop(t *testing.T, name string) {
	t.Helper()
	if r := run(t, exec.Command(e.podman, "stop", "-t", "20", name)); r.code != 0 {
		t.Fatalf("podman stop: %s", r.stderr)
	}
	if r := run(t, exec.Command(e.podman, "inspect", "-f", "{{.State.ExitCode}}", name)); strings.TrimSpace(r.stdout) != "0" {
		logs := run(t, exec.Command(e.podman, "logs", name))
		t.Errorf("keywardd's exit status in the container: %q\nlogs:\n%s%s", r.stdout, logs.stdout, logs.stderr)
	}
}

// TestImage: the image's default command is keywardd --dev with its socket
// in the /run/keyward volume; a client on the host wraps and unwraps
// through it: as root, with the daemon as root (the default), and as an
// unprivileged user, with the daemon run as that user (--user), which is how
// a CI job that is not root uses it; and as an unprivileged user allowed by
// a daemon that stays root (--dev-allow-uid, the socket in that user's
// group by --user 0:GID), where a uid allowed nothing is refused.
func TestImage(t *testing.T) {
	e := setup(t)
	cfg := run(t, exec.Command(e.podman, "image", "inspect", "-f", "{{.Config.Cmd}} {{.Config.Volumes}} {{.Config.Env}}", e.image))
	for _, want := range []string{"/usr/bin/keywardd --dev --socket /run/keyward/keyward.sock", "/run/keyward", "KEYWARD_SOCKET=/run/keyward/keyward.sock"} {
		if !strings.Contains(cfg.stdout, want) {
			t.Errorf("image config %q lacks %q", cfg.stdout, want)
		}
	}

	t.Run("root", func(t *testing.T) {
		dir := t.TempDir()
		name := e.container(t, dir, nil)
		socket := filepath.Join(dir, "keyward.sock")
		t.Logf("keywardd in the container answered %v after podman run returned", e.waitReady(t, name, socket, nil).Round(time.Millisecond))
		e.roundTrip(t, socket, nil)
		st := e.keyward(t, socket, nil, "", "status")
		if !strings.Contains(st.stdout, "you are uid=0 ") || !strings.Contains(st.stdout, "backend pkcs11: healthy") {
			t.Errorf("status from the host:\n%s", st.stdout)
		}
		// The image's own keyward, inside, sees the same daemon and key.
		if r := run(t, exec.Command(e.podman, "exec", name, "keyward", "key", "show", "ci/app")); r.code != 0 || !strings.Contains(r.stdout, "aes-256-gcm") {
			t.Errorf("keyward key show inside the container: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		e.stop(t, name)
	})

	t.Run("user", func(t *testing.T) {
		const uid = 65534 // nobody: a uid the container and the host share (no user namespace)
		base := t.TempDir()
		for _, d := range []string{filepath.Dir(base), base} { // nobody must reach the socket
			if err := os.Chmod(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		dir := filepath.Join(base, "run")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(dir, uid, uid); err != nil {
			t.Fatal(err)
		}
		name := e.container(t, dir, []string{"--user", fmt.Sprintf("%d:%d", uid, uid)})
		socket := filepath.Join(dir, "keyward.sock")
		cred := &syscall.Credential{Uid: uid, Gid: uid}
		e.waitReady(t, name, socket, cred)
		e.roundTrip(t, socket, cred)
		// root on the host is not the dev daemon's user: refused.
		if r := e.keyward(t, socket, nil, "x", "wrap", "--key", "ci/app", "--daemon-uid", fmt.Sprint(uid)); r.code != 3 || !strings.Contains(r.stderr, "PERMISSION_DENIED") {
			t.Logf("x")
			t.Errorf("wrap as root through a daemon run as uid %d: exit %d: %s", uid, r.code, r.stderr)
		}
		e.stop(t, name)
	})

	t.Run("allow-uid", func(t *testing.T) {
		const uid = 65534 // nobody
		base := t.TempDir()
		dir := filepath.Join(base, "run") // root's, as keywardd run as root wants it
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, d := range []string{filepath.Dir(base), base, dir} { // nobody must reach the socket
			if err := os.Chmod(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		name := e.container(t, dir, []string{"--user", fmt.Sprintf("0:%d", uid)},
			"keywardd", "--dev", "--socket", "/run/keyward/keyward.sock", "--dev-allow-uid", fmt.Sprint(uid))
		socket := filepath.Join(dir, "keyward.sock")
		cred := &syscall.Credential{Uid: uid, Gid: uid}
		e.waitReady(t, name, socket, cred)
		e.roundTrip(t, socket, cred)
		st := e.keyward(t, socket, cred, "", "status")
		if !strings.Contains(st.stdout, fmt.Sprintf("you are uid=%d ", uid)) {
			t.Errorf("status as uid %d:\n%s%s", uid, st.stdout, st.stderr)
		}
		// The socket is the daemon's group's (--user 0:GID), so another uid
		// in that group may open it, and is allowed nothing.
		if fi, err := os.Stat(socket); err != nil {
			t.Error(err)
		} else if fi.Mode().Perm() != 0o660 || fi.Sys().(*syscall.Stat_t).Gid != uid {
			t.Errorf("socket: %v in group %d, want 0660 in group %d", fi.Mode(), fi.Sys().(*syscall.Stat_t).Gid, uid)
		}
		other := &syscall.Credential{Uid: 65533, Gid: uid}
		if r := e.keyward(t, socket, other, "x", "wrap", "--key", "ci/app", "--daemon-uid", "0"); r.code != 3 || !strings.Contains(r.stderr, "not allowed (PERMISSION_DENIED") {
			t.Errorf("wrap as uid 65533: exit %d: %s", r.code, r.stderr)
		}
		e.stop(t, name)
	})
}
