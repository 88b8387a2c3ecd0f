package daemon_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keyward/keyward/daemon"
	"github.com/keyward/keyward/policy"
)

// The credential socket must never answer with nothing: systemd takes an
// empty answer for an empty credential and starts the unit. These run the
// server on the in-memory backend with its instance hooks; the requesters
// are real processes, as root, in cgroups named like units.

func credHarness(t *testing.T, unit string, o daemon.CredOptions) *daemon.CredHarness {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("credential tests need root")
	}
	h := daemon.NewCredHarness(t, t.TempDir(), []policy.Rule{
		{Name: "unit", Units: []string{unit}, Keys: []string{"fc/*"}, Operations: []string{"credential"}},
	}, o)
	h.Put(t, unit, "db", "fc/k", []byte("fail-closed-secret"))
	return h
}

// rawRequest connects to sock with no address bound (a request keywardd
// refuses) and returns the connection, unread.
func rawRequest(t *testing.T, sock string) *os.File {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: sock}); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "cred")
	t.Cleanup(func() { f.Close() })
	return f
}

// readAnswer reads a raw request's answer to EOF (bounded at 30 s, only to
// end a hang) and names it as credChild does.
func readAnswer(t *testing.T, f *os.File) string {
	t.Helper()
	f.SetReadDeadline(time.Now().Add(30 * time.Second))
	b, err := io.ReadAll(f)
	switch {
	case err != nil:
		return "ERROR " + err.Error()
	case len(b) == 0:
		return "EMPTY"
	case len(b) > 1<<20 && bytes.Count(b, []byte{0}) == len(b):
		return "REFUSED"
	}
	return "DATA"
}

// TestCredentialBusyRefused: with every slot held by a request whose
// answer is not being read, one more request gets the refusal (not an
// empty answer) from the refusal path, and is counted.
func TestCredentialBusyRefused(t *testing.T) {
	unit := "fc-" + randHex(4) + ".service"
	h := credHarness(t, unit, daemon.CredOptions{Work: 30 * time.Second, Write: time.Minute, Refuse: time.Minute})
	const slots = 64
	for range slots {
		f := rawRequest(t, h.Sock)
		// Its handler is blocked writing the refusal: the first bytes arrived.
		if _, err := f.Read(make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
	}
	if got := readAnswer(t, rawRequest(t, h.Sock)); got != "REFUSED" {
		t.Fatalf("request past the %d slots got %s, want the refusal", slots, got)
	}
	if n := h.Counted("TOO_MANY_REQUESTS"); n != 1 {
		t.Errorf("TOO_MANY_REQUESTS counted %v times, want 1", n)
	}
}

// TestCredentialLateWorkRefused: when the audit record is not durable
// within the work bound (a stalled fsync), the request gets the refusal
// within its own write deadline instead of nothing, both for a request
// that would have been served and for one refused anyway; the late OK
// record is followed by a NOT_DELIVERED one.
func TestCredentialLateWorkRefused(t *testing.T) {
	unit := "fc-" + randHex(4) + ".service"
	h := credHarness(t, unit, daemon.CredOptions{Work: 50 * time.Millisecond, Write: 30 * time.Second, Refuse: 30 * time.Second})
	cg := testCgroup(t, unit)
	h.StallAudit(func(ctx context.Context, result string) error {
		if result == "NOT_DELIVERED" {
			return nil // the disk is back for the second records
		}
		// fsync returns, late: after the work bound, never before it.
		<-ctx.Done()
		time.Sleep(20 * time.Millisecond)
		return nil
	})
	if got := askCredential(t, h.Sock, cg, randHex(7)+"/unit/"+unit+"/db", 0); got != "REFUSED" {
		t.Errorf("a credential whose record was late: got %q, want REFUSED", got)
	}
	if got := readAnswer(t, rawRequest(t, h.Sock)); got != "REFUSED" {
		t.Errorf("a refused request whose record was late: got %s, want REFUSED", got)
	}
	waitFor(t, func() bool { return slices.Contains(h.Records(), "credential fc/k "+"NOT_DELIVERED") }, "a NOT_DELIVERED record")
	if recs := h.Records(); !slices.Contains(recs, "credential fc/k OK") {
		t.Errorf("records %q: want the late OK record to be present (followed by NOT_DELIVERED)", recs)
	}
	if n := h.Counted("OK"); n != 0 {
		t.Errorf("OK counted %v times; nothing was served", n)
	}
}

// TestCredentialNotDeliveredRecorded: a requester that goes away after the
// OK record but before the plaintext is written leaves a NOT_DELIVERED
// record after the OK one, and is not counted as served.
func TestCredentialNotDeliveredRecorded(t *testing.T) {
	unit := "fc-" + randHex(4) + ".service"
	cmds := make(chan *exec.Cmd, 1)
	h := credHarness(t, unit, daemon.CredOptions{BeforeWrite: func() {
		cmd := <-cmds
		cmd.Process.Kill()
		cmd.Wait()
	}})
	cg := testCgroup(t, unit)
	cmd, _ := startRequester(t, h.Sock, cg, randHex(7)+"/unit/"+unit+"/db")
	cmds <- cmd
	waitFor(t, func() bool { return len(h.Records()) >= 2 }, "two records")
	want := []string{"credential fc/k OK", "credential fc/k NOT_DELIVERED"}
	if got := h.Records(); !slices.Equal(got, want) {
		t.Errorf("records %q, want %q", got, want)
	}
	if ok, nd := h.Counted("OK"), h.Counted("NOT_DELIVERED"); ok != 0 || nd != 1 {
		t.Errorf("counted OK %v, NOT_DELIVERED %v; want 0, 1", ok, nd)
	}
}

// TestCredentialAcceptRetried: accept failing with EMFILE does not end
// credential serving: once it succeeds again requests are answered.
func TestCredentialAcceptRetried(t *testing.T) {
	unit := "fc-" + randHex(4) + ".service"
	var fails atomic.Int32
	fails.Store(3)
	h := credHarness(t, unit, daemon.CredOptions{Listen: func(l net.Listener) net.Listener { return &failingListener{Listener: l, fails: &fails} }})
	if got := readAnswer(t, rawRequest(t, h.Sock)); got != "REFUSED" {
		t.Fatalf("request after failed accepts: got %s, want REFUSED", got)
	}
	if n := fails.Load(); n > 0 {
		t.Errorf("%d injected accept failures left", n)
	}
}

// failingListener fails its first accepts with EMFILE, as accept(2) does
// when the process is out of file descriptors.
type failingListener struct {
	net.Listener
	fails *atomic.Int32
}

func (l *failingListener) Accept() (net.Conn, error) {
	if l.fails.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "unix", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// startRequester starts a requester as root in cgroup with address addr,
// as askCredential does, without waiting for it.
func startRequester(t *testing.T, sock, cgroup, addr string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	cmd := exec.Command(childBinary(t))
	cmd.Env = append(os.Environ(), credChildEnv+"=1", "KW_CRED_SOCK="+sock, "KW_CRED_ADDR="+addr)
	cg, err := os.Open(cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd, &out
}

// waitFor waits for cond, bounded at 30 s only to end a hang.
func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	for end := time.Now().Add(30 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
