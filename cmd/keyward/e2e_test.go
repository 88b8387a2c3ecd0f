package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/keyward/keyward/envelope"
)

// TestE2E runs the CLI end to end against the real daemon: keywardd --dev
// (a private SoftHSM2 token, the invoking uid allowed everything).
func TestE2E(t *testing.T) {
	daemonFlow(t, startDaemon(t))
}

// shared is the one keywardd --dev of this test binary: the first test that
// needs a daemon builds and starts it (startDaemon), TestMain stops it
// (stopDaemon). Tests share its keyring, so each names its keys under a
// prefix of its own (fresh): they neither collide nor depend on their order,
// and -count=N runs them again on the same daemon.
var shared struct {
	once   sync.Once
	err    error // why the daemon did not start
	socket string
	cmd    *exec.Cmd
	done   chan struct{} // closed once the daemon has exited
	exit   error         // the daemon's exit, once done is closed
	log    string        // the file of the daemon's stderr
}

// startDaemon returns the socket of the shared daemon, started on first use.
// It skips the test when SoftHSM2 is missing (fails it under CI), and fails
// it when the daemon died or dies during the test.
func startDaemon(t *testing.T) string {
	t.Helper()
	needSoftHSM(t)
	shared.once.Do(func() { shared.err = launchDaemon() })
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	select {
	case <-shared.done:
		t.Fatalf("keywardd exited before this test: %v\nstderr:\n%s", shared.exit, daemonLog(0))
	default:
	}
	mark := daemonLogSize()
	t.Cleanup(func() {
		select {
		case <-shared.done:
			t.Errorf("keywardd exited during this test: %v", shared.exit)
		default:
		}
		if t.Failed() {
			t.Logf("keywardd's log during this test:\n%s", daemonLog(mark))
		}
	})
	return shared.socket
}

// launchDaemon builds cmd/keywardd (and keywardd-admin beside it, which
// keywardd bench-baseline runs) into binDir and starts it in dev mode on
// binDir/k.sock (short: a socket path has at most 108 bytes).
func launchDaemon() error {
	daemon := filepath.Join(binDir, "keywardd")
	build := exec.Command("go", "build", "-o", binDir+"/", "../../cmd/keywardd", "../../cmd/keywardd-admin")
	build.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/keywardd ./cmd/keywardd-admin: %v\n%s", err, out)
	}
	socket := filepath.Join(binDir, "k.sock")
	cmd := exec.Command(daemon, "--dev", "--socket", socket)
	cmd.Dir = binDir
	cmd.Env = testEnv(nil)
	// Should this process die without stopping the daemon (a panic, the
	// -timeout), the kernel sends the daemon SIGTERM; its log is a file, not
	// a pipe, so that its shutdown can log (and finish: a write to a closed
	// pipe would kill it, leaving its token behind).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	shared.log = filepath.Join(binDir, "keywardd.log")
	log, err := os.OpenFile(shared.log, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer log.Close()
	cmd.Stderr = log
	stdout, w, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd.Stdout = w
	shared.done = make(chan struct{})
	started := make(chan error, 1)
	go func() {
		// Pdeathsig follows the thread that started the child, not the
		// process: keep this goroutine on its thread until the daemon is gone.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		shared.exit = cmd.Wait()
		close(shared.done)
	}()
	err = <-started
	w.Close()
	if err != nil {
		stdout.Close()
		return fmt.Errorf("start keywardd: %v", err)
	}
	shared.cmd = cmd
	banner := make(chan string, 1)
	go func() {
		defer stdout.Close()
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			banner <- sc.Text()
		}
		close(banner)
		for sc.Scan() { // keep reading: a full pipe would block the daemon, a closed one kill it
		}
	}()
	want := "keywardd: serving on " + socket
	select {
	case line := <-banner:
		if line != want {
			err = fmt.Errorf("keywardd's first stdout line is %q, want %q", line, want)
		}
	case <-shared.done:
		err = fmt.Errorf("keywardd exited before its banner: %v", shared.exit)
	case <-time.After(60 * time.Second):
		err = errors.New("no banner from keywardd within 60s")
	}
	if err != nil {
		stopDaemon()
		shared.cmd = nil
		return fmt.Errorf("%v\nstderr:\n%s", err, daemonLog(0))
	}
	shared.socket = socket
	return nil
}

// stopDaemon stops the shared daemon if a test started it: it must still be
// running, and exit cleanly on SIGTERM.
func stopDaemon() error {
	if shared.cmd == nil {
		return nil
	}
	select {
	case <-shared.done:
		return fmt.Errorf("exited before the end of the tests: %v\nstderr:\n%s", shared.exit, daemonLog(0))
	default:
	}
	shared.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-shared.done:
		if shared.exit != nil {
			return fmt.Errorf("did not exit cleanly on SIGTERM: %v\nstderr:\n%s", shared.exit, daemonLog(0))
		}
	case <-time.After(15 * time.Second):
		shared.cmd.Process.Kill()
		<-shared.done
		return fmt.Errorf("still running 15s after SIGTERM\nstderr:\n%s", daemonLog(0))
	}
	if _, err := os.Stat(shared.socket); err == nil && testing.Verbose() {
		fmt.Fprintf(os.Stderr, "note: keywardd left its socket %s behind\n", shared.socket)
	}
	return nil
}

// daemonLogSize returns the size of the daemon's log.
func daemonLogSize() int64 {
	fi, err := os.Stat(shared.log)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// daemonLog returns the daemon's log from byte offset on.
func daemonLog(offset int64) string {
	b, err := os.ReadFile(shared.log)
	if err != nil {
		return err.Error()
	}
	return string(b[min(offset, int64(len(b))):])
}

var keySeq atomic.Int64

// fresh returns a key name prefix that no other test of this binary uses:
// "base1", "base2"...
func fresh(base string) string {
	return fmt.Sprintf("%s%d", base, keySeq.Add(1))
}

// outsiderUID is a uid the dev daemon's policy does not name.
const outsiderUID = 12345

// outsider returns credentials of outsiderUID with the daemon's gid as the
// primary group (inSocketGroup: it may open the 0660 socket, and the
// daemon's policy refuses it) or a gid of its own (the kernel refuses it the
// socket), and no supplementary groups. Running as another uid needs root.
func outsider(t *testing.T, inSocketGroup bool) *syscall.Credential {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root, to run keyward as another uid")
	}
	gid := uint32(outsiderUID)
	if inSocketGroup {
		gid = uint32(os.Getgid())
	}
	return &syscall.Credential{Uid: outsiderUID, Gid: gid}
}

// kw runs keyward against socket with stdin and returns what it did.
func kw(t *testing.T, socket string, stdin []byte, args ...string) result {
	t.Helper()
	return kwAs(t, nil, socket, stdin, args...)
}

// kwAs is kw with the credentials cred (nil: this process's).
func kwAs(t *testing.T, cred *syscall.Credential, socket string, stdin []byte, args ...string) result {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"--socket", socket}, args...)...)
	cmd.Env = testEnv(nil)
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		cmd.Dir = "/" // the test's directory may be closed to cred
	}
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String(), took: time.Since(start)}
	if cmd.Process != nil {
		r.pid = cmd.Process.Pid
	}
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

// ok runs keyward and fails the test unless it exits 0 with nothing on stderr.
func ok(t *testing.T, socket string, stdin []byte, args ...string) string {
	t.Helper()
	r := kw(t, socket, stdin, args...)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("keyward %s: exit %d, stderr %q", strings.Join(args, " "), r.code, r.stderr)
	}
	return r.stdout
}

// fails runs keyward and checks its exit status and one-line error.
func fails(t *testing.T, socket string, stdin []byte, code int, want []string, args ...string) result {
	t.Helper()
	r := kw(t, socket, stdin, args...)
	if r.code != code {
		t.Errorf("keyward %s: exit %d, want %d (stderr %q)", strings.Join(args, " "), r.code, code, r.stderr)
	}
	for _, w := range want {
		checkErrLine(t, r, w)
	}
	return r
}

func blobVersion(t *testing.T, text string) uint32 {
	t.Helper()
	raw, err := envelope.DecodeText(text)
	if err != nil {
		t.Fatalf("not a text blob %q: %v", text, err)
	}
	h, _, err := envelope.Decode(raw)
	if err != nil {
		t.Fatalf("blob does not decode: %v", err)
	}
	return h.Version
}

// daemonFlow is the end-to-end walk through every command, against a
// daemon that allows the caller everything, on keys of its own.
func daemonFlow(t *testing.T, socket string) {
	p := fresh("e2e")
	var (
		aesKey = p + "/aes"
		macKey = p + "/hmac"
		ecKey  = p + "/ecdsa"
		edKey  = p + "/ed25519"
	)
	secret := []byte("correct horse battery staple \x00\xff binary-safe")
	ctxFlags := []string{"--context", "app=e2e", "--context", "tenant=acme"}

	for name, typ := range map[string]string{aesKey: "aes-256-gcm", macKey: "hmac-sha256", ecKey: "ecdsa-p256", edKey: "ed25519"} {
		out := ok(t, socket, nil, "key", "create", name, "--type", typ)
		if want := fmt.Sprintf("created %s (%s): v1 enabled\n", name, typ); out != want {
			t.Errorf("key create: %q, want %q", out, want)
		}
	}
	fails(t, socket, nil, exitFailed, []string{"KEY_EXISTS"}, "key", "create", aesKey, "--type", "aes-256-gcm")

	var blob1 string
	t.Run("wrap and unwrap", func(t *testing.T) {
		blob1 = ok(t, socket, secret, append([]string{"wrap", "--key", aesKey}, ctxFlags...)...)
		if strings.Count(blob1, "\n") != 1 || !strings.HasSuffix(blob1, "\n") || blobVersion(t, blob1) != 1 {
			t.Fatalf("wrap printed %q, want one base64 line of a v1 blob", blob1)
		}
		if got := ok(t, socket, []byte(blob1), append([]string{"unwrap"}, ctxFlags...)...); got != string(secret) {
			t.Errorf("unwrap gave %q, want %q", got, secret)
		}
		r := fails(t, socket, []byte(blob1), exitFailed, []string{"decryption failed", "DECRYPTION_FAILED"},
			"unwrap", "--context", "app=e2e", "--context", "tenant=other")
		if strings.Contains(r.stderr, "acme") || strings.Contains(r.stderr+r.stdout, "horse") {
			t.Errorf("a failed unwrap printed context values or the plaintext: %q", r.stderr)
		}
		fails(t, socket, []byte(blob1), exitFailed, []string{"DECRYPTION_FAILED"}, "unwrap") // no context at all

		raw := ok(t, socket, secret, append([]string{"wrap", "--key", aesKey, "--binary"}, ctxFlags...)...)
		if got := ok(t, socket, []byte(raw), append([]string{"unwrap", "--binary"}, ctxFlags...)...); got != string(secret) {
			t.Errorf("binary round trip gave %q", got)
		}
	})

	var blob2 string
	t.Run("rotate and rewrap", func(t *testing.T) {
		out := ok(t, socket, nil, "key", "rotate", aesKey)
		if want := "rotated " + aesKey + " (aes-256-gcm): v1 enabled, v2 enabled\n"; out != want {
			t.Errorf("key rotate: %q, want %q", out, want)
		}
		blob2 = ok(t, socket, []byte(blob1), append([]string{"rewrap"}, ctxFlags...)...)
		if v := blobVersion(t, blob2); v != 2 {
			t.Errorf("rewrap made a v%d blob, want v2", v)
		}
		if got := ok(t, socket, []byte(blob2), append([]string{"unwrap"}, ctxFlags...)...); got != string(secret) {
			t.Errorf("unwrap of the rewrapped blob gave %q", got)
		}
		if got := ok(t, socket, []byte(blob1), append([]string{"unwrap"}, ctxFlags...)...); got != string(secret) {
			t.Errorf("the v1 blob no longer unwraps after rotation: %q", got)
		}
		if v := blobVersion(t, ok(t, socket, secret, "wrap", "--key", aesKey)); v != 2 {
			t.Errorf("wrap after rotation used v%d, want v2", v)
		}
	})

	t.Run("datakey", func(t *testing.T) {
		var dk dataKeyJSON
		out := ok(t, socket, nil, append([]string{"datakey", "--key", aesKey}, ctxFlags...)...)
		if err := json.Unmarshal([]byte(out), &dk); err != nil {
			t.Fatalf("datakey JSON: %v\n%s", err, out)
		}
		plain, err := base64.StdEncoding.DecodeString(dk.Plaintext)
		if err != nil || len(plain) != 32 || dk.Key != aesKey || dk.Version != 2 {
			t.Fatalf("datakey %+v: want a 32-byte plaintext, key %s v2 (%v)", dk, aesKey, err)
		}
		if got := ok(t, socket, []byte(dk.Ciphertext), append([]string{"unwrap"}, ctxFlags...)...); got != string(plain) {
			t.Error("the data key's ciphertext does not unwrap to its plaintext")
		}

		out = ok(t, socket, nil, append([]string{"datakey", "--key", aesKey, "--no-plaintext", "--length", "48"}, ctxFlags...)...)
		var m map[string]any
		if err := json.Unmarshal([]byte(out), &m); err != nil {
			t.Fatalf("datakey --no-plaintext JSON: %v\n%s", err, out)
		}
		if _, has := m["plaintext"]; has {
			t.Errorf("datakey --no-plaintext printed a plaintext: %s", out)
		}
		ct, _ := m["ciphertext"].(string)
		if got := ok(t, socket, []byte(ct), append([]string{"unwrap"}, ctxFlags...)...); len(got) != 48 {
			t.Errorf("the --no-plaintext ciphertext unwraps to %d bytes, want 48", len(got))
		}
	})

	msg := []byte("release 1.2.3\n")
	tampered := []byte("release 1.2.4\n")
	sigs := map[string]string{}
	t.Run("sign and verify", func(t *testing.T) {
		for _, key := range []string{ecKey, edKey} {
			sig := strings.TrimSpace(ok(t, socket, msg, "sign", "--key", key))
			sigs[key] = sig
			if _, err := base64.StdEncoding.DecodeString(sig); err != nil {
				t.Fatalf("sign %s printed %q: not base64", key, sig)
			}
			if out := ok(t, socket, msg, "verify", "--key", key, "--signature", sig); out != "valid\n" {
				t.Errorf("verify %s: %q, want valid", key, out)
			}
			if out := ok(t, socket, msg, "verify", "--key", key, "--signature", sig, "--version", "1"); out != "valid\n" {
				t.Errorf("verify %s --version 1: %q, want valid", key, out)
			}
			r := kw(t, socket, tampered, "verify", "--key", key, "--signature", sig)
			if r.code != exitFailed || r.stdout != "invalid\n" || r.stderr != "" {
				t.Errorf("verify %s of a tampered message: exit %d, stdout %q, stderr %q; want 1, invalid, nothing", key, r.code, r.stdout, r.stderr)
			}
			var sj signJSON
			if err := json.Unmarshal([]byte(ok(t, socket, msg, "sign", "--key", key, "--json")), &sj); err != nil || sj.Version != 1 || sj.Key != key {
				t.Errorf("sign --json: %+v, %v", sj, err)
			}
		}
		fails(t, socket, msg, exitFailed, []string{"WRONG_KEY_TYPE"}, "sign", "--key", aesKey)
	})

	t.Run("openssl verifies", func(t *testing.T) {
		if _, err := exec.LookPath("openssl"); err != nil {
			t.Skip("openssl not installed")
		}
		dir := t.TempDir()
		write := func(name string, b []byte) string {
			p := filepath.Join(dir, name)
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
			return p
		}
		digest := sha256.Sum256(msg)
		for _, tc := range []struct {
			key   string
			input []byte
			flags []string
		}{
			{key: ecKey, input: digest[:]},                      // ECDSA signs the SHA-256 digest
			{key: edKey, input: msg, flags: []string{"-rawin"}}, // Ed25519 signs the message
		} {
			if sigs[tc.key] == "" {
				t.Fatalf("no signature from %s", tc.key)
			}
			pub := ok(t, socket, nil, "pubkey", tc.key)
			if !strings.HasPrefix(pub, "-----BEGIN PUBLIC KEY-----\n") {
				t.Fatalf("pubkey %s: %q", tc.key, pub)
			}
			sig, _ := base64.StdEncoding.DecodeString(sigs[tc.key])
			base := strings.ReplaceAll(tc.key, "/", "_")
			args := append([]string{"pkeyutl", "-verify", "-pubin", "-inkey", write(base+".pem", []byte(pub)),
				"-in", write(base+".in", tc.input), "-sigfile", write(base+".sig", sig)}, tc.flags...)
			out, err := exec.Command("openssl", args...).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "Signature Verified Successfully") {
				t.Errorf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		}
	})

	t.Run("mac and verify-mac", func(t *testing.T) {
		token := strings.TrimSpace(ok(t, socket, msg, "mac", "--key", macKey))
		version, mac, err := parseMac(token)
		if !strings.HasPrefix(token, "kw-mac:v1:") || err != nil || version != 1 || len(mac) != 32 {
			t.Fatalf("mac printed %q, want kw-mac:v1:<32 bytes base64> (%v)", token, err)
		}
		bare := base64.StdEncoding.EncodeToString(mac)
		for _, args := range [][]string{
			{"--mac", token},
			{"--mac", bare},
			{"--mac", bare, "--version", "1"},
			{"--mac", token, "--version", "1"},
		} {
			if out := ok(t, socket, msg, append([]string{"verify-mac", "--key", macKey}, args...)...); out != "valid\n" {
				t.Errorf("verify-mac %v: %q, want valid", args, out)
			}
		}
		r := kw(t, socket, tampered, "verify-mac", "--key", macKey, "--mac", token)
		if r.code != exitFailed || r.stdout != "invalid\n" {
			t.Errorf("verify-mac of a tampered message: exit %d, stdout %q", r.code, r.stdout)
		}
		// After a rotation the stored token still verifies, with its version.
		ok(t, socket, nil, "key", "rotate", macKey)
		if out := ok(t, socket, msg, "verify-mac", "--key", macKey, "--mac", token); out != "valid\n" {
			t.Errorf("verify-mac of a v1 token after rotation: %q", out)
		}
		if tok2 := strings.TrimSpace(ok(t, socket, msg, "mac", "--key", macKey)); !strings.HasPrefix(tok2, "kw-mac:v2:") {
			t.Errorf("mac after rotation: %q, want a v2 token", tok2)
		}
		var vj verifyJSON
		if err := json.Unmarshal([]byte(ok(t, socket, msg, "verify-mac", "--key", macKey, "--mac", bare, "--json")), &vj); err != nil || !vj.Valid || vj.Version != 1 {
			t.Errorf("verify-mac --json: %+v, %v; want valid with v1", vj, err)
		}
	})

	t.Run("disable, enable, destroy", func(t *testing.T) {
		ok(t, socket, nil, "key", "disable", aesKey, "--version", "1")
		fails(t, socket, []byte(blob1), exitFailed, []string{"FAILED_PRECONDITION", "VERSION_DISABLED", "unwrap " + aesKey + " v1:"}, append([]string{"unwrap"}, ctxFlags...)...)
		ok(t, socket, nil, "key", "enable", aesKey, "--version", "1")
		if got := ok(t, socket, []byte(blob1), append([]string{"unwrap"}, ctxFlags...)...); got != string(secret) {
			t.Errorf("unwrap after enable: %q", got)
		}

		r := fails(t, socket, nil, exitUsage, []string{"--yes"}, "key", "destroy", aesKey, "--version", "1")
		if r.stdout != "" {
			t.Errorf("destroy without --yes printed %q", r.stdout)
		}
		if got := ok(t, socket, []byte(blob1), append([]string{"unwrap"}, ctxFlags...)...); got != string(secret) {
			t.Error("destroy without --yes destroyed something")
		}
		ok(t, socket, nil, "key", "disable", aesKey, "--version", "1")
		out := ok(t, socket, nil, "key", "destroy", aesKey, "--version", "1", "--yes")
		if want := "destroyed " + aesKey + " (aes-256-gcm): v1 destroyed, v2 enabled\n"; out != want {
			t.Errorf("key destroy: %q, want %q", out, want)
		}
		fails(t, socket, []byte(blob1), exitFailed, []string{"VERSION_DESTROYED"}, append([]string{"unwrap"}, ctxFlags...)...)
		if got := ok(t, socket, []byte(blob2), append([]string{"unwrap"}, ctxFlags...)...); got != string(secret) {
			t.Errorf("the v2 blob no longer unwraps: %q", got)
		}

		ok(t, socket, nil, "key", "set", ecKey, "--min-decrypt-version", "1")
		if out := ok(t, socket, nil, "key", "set", ecKey, "--rotation-period", "90d"); !strings.Contains(out, "(rotates every 90d, next ") {
			t.Errorf("key set --rotation-period 90d: %q", out)
		}
		// aesKey: v1 destroyed, v2 enabled: nothing pending. macKey has
		// two enabled versions: v1 is due 30d after v2's creation.
		if out := ok(t, socket, nil, "key", "set", aesKey, "--disable-versions-after", "30d"); !strings.HasSuffix(out, "(disables versions 30d after the next one)\n") {
			t.Errorf("key set --disable-versions-after 30d with nothing pending: %q", out)
		}
		if out := ok(t, socket, nil, "key", "set", macKey, "--disable-versions-after", "30d"); !strings.Contains(out, "(disables versions 30d after the next one, next ") {
			t.Errorf("key set --disable-versions-after 30d: %q", out)
		}
		fails(t, socket, nil, exitUsage, []string{"between 1d and 3650d"}, "key", "set", macKey, "--disable-versions-after", "1h")
	})

	t.Run("list and show", func(t *testing.T) {
		var list struct {
			Keys []keyJSON `json:"keys"`
		}
		out := ok(t, socket, nil, "key", "list", "--json")
		if err := json.Unmarshal([]byte(out), &list); err != nil {
			t.Fatalf("key list --json: %v\n%s", err, out)
		}
		found := map[string]keyJSON{}
		for _, k := range list.Keys {
			found[k.Key] = k
		}
		for _, name := range []string{aesKey, macKey, ecKey, edKey} {
			if _, ok := found[name]; !ok {
				t.Errorf("key list --json lacks %s: %s", name, out)
			}
		}
		if k := found[macKey]; k.Type != "hmac-sha256" || len(k.Versions) != 2 {
			t.Errorf("key list: %s is %+v", macKey, k)
		}

		var k keyJSON
		out = ok(t, socket, nil, "key", "show", aesKey, "--json")
		if err := json.Unmarshal([]byte(out), &k); err != nil {
			t.Fatalf("key show --json: %v\n%s", err, out)
		}
		if k.Key != aesKey || k.Type != "aes-256-gcm" || len(k.Versions) != 2 ||
			k.Versions[0].State != "destroyed" || k.Versions[1].State != "enabled" || k.Created == nil {
			t.Errorf("key show --json: %+v", k)
		}
		text := ok(t, socket, nil, "key", "show", aesKey)
		for _, want := range []string{"aes-256-gcm", "v1 destroyed", "v2 enabled", "not scheduled"} {
			if !strings.Contains(text, want) {
				t.Errorf("key show lacks %q:\n%s", want, text)
			}
		}
		out = ok(t, socket, nil, "key", "show", ecKey, "--json")
		if err := json.Unmarshal([]byte(out), &k); err != nil || k.RotationPeriod != "90d" || k.NextRotation == nil ||
			!k.NextRotation.Equal(k.Versions[len(k.Versions)-1].Created.Add(90*24*time.Hour)) {
			t.Errorf("key show --json of a key rotated every 90d: %v %s", err, out)
		}
		if text := ok(t, socket, nil, "key", "show", ecKey); !strings.Contains(text, "every 90d by keywardd; next "+k.NextRotation.UTC().Format(time.RFC3339)) {
			t.Errorf("key show of a key rotated every 90d:\n%s", text)
		}
		if text := ok(t, socket, nil, "key", "list"); !strings.Contains(text, "(rotates every 90d, next ") {
			t.Errorf("key list does not show the next rotation:\n%s", text)
		}
		out = ok(t, socket, nil, "key", "show", macKey, "--json")
		if err := json.Unmarshal([]byte(out), &k); err != nil || k.DisableAfter != "30d" || k.NextDisable == nil ||
			!k.NextDisable.Equal(k.Versions[1].Created.Add(30*24*time.Hour)) {
			t.Errorf("key show --json of a key disabling versions after 30d: %v %s", err, out)
		}
		if text := ok(t, socket, nil, "key", "show", macKey); !strings.Contains(text, "versions 30d after the next one, by keywardd; next "+k.NextDisable.UTC().Format(time.RFC3339)) {
			t.Errorf("key show of a key disabling versions after 30d:\n%s", text)
		}
		if text := ok(t, socket, nil, "key", "show", aesKey); !strings.Contains(text, "versions 30d after the next one, by keywardd; none pending") {
			t.Errorf("key show of a key with nothing to disable:\n%s", text)
		}
		if text := ok(t, socket, nil, "key", "list"); !strings.Contains(text, "(disables versions 30d after the next one, next ") {
			t.Errorf("key list does not show the next disable:\n%s", text)
		}
		ok(t, socket, nil, "key", "set", macKey, "--disable-versions-after", "0")
		if out = ok(t, socket, nil, "key", "show", macKey, "--json"); strings.Contains(out, "disable") {
			t.Errorf("disable-versions-after 0: still scheduled: %s", out)
		}
		ok(t, socket, nil, "key", "set", ecKey, "--rotation-period", "0")
		if out = ok(t, socket, nil, "key", "show", ecKey, "--json"); strings.Contains(out, "next_rotation") {
			t.Errorf("rotation period 0: still scheduled: %s", out)
		}
		if text := ok(t, socket, nil, "key", "list"); !strings.Contains(text, aesKey) || !strings.HasPrefix(text, "KEY") {
			t.Errorf("key list:\n%s", text)
		}
	})

	t.Run("status", func(t *testing.T) {
		uid := strconv.Itoa(os.Getuid())
		out := ok(t, socket, nil, "status")
		if !strings.Contains(out, "you are uid="+uid+" ") {
			t.Errorf("status does not show uid %s:\n%s", uid, out)
		}
		var st statusJSON
		if err := json.Unmarshal([]byte(ok(t, socket, nil, "status", "--json")), &st); err != nil {
			t.Fatal(err)
		}
		if st.You.UID != uint32(os.Getuid()) || !st.BackendHealthy || st.Started == nil || st.Version == "" || st.Backend == "" {
			t.Errorf("status --json: %+v", st)
		}
		// StatusResponse.keys is the number of keys; four were created above.
		if st.Keys < 4 {
			t.Errorf("status --json: keys = %d after creating 4 keys; the daemon does not fill StatusResponse.keys", st.Keys)
		}
	})

	t.Run("not found", func(t *testing.T) {
		fails(t, socket, nil, exitNotFound, []string{"KEY_NOT_FOUND"}, "key", "show", p+"/nope")
		fails(t, socket, secret, exitNotFound, []string{"KEY_NOT_FOUND"}, "wrap", "--key", p+"/nope")
		fails(t, socket, nil, exitNotFound, []string{"KEY_NOT_FOUND"}, "key", "rotate", p+"/nope")
		fails(t, socket, nil, exitNotFound, nil, "pubkey", edKey, "--version", "9")
	})
}

// TestNoDaemon: with no daemon on the socket every daemon command exits 5.
func TestNoDaemon(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "absent.sock")
	for _, args := range [][]string{
		{"status"},
		{"key", "list"},
		{"wrap", "--key", "a/b"},
		{"unwrap"},
	} {
		var stdin []byte
		if args[0] == "unwrap" {
			stdin = []byte(envelope.EncodeText([]byte("KW-not-checked-locally")))
		}
		r := fails(t, socket, stdin, exitUnavailable, []string{socket, "does not exist", "keywardd running"}, args...)
		if r.stdout != "" {
			t.Errorf("%v printed %q", args, r.stdout)
		}
	}
	// $KEYWARD_SOCKET is the default.
	cmd := exec.Command(bin, "status")
	cmd.Env = append(testEnv(nil), envSocket+"="+socket)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitUnavailable || !strings.Contains(string(out), socket) {
		t.Errorf("status with $%s: %v, %s", envSocket, err, out)
	}
}
