package socket

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/keyward/keyward/internal/testutil"
)

// The test binary doubles as the client (and, under systemd-socket-activate,
// the server): with helperEnv set, TestMain runs a helper instead of the tests.
const (
	helperEnv     = "KEYWARD_SOCKET_TEST_HELPER"
	helperSockEnv = "KEYWARD_SOCKET_TEST_SOCK"
)

// helperBin is a copy of the test binary in a 0755 directory: go test builds
// in a 0700 directory that other uids cannot enter.
var helperBin string

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(runHelper(mode, os.Getenv(helperSockEnv)))
	}
	bin, dir, err := testutil.CopySelf("keyward-socket-helper-", "socket.test")
	helperBin = bin
	if err != nil {
		fmt.Fprintln(os.Stderr, "copy helper binary:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func runHelper(mode, sock string) int {
	switch mode {
	case "hold":
		// Connect, then stay alive until the server hangs up.
		c, err := net.Dial("unix", sock)
		if err != nil {
			fmt.Println(err)
			return 1
		}
		c.SetDeadline(time.Now().Add(time.Minute))
		io.Copy(io.Discard, c)
		return 0
	case "exit":
		// Connect and exit without waiting for accept.
		if _, err := net.Dial("unix", sock); err != nil {
			fmt.Println(err)
			return 1
		}
		return 0
	case "dial":
		c, err := net.Dial("unix", sock)
		switch {
		case err == nil:
			c.Close()
			fmt.Println("ok")
			return 0
		case errors.Is(err, syscall.EACCES):
			fmt.Println("EACCES")
			return 13
		default:
			fmt.Println(err)
			return 1
		}
	case "serve":
		// A non-root daemon: identify one client, print it.
		l, err := Listen(Config{Path: sock, Mode: 0o666})
		if err != nil {
			fmt.Println(err)
			return 1
		}
		defer l.Close()
		c, err := l.Accept()
		if err != nil {
			fmt.Println(err)
			return 1
		}
		defer c.Close()
		p, err := PeerOf(c.(*net.UnixConn))
		if err != nil {
			fmt.Println(err)
			return 1
		}
		fmt.Printf("peer=%s verified=%v groups=%v\n", p, p.PIDFDVerified, p.Groups)
		return 0
	case "grpc":
		return helperGRPC(sock)
	case "systemd":
		return helperSystemd()
	}
	fmt.Fprintln(os.Stderr, "unknown helper mode", mode)
	return 2
}

// helperGRPC asks the health service about its own uid and about uid 0.
func helperGRPC(sock string) int {
	cc, err := grpc.NewClient("passthrough:///keyward",
		grpc.WithContextDialer(Dialer(sock)),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	hc := healthpb.NewHealthClient(cc)
	for _, q := range []struct{ label, service string }{
		{"own", fmt.Sprintf("uid-%d", os.Getuid())},
		{"other", "uid-0"},
	} {
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: q.service})
		if err != nil {
			st := status.Convert(err)
			fmt.Printf("%s=%s: %s\n", q.label, st.Code(), st.Message())
			continue
		}
		fmt.Printf("%s=%s\n", q.label, resp.GetStatus())
	}
	return 0
}

// helperSystemd runs under systemd-socket-activate with two sockets named
// keyward and kms, answers one connection on keyward with what it found.
func helperSystemd() int {
	l, okK, errK := Systemd("keyward")
	_, okM, errM := Systemd("missing")
	_, okE, errE := Systemd("")
	l2, okKMS, errKMS := Systemd("kms")
	_, okA, errA := Systemd("keyward")
	envLeft := os.Getenv("LISTEN_FDS") + os.Getenv("LISTEN_PID") + os.Getenv("LISTEN_FDNAMES")
	if !okK || errK != nil {
		fmt.Fprintln(os.Stderr, "no keyward listener:", okK, errK)
		return 1
	}
	c, err := l.Accept()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	p, err := PeerOf(c.(*net.UnixConn))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	line, _ := bufio.NewReader(c).ReadString('\n')
	path := l.Addr().String()
	l.Close()
	if l2 != nil {
		l2.Close()
	}
	_, statErr := os.Lstat(path)
	fmt.Fprintf(c, "keyward=%v|missing=%v,%v|empty=%v,%v|kms=%v,%v|again=%v,%v|env=%q|kept=%v|peer=%s|echo=%s\n",
		okK, okM, errM != nil, okE, errE != nil, okKMS, errKMS == nil, okA, errA != nil,
		envLeft, statErr == nil, p, strings.TrimSpace(line))
	return 0
}

func newHelperCmd(mode, sock string) *exec.Cmd {
	cmd := exec.Command(helperBin)
	// Under -race a process sleeps 1s at exit by default; clients need not.
	gorace := strings.TrimSpace(os.Getenv("GORACE") + " atexit_sleep_ms=0")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, helperSockEnv+"="+sock, "GORACE="+gorace)
	return cmd
}

// client starts the helper in mode against sock, as cred (nil: as root).
func client(t *testing.T, mode, sock string, cred *syscall.Credential) (*exec.Cmd, *strings.Builder) {
	t.Helper()
	cmd := newHelperCmd(mode, sock)
	out := new(strings.Builder)
	cmd.Stdout = out
	cmd.Stderr = out
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start helper %s: %v", mode, err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return cmd, out
}

// runClient runs the helper to completion and returns its output and exit code.
func runClient(t *testing.T, mode, sock string, cred *syscall.Credential) (string, int) {
	t.Helper()
	cmd, out := client(t, mode, sock, cred)
	err := cmd.Wait()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("helper %s: %v", mode, err)
	}
	return out.String(), cmd.ProcessState.ExitCode()
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI runs as root; this test needs it to start clients as other uids")
		}
		t.Skip("needs root to start clients as other uids")
	}
}

// sharedDir is a temporary directory that other uids can enter.
func sharedDir(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	for _, p := range []string{filepath.Dir(d), d} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// acceptOne accepts a single connection with a deadline.
func acceptOne(t *testing.T, l net.Listener) *net.UnixConn {
	t.Helper()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := l.Accept()
		ch <- res{c, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("accept: %v", r.err)
		}
		uc, err := unwrapUnix(r.c)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.c.Close() })
		return uc
	case <-time.After(20 * time.Second):
		t.Fatal("accept: timed out")
		return nil
	}
}
