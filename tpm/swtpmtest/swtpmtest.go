// Package swtpmtest runs real swtpm processes (the software TPM 2.0 that
// libvirt and QEMU use) for tests: each Start gets a fresh TPM with its own
// state directory, listening on 127.0.0.1 or a Unix socket, killed when the
// test ends. Kill and Restart model a TPM (or its daemon) dying and coming
// back with the same state, for recovery tests.
//
// swtpm serves one client at a time: while one connection is open, a second
// one (tpm2-tools with ToolsEnv, say) is accepted but not served until the
// first closes. Close the Conn under test before running tpm2-tools.
//
// swtpm keeps its seeds unencrypted in the state directory: it is a test
// double, never a key store.
package swtpmtest

import (
	"encoding/binary"
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
	"time"
)

const (
	readyTimeout = 5 * time.Second
	startTries   = 5 // TCP: fresh ports after a bind race
	// sockaddr_un holds 108 bytes; keep a margin for the ".ctrl" suffix.
	maxSocketPath = 100
)

// SWTPM is one swtpm process and the endpoint and state it keeps across
// Restart.
type SWTPM struct {
	network  string // "tcp" or "unix"
	port     int    // data port; the control channel is port+1
	sock     string // data socket; the control socket is sock+".ctrl"
	stateDir string
	logPath  string

	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been waited for
}

// Need fails the test when swtpm is not installed. It does not skip: CI
// installs swtpm, and a TPM test that silently does not run tests nothing.
func Need(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("swtpm"); err != nil {
		t.Fatalf("swtpm not installed: run make deps (%v)", err)
	}
}

// Start runs swtpm on two free TCP ports on 127.0.0.1: the data channel on
// P, the control channel on P+1.
func Start(t testing.TB) *SWTPM {
	t.Helper()
	Need(t)
	s := newSWTPM(t, "tcp")
	var err error
	for range startTries {
		if s.port, err = freePortPair(); err != nil {
			continue
		}
		if err = s.start(); err == nil {
			return s
		}
		if !strings.Contains(s.log(), "Address already in use") {
			break
		}
	}
	t.Fatalf("swtpmtest: start swtpm: %v", err)
	return nil
}

// StartUnix runs swtpm on Unix sockets: the data channel on a socket whose
// path Device names, the control channel beside it with ".ctrl" appended
// (the layout tpm2-tools' swtpm TCTI expects).
func StartUnix(t testing.TB) *SWTPM {
	t.Helper()
	Need(t)
	s := newSWTPM(t, "unix")
	dir := socketDir(t)
	s.sock = filepath.Join(dir, "tpm")
	if err := s.start(); err != nil {
		t.Fatalf("swtpmtest: start swtpm: %v", err)
	}
	return s
}

// socketDir is a directory whose socket paths fit in a sockaddr_un:
// t.TempDir() if short enough, else a fresh directory in $TMPDIR or /tmp.
// swtpm's options are comma-separated, with no escape: no comma either
// (t.TempDir() holds the test's name).
func socketDir(t testing.TB) string {
	const longest = "/tpm.ctrl"
	if dir := t.TempDir(); len(dir)+len(longest) <= maxSocketPath && !strings.Contains(dir, ",") {
		return dir
	}
	for _, base := range []string{os.TempDir(), "/tmp"} {
		dir, err := os.MkdirTemp(base, "swtpm")
		if err != nil {
			continue
		}
		if len(dir)+len(longest) > maxSocketPath || strings.Contains(dir, ",") {
			os.Remove(dir)
			continue
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		return dir
	}
	t.Fatalf("swtpmtest: no directory with paths short enough for a Unix socket")
	return ""
}

func newSWTPM(t testing.TB, network string) *SWTPM {
	dir := t.TempDir()
	if strings.Contains(dir, ",") { // swtpm's --tpmstate dir= cannot hold one
		var err error
		if dir, err = os.MkdirTemp("", "swtpm"); err != nil {
			t.Fatalf("swtpmtest: %v", err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
	}
	s := &SWTPM{
		network:  network,
		stateDir: filepath.Join(dir, "state"),
		logPath:  filepath.Join(dir, "swtpm.log"),
	}
	if err := os.Mkdir(s.stateDir, 0o700); err != nil {
		t.Fatalf("swtpmtest: %v", err)
	}
	t.Cleanup(s.Kill)
	return s
}

// Device is the endpoint in tpm.Dial's syntax: "swtpm:127.0.0.1:P" or
// "swtpm+unix:/path".
func (s *SWTPM) Device() string {
	if s.network == "unix" {
		return "swtpm+unix:" + s.sock
	}
	return "swtpm:" + s.addr()
}

// StateDir is swtpm's state directory (tpm2-00.permall inside).
func (s *SWTPM) StateDir() string { return s.stateDir }

// ToolsEnv is os.Environ() with TPM2TOOLS_TCTI pointing tpm2-tools at this
// swtpm (tpm2-tss's swtpm TCTI takes host/port and, for Unix sockets, path).
func (s *SWTPM) ToolsEnv() []string {
	tcti := "swtpm:host=127.0.0.1,port=" + strconv.Itoa(s.port)
	if s.network == "unix" {
		tcti = "swtpm:path=" + s.sock
	}
	return append(os.Environ(), "TPM2TOOLS_TCTI="+tcti)
}

// Kill stops swtpm with SIGKILL, as a crash would, and waits for it to exit.
// The state directory stays. Killing a stopped swtpm does nothing.
func (s *SWTPM) Kill() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Kill()
	<-s.exited
	s.cmd = nil
}

// Restart kills swtpm if it runs and starts it again on the same state
// directory and endpoint, waiting until it accepts connections.
func (s *SWTPM) Restart(t testing.TB) {
	t.Helper()
	s.Kill()
	if err := s.start(); err != nil {
		t.Fatalf("swtpmtest: restart swtpm: %v", err)
	}
}

func (s *SWTPM) addr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
}

// ctrlAddr is the control channel: the port after the data port, or the
// data socket's path with ".ctrl" appended.
func (s *SWTPM) ctrlAddr() string {
	if s.network == "unix" {
		return s.sock + ".ctrl"
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port+1))
}

func (s *SWTPM) start() error {
	server := "type=unixio,path=" + s.sock
	ctrl := "type=unixio,path=" + s.ctrlAddr()
	if s.network == "tcp" {
		server = fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", s.port)
		ctrl = fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", s.port+1)
	}
	logf, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command("swtpm", "socket", "--tpm2",
		"--server", server, "--ctrl", ctrl,
		"--tpmstate", "dir="+s.stateDir,
		"--flags", "not-need-init,startup-clear")
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // no orphan if the test binary dies
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	s.cmd, s.exited = cmd, exited

	// Readiness is asked on the control channel: the data channel serves one
	// client at a time, and after a Restart the code under test may hold it.
	deadline := time.Now().Add(readyTimeout)
	for {
		select {
		case <-exited:
			s.cmd = nil
			return fmt.Errorf("swtpm exited (%v); its output:\n%s", cmd.ProcessState, s.log())
		default:
		}
		err := probeCtrl(s.network, s.ctrlAddr())
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			s.Kill()
			return fmt.Errorf("swtpm control channel %s %s not answering after %v (%v); its output:\n%s",
				s.network, s.ctrlAddr(), readyTimeout, err, s.log())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// probeCtrl asks swtpm's control channel for its capabilities
// (CMD_GET_CAPABILITY). swtpm answers it from its main loop, so both
// channels are listening by then; and a port that merely accepts could be
// another process that raced swtpm to it.
func probeCtrl(network, addr string) error {
	c, err := net.DialTimeout(network, addr, 250*time.Millisecond)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(250 * time.Millisecond)) // slow: fail, start tries again
	if _, err := c.Write([]byte{0, 0, 0, 1}); err != nil {
		return err
	}
	var resp [8]byte // u32 result, u32 capability bits
	if _, err := io.ReadFull(c, resp[:]); err != nil {
		return fmt.Errorf("control channel: %w", err)
	}
	if res := binary.BigEndian.Uint32(resp[:4]); res != 0 {
		return fmt.Errorf("control channel: CMD_GET_CAPABILITY result %#x", res)
	}
	return nil
}

func (s *SWTPM) log() string {
	b, err := os.ReadFile(s.logPath)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	return string(b)
}

// freePortPair finds a port P such that P and P+1 are both free on
// 127.0.0.1 now. swtpm binds them later, so another process can still take
// them: Start retries on "Address already in use".
func freePortPair() (int, error) {
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		p := l.Addr().(*net.TCPAddr).Port
		if p >= 65535 {
			l.Close()
			continue
		}
		l2, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p+1)))
		l.Close()
		if err == nil {
			l2.Close()
			return p, nil
		}
	}
	return 0, errors.New("no two adjacent free ports on 127.0.0.1")
}
