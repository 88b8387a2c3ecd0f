package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/hsm"
	"github.com/keyward/keyward/internal/testutil"
	softhsmtest "github.com/keyward/keyward/softhsm-test"
)

// notifyMsg is one sd_notify datagram and the pid the kernel says sent it.
type notifyMsg struct {
	at    time.Time
	pid   int32
	state string
}

func (m notifyMsg) has(line string) bool {
	for _, l := range strings.Split(m.state, "\n") {
		if strings.HasPrefix(l, line) {
			return true
		}
	}
	return false
}

// notifySocket is the service manager's end of sd_notify(3): a datagram
// socket with SO_PASSCRED, as systemd's own, so each message carries its
// sender's pid.
type notifySocket struct {
	path string
	c    chan notifyMsg
}

func listenNotify(t *testing.T, path string) *notifySocket {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	raw, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	raw.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1) })
	if serr != nil {
		t.Fatal(serr)
	}
	n := &notifySocket{path: path, c: make(chan notifyMsg, 256)}
	go func() {
		buf, oob := make([]byte, 4096), make([]byte, 1024)
		for {
			nb, noob, _, _, err := conn.ReadMsgUnix(buf, oob)
			if err != nil {
				close(n.c)
				return
			}
			m := notifyMsg{at: time.Now(), state: string(buf[:nb])}
			if msgs, err := unix.ParseSocketControlMessage(oob[:noob]); err == nil {
				for _, cm := range msgs {
					if cred, err := unix.ParseUnixCredentials(&cm); err == nil {
						m.pid = cred.Pid
					}
				}
			}
			n.c <- m
		}
	}()
	return n
}

// next returns the next datagram with a line starting with line ("READY=1",
// "STATUS=serving"), skipping others.
func (n *notifySocket) next(t *testing.T, line string, within time.Duration) notifyMsg {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case m, ok := <-n.c:
			if !ok {
				t.Fatalf("notify socket closed waiting for %q", line)
			}
			if m.has(line) {
				return m
			}
		case <-deadline:
			t.Fatalf("no %q from keywardd within %v", line, within)
		}
	}
}

// none fails if a datagram with a line starting with line arrives within d.
func (n *notifySocket) none(t *testing.T, line string, d time.Duration) {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case m := <-n.c:
			if m.has(line) {
				t.Fatalf("%q within %v: %q", line, d, m.state)
			}
		case <-deadline:
			return
		}
	}
}

func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s not found: make test installs it (Debian package systemd)", name)
		}
		t.Skipf("%s not found: run `make test`, which installs it (Debian package systemd)", name)
	}
	return p
}

// TestSystemdProtocol runs the real keywardd under systemd-socket-activate
// (systemd's activation protocol without systemd as PID 1) with a
// NOTIFY_SOCKET, a 1 s watchdog and the PIN as a credential, on a token of
// its own: the first connection starts it; READY=1 comes from the daemon's
// own pid once the keyring has been read from the token; WATCHDOG=1 every
// 0.5 s; SIGHUP gives RELOADING=1 then READY=1; the pings stop while the
// token is gone and resume when it is back; SIGTERM gives STOPPING=1 and a
// clean exit.
func TestSystemdProtocol(t *testing.T) {
	softhsmtest.Need(t, tok)
	t.Parallel() // its own token label and process; mostly waits for watchdog pings
	activate := needTool(t, "systemd-socket-activate")
	const label = "sd-notify"
	pin, err := tok.InitToken(label)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// The PIN as systemd passes a credential: $CREDENTIALS_DIRECTORY/pin, 0400.
	creds := filepath.Join(dir, "credentials")
	pinFile := filepath.Join(creds, "pin")
	if err := os.Mkdir(creds, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pinFile, []byte(pin), 0o400); err != nil {
		t.Fatal(err)
	}
	// One key made beforehand: READY's status must count it, which it can
	// only do after logging in and reading the keyring.
	ctx := context.Background()
	be, err := hsm.Open(ctx, hsm.Config{Module: tok.Module, TokenLabel: label, PINFile: pinFile})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := be.CreateKey(ctx, "before/start", "aes-256-gcm"); err != nil {
		t.Fatal(err)
	}
	be.Close()

	cfgPath := filepath.Join(dir, "keyward.toml")
	cfg := fmt.Sprintf(`socket = %q
systemd_socket_name = "keyward"
audit_log = %q
[backend]
module = %q
token = %q
[[rule]]
name = "root"
uids = [0]
keys = ["**"]
operations = ["wrap", "unwrap", "key.create", "key.read"]
`, filepath.Join(dir, "not-this.sock"), filepath.Join(dir, "audit.log"), tok.Module, label)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "keyward.sock")
	notify := listenNotify(t, filepath.Join(dir, "notify.sock"))
	cmd := exec.Command(activate, "-l", sock, "--fdname=keyward",
		"-E", "NOTIFY_SOCKET="+notify.path, "-E", "WATCHDOG_USEC="+fmt.Sprint(watchdog.Microseconds()),
		"-E", softhsmtest.EnvConf+"="+tok.ConfPath, "-E", "CREDENTIALS_DIRECTORY="+creds,
		bin, "--config", cfgPath)
	var stderr testutil.SyncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() || os.Getenv("KW_SHOW_LOG") != "" {
			t.Logf("keywardd's log:\n%s", stderr.String())
		}
	})

	// Not started before the first connection.
	waitFor(t, func() bool { _, err := os.Stat(sock); return err == nil }, soon, "the activation socket")
	notify.none(t, "READY=1", 300*time.Millisecond)
	if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); filepath.Base(exe) != "systemd-socket-activate" {
		t.Fatalf("before any connection pid %d runs %s, want systemd-socket-activate", pid, exe)
	}

	// The first connection activates it. systemd-socket-activate execs the
	// daemon: the same pid, so no WATCHDOG_PID is needed.
	c := dial(t, sock)
	callCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	st, err := c.Status(callCtx, &pb.StatusRequest{})
	if err != nil {
		t.Fatalf("first call: %v\n%s", err, stderr.String())
	}
	ready := notify.next(t, "READY=1", soon)
	if ready.pid != int32(pid) {
		t.Errorf("READY=1 sent by pid %d, want keywardd's %d (NotifyAccess=main)", ready.pid, pid)
	}
	if !ready.has("STATUS=serving: backend pkcs11 healthy; 1 keys;") {
		t.Errorf("READY=1 before the keyring was read? %q", ready.state)
	}
	if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); exe != bin {
		t.Errorf("pid %d runs %s after activation, want %s", pid, exe, bin)
	}
	if !st.GetBackendHealthy() || st.GetKeys() != 1 {
		t.Errorf("status: healthy %v, %d keys", st.GetBackendHealthy(), st.GetKeys())
	}
	if _, err := c.CreateKey(callCtx, &pb.CreateKeyRequest{Key: "after/start", KeyType: "aes-256-gcm"}); err != nil {
		t.Fatal(err)
	}

	// Watchdog: a ping every WATCHDOG_USEC/2.
	first := notify.next(t, "WATCHDOG=1", soon)
	var last notifyMsg
	for range 3 {
		last = notify.next(t, "WATCHDOG=1", soon)
		if last.pid != int32(pid) {
			t.Errorf("WATCHDOG=1 from pid %d", last.pid)
		}
	}
	every := last.at.Sub(first.at) / 3
	t.Logf("watchdog pings every %v (WATCHDOG_USEC=%v)", every.Round(time.Millisecond), watchdog)
	// Not more often than every half period, and within the period (a
	// late tick on a busy machine is not a failure).
	if every < 2*watchdog/5 || every > watchdog {
		t.Errorf("pings every %v, want about %v", every, watchdog/2)
	}
	if !last.has("STATUS=serving: backend pkcs11 healthy; 1 keys; 2 requests served") {
		t.Errorf("status with a ping: %q", last.state)
	}

	// SIGHUP: RELOADING=1 (with MONOTONIC_USEC), then READY=1 with a fresh count.
	cmd.Process.Signal(syscall.SIGHUP)
	rel := notify.next(t, "RELOADING=1", soon)
	if !rel.has("MONOTONIC_USEC=") {
		t.Errorf("RELOADING=1 without MONOTONIC_USEC: %q", rel.state)
	}
	if again := notify.next(t, "READY=1", soon); !again.has("STATUS=serving: backend pkcs11 healthy; 2 keys;") {
		t.Errorf("READY=1 after the reload: %q", again.state)
	}

	// The token goes away (moved out of the tokendir in one rename: never a
	// copy inside it, which aborts SoftHSM2): the pings stop for longer than
	// the watchdog timeout, so systemd would restart the daemon.
	tokenDir, err := tok.TokenDirOf(label)
	if err != nil {
		t.Fatal(err)
	}
	away := filepath.Join(tok.Dir, label+"-away")
	if err := os.Rename(tokenDir, away); err != nil {
		t.Fatal(err)
	}
	notify.next(t, "STATUS=serving: backend pkcs11 NOT answering", soon)
	notify.none(t, "WATCHDOG=1", watchdog+watchdog/2)
	waitFor(t, func() bool { return strings.Contains(stderr.String(), "backend health probe failed") }, soon, "the failure in the log")

	// Back (whatever SoftHSM2 re-created meanwhile is removed first): the
	// pings resume without a restart.
	os.RemoveAll(tokenDir)
	if err := os.Rename(away, tokenDir); err != nil {
		t.Fatal(err)
	}
	notify.next(t, "WATCHDOG=1", soon)
	waitFor(t, func() bool { return strings.Contains(stderr.String(), "backend health probe succeeds again") }, soon, "the recovery in the log")

	cmd.Process.Signal(syscall.SIGTERM)
	notify.next(t, "STOPPING=1", soon)
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("keywardd still running 15s after SIGTERM")
	}
	exited <- nil // for the cleanup
	if strings.Contains(stderr.String(), pin) {
		t.Error("PIN in the log")
	}
}

// soon bounds waits for what normally comes at once: it only ends a hang.
const soon = 30 * time.Second

// watchdog is the WATCHDOG_USEC given to keywardd: long enough that its
// health probe (a quarter of it) does not time out on a busy machine.
const watchdog = 2 * time.Second

func waitFor(t *testing.T, cond func() bool, within time.Duration, what string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRefusedPINExits4: a PIN the token refuses ends keywardd with exit 4,
// which keyward.service does not restart on (a real token may lock).
func TestRefusedPINExits4(t *testing.T) {
	softhsmtest.Need(t, tok)
	const label = "wrong-pin"
	if _, err := tok.InitToken(label); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pinFile := filepath.Join(dir, "pin")
	if err := os.WriteFile(pinFile, []byte("not-the-pin"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "keyward.toml")
	cfg := fmt.Sprintf("socket = %q\naudit_log = %q\n[backend]\nmodule = %q\ntoken = %q\npin_file = %q\n",
		filepath.Join(dir, "k.sock"), filepath.Join(dir, "audit.log"), tok.Module, label, pinFile)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "--config", cfgPath).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitLogin {
		t.Fatalf("keywardd with a refused PIN: %v, want exit %d\n%s", err, exitLogin, out)
	}
	if !strings.Contains(string(out), "login failed") || strings.Contains(string(out), "not-the-pin") {
		t.Errorf("log: %s", out)
	}
}
