package testutil

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
)

// A stand-in daemon is a copy of the test binary, run as another uid, that
// serves gRPC on a socket the test bound as root, and counts the bytes it
// is sent: a client that refuses it must have sent nothing.

// StartStandIn binds a socket at path (as this process's uid, root) and
// runs bin as uid with env set, handing it the socket as fd 3; bin must
// call ServeStandIn. stop ends the stand-in and returns how many bytes it
// was sent.
func StartStandIn(t testing.TB, bin, env, path string, uid uint32) (stop func() int64) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "socket")
	defer f.Close()
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(path) })
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), env+"=1")
	cmd.ExtraFiles = []*os.File{f}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	lines := bufio.NewScanner(out)
	if !lines.Scan() || lines.Text() != "ready" {
		t.Fatalf("stand-in daemon did not start: %q", lines.Text())
	}
	return func() int64 {
		stdin.Close()
		if !lines.Scan() {
			t.Fatal("stand-in daemon said nothing at exit")
		}
		n, err := strconv.ParseInt(strings.TrimPrefix(lines.Text(), "read "), 10, 64)
		if err != nil {
			t.Fatalf("stand-in daemon: %q", lines.Text())
		}
		return n
	}
}

// ServeStandIn is the stand-in's side: listen(2) on fd 3 (so SO_PEERCRED
// names this process's uid), serve what register adds, and once stdin
// closes print how many bytes it was sent. It returns the exit status.
func ServeStandIn(register func(*grpc.Server)) int {
	if err := unix.Listen(3, 16); err != nil {
		fmt.Println("listen:", err)
		return 1
	}
	l, err := net.FileListener(os.NewFile(3, "socket"))
	if err != nil {
		fmt.Println("listener:", err)
		return 1
	}
	g := grpc.NewServer()
	register(g)
	cl := &CountingListener{Listener: l}
	go g.Serve(cl)
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	g.Stop() // closes the connections, so that every reader is done
	fmt.Println("read", cl.Read())
	return 0
}
