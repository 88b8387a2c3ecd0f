package socket

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// resetSystemd forgets what Systemd collected, so a test can call it afresh.
func resetSystemd(t *testing.T) {
	t.Helper()
	sd.mu.Lock()
	defer sd.mu.Unlock()
	for _, s := range sd.socks {
		s.l.Close()
	}
	sd.loaded, sd.err, sd.socks = false, nil, nil
}

func TestSystemdNotActivated(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
	}{
		{"no LISTEN_FDS", map[string]string{"LISTEN_FDS": "", "LISTEN_PID": "", "LISTEN_FDNAMES": ""}},
		{"fds for another process", map[string]string{"LISTEN_FDS": "1", "LISTEN_PID": "1", "LISTEN_FDNAMES": "keyward"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			resetSystemd(t)
			t.Cleanup(func() { resetSystemd(t) })
			for _, name := range []string{"keyward", ""} {
				l, ok, err := Systemd(name)
				if l != nil || ok || err != nil {
					t.Errorf("Systemd(%q) = %v, %v, %v; want nil, false, nil", name, l, ok, err)
				}
			}
		})
	}
}

// The real activation protocol: systemd-socket-activate binds two sockets,
// execs the test binary on the first connection with LISTEN_FDS=2 and
// LISTEN_FDNAMES=keyward:kms; the helper picks its sockets by name and serves
// one round trip.
func TestSystemdActivation(t *testing.T) {
	bin, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		msg := "systemd-socket-activate not found (Debian package: systemd)"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	dir := t.TempDir()
	main, kms := filepath.Join(dir, "keyward.sock"), filepath.Join(dir, "kms.sock")
	cmd := exec.Command(bin, "-l", main, "-l", kms, "--fdname=keyward:kms",
		"-E", helperEnv+"=systemd", "-E", "GORACE=atexit_sleep_ms=0", helperBin)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	defer func() {
		select {
		case <-exited:
		default:
			cmd.Process.Kill()
			<-exited
		}
	}()

	var c net.Conn
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err = net.Dial("unix", main); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dial %s: %v\n%s", main, err, &out)
		}
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintln(c, "hello")
	reply, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read reply: %v\nhelper output:\n%s", err, &out)
	}
	for _, want := range []string{
		"keyward=true|",
		"missing=false,true|",                    // no such name: error
		"empty=false,true|",                      // two sockets passed: "" is ambiguous
		"kms=true,true|",                         // the second one by name
		"again=false,true|",                      // each socket is handed out once
		`env=""|`,                                // LISTEN_* not left for children
		"kept=true|",                             // Close did not unlink systemd's socket
		fmt.Sprintf("peer=uid=%d ", os.Getuid()), // the round trip saw us
		"echo=hello",
	} {
		if !strings.Contains(reply, want) {
			t.Errorf("reply lacks %q: %s", want, reply)
		}
	}
	select {
	case <-exited:
		if waitErr != nil {
			t.Errorf("helper exit: %v\n%s", waitErr, &out)
		}
	case <-time.After(20 * time.Second):
		t.Error("helper did not exit")
	}
	if _, err := os.Lstat(main); err != nil {
		t.Errorf("socket file after the helper exited: %v", err)
	}
}
