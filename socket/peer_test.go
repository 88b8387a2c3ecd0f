package socket

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// anyoneListener is a socket every uid may connect to, in a directory every
// uid may enter.
func anyoneListener(t *testing.T) (net.Listener, string) {
	t.Helper()
	path := filepath.Join(sharedDir(t), "peer.sock")
	l, err := Listen(Config{Path: path, Mode: 0o666})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, path
}

func TestPeerOfOtherUID(t *testing.T) {
	requireRoot(t)
	l, path := anyoneListener(t)
	cmd, out := client(t, "hold", path, &syscall.Credential{Uid: 12345, Gid: 23456, Groups: []uint32{45678, 34567}})
	c := acceptOne(t, l)
	p, err := PeerOf(c)
	if err != nil {
		t.Fatal(err)
	}
	want := Peer{UID: 12345, GID: 23456, Groups: []uint32{34567, 45678}, PID: int32(cmd.Process.Pid)}
	if p.UID != want.UID || p.GID != want.GID || p.PID != want.PID || !slices.Equal(p.Groups, want.Groups) {
		t.Errorf("PeerOf = %+v, want ids of %+v", p, want)
	}

	// The client is alive: the unit (if any) is verified through the pidfd and
	// is what /proc says right now.
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	if pidfdSupported(t) && !p.PIDFDVerified {
		t.Errorf("PIDFDVerified = false for a live client")
	}
	if got, want := p.Unit, unitFromCgroupFile(data); got != want {
		t.Errorf("Unit = %q, /proc/%d/cgroup (%q) says %q", got, cmd.Process.Pid, data, want)
	}
	t.Logf("peer %s (groups %v, verified %v); client cgroup %q", p, p.Groups, p.PIDFDVerified, strings.TrimSpace(string(data)))

	c.Close()
	if err := cmd.Wait(); err != nil {
		t.Errorf("client: %v\n%s", err, out)
	}
}

// More supplementary groups than PeerOf's first buffer holds (ERANGE path).
func TestPeerOfManyGroups(t *testing.T) {
	requireRoot(t)
	l, path := anyoneListener(t)
	var groups []uint32
	for g := uint32(100000); g < 100300; g++ {
		groups = append(groups, g)
	}
	client(t, "hold", path, &syscall.Credential{Uid: 12345, Gid: 23456, Groups: groups})
	p, err := PeerOf(acceptOne(t, l))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(p.Groups, groups) {
		t.Errorf("got %d groups, want %d (%v...)", len(p.Groups), len(groups), p.Groups[:min(len(p.Groups), 5)])
	}
}

// A daemon that is not root may not signal its clients: pidfd_send_signal
// answers EPERM, which still proves the client alive.
func TestPeerOfUnprivilegedServer(t *testing.T) {
	requireRoot(t)
	if !pidfdSupported(t) {
		t.Skip("kernel without SO_PEERPIDFD")
	}
	dir := filepath.Join(sharedDir(t), "srv")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, 12345, 12345); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "keyward.sock")
	srv, srvOut := client(t, "serve", path, &syscall.Credential{Uid: 12345, Gid: 12345})
	waitForSocket(t, path)
	cl, _ := client(t, "hold", path, &syscall.Credential{Uid: 23456, Gid: 23456, Groups: []uint32{34567}})
	if err := srv.Wait(); err != nil {
		t.Fatalf("server: %v\n%s", err, srvOut)
	}
	cl.Wait()
	out := srvOut.String()
	for _, want := range []string{
		fmt.Sprintf("peer=uid=23456 gid=23456 pid=%d", cl.Process.Pid),
		"verified=true",
		"groups=[34567]",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("server output lacks %q: %s", want, out)
		}
	}
}

func waitForSocket(t *testing.T, path string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if fi, err := os.Lstat(path); err == nil && fi.Mode().Type() == os.ModeSocket {
			return
		}
	}
	t.Fatalf("%s did not appear", path)
}

func TestPeerOfRoot(t *testing.T) {
	requireRoot(t)
	l, path := anyoneListener(t)
	cmd, _ := client(t, "hold", path, nil)
	c := acceptOne(t, l)
	p, err := PeerOf(c)
	if err != nil {
		t.Fatal(err)
	}
	if p.UID != 0 || p.GID != 0 || p.PID != int32(cmd.Process.Pid) {
		t.Errorf("PeerOf = %+v, want uid 0 gid 0 pid %d", p, cmd.Process.Pid)
	}
	if got := p.String(); !strings.HasPrefix(got, fmt.Sprintf("uid=0 gid=0 pid=%d", cmd.Process.Pid)) {
		t.Errorf("String() = %q", got)
	}
}

// A client that connects and is gone (reaped) before the server looks: the
// socket still knows who it was, the pidfd knows it is dead, and no unit is
// attributed (its PID could belong to someone else by now).
func TestPeerOfExitedClient(t *testing.T) {
	requireRoot(t)
	l, path := anyoneListener(t)
	out, code := runClient(t, "exit", path, &syscall.Credential{Uid: 12345, Gid: 23456})
	if code != 0 {
		t.Fatalf("client exited %d: %s", code, out)
	}
	// runClient waited: the client is reaped, not a zombie.
	c := acceptOne(t, l)
	p, err := PeerOf(c)
	if err != nil {
		t.Fatal(err)
	}
	if p.UID != 12345 || p.GID != 23456 || p.PID == 0 {
		t.Errorf("PeerOf = %+v, want uid 12345 gid 23456 and the dead pid", p)
	}
	if p.Unit != "" || p.PIDFDVerified {
		t.Errorf("dead client: Unit = %q, PIDFDVerified = %v; want \"\", false", p.Unit, p.PIDFDVerified)
	}
	raw, _ := c.SyscallConn()
	raw.Control(func(fd uintptr) {
		pidfd, err := peerPIDFD(int(fd))
		if err == nil {
			err = unix.PidfdSendSignal(pidfd, 0, nil, 0)
			unix.Close(pidfd)
			t.Logf("kernel fact: SO_PEERPIDFD for a reaped peer succeeds; pidfd_send_signal(0) = %v", err)
		} else {
			t.Logf("kernel fact: SO_PEERPIDFD for a reaped peer fails: %v", err)
		}
	})
}

// A client placed in a real systemd-shaped cgroup (cgroup v2, root only) gets
// the unit, not the delegated name below it.
func TestPeerOfUnit(t *testing.T) {
	requireRoot(t)
	if !pidfdSupported(t) {
		t.Skip("kernel without SO_PEERPIDFD (< 6.5): the unit is never read")
	}
	mnt := cgroup2Mount(t)
	slice := filepath.Join(mnt, fmt.Sprintf("keyward-test-%d.slice", os.Getpid()))
	unitName := "payments-test.service"
	leaf := filepath.Join(slice, unitName, "payments.service") // a delegated, spoofed name
	if err := os.MkdirAll(leaf, 0o755); err != nil {
		t.Skipf("cannot create a cgroup (%v): skipping the real-unit case", err)
	}
	t.Cleanup(func() {
		os.Remove(leaf)
		os.Remove(filepath.Dir(leaf))
		os.Remove(slice)
	})
	dir, err := os.Open(leaf)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()

	l, path := anyoneListener(t)
	cmd, _ := clientInCgroup(t, path, int(dir.Fd()))
	c := acceptOne(t, l)
	p, err := PeerOf(c)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", cmd.Process.Pid))
	if p.Unit != unitName || !p.PIDFDVerified || p.UID != 12345 {
		t.Errorf("PeerOf = %+v, want unit %q verified (cgroup %q)", p, unitName, data)
	}
	if !strings.Contains(p.String(), "unit="+unitName) {
		t.Errorf("String() = %q", p.String())
	}
	c.Close()
	cmd.Wait()
}

// Without SO_PEERPIDFD (kernel < 6.5) the ids are still there and the unit is
// not guessed from /proc by PID.
func TestPeerOfWithoutPIDFD(t *testing.T) {
	saved := peerPIDFD
	peerPIDFD = func(int) (int, error) { return -1, unix.ENOPROTOOPT }
	t.Cleanup(func() { peerPIDFD = saved })

	path := filepath.Join(t.TempDir(), "s.sock")
	l, err := Listen(Config{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	cc, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	p, err := PeerOf(acceptOne(t, l))
	if err != nil {
		t.Fatal(err)
	}
	if p.UID != uint32(os.Getuid()) || p.PID != int32(os.Getpid()) || p.Unit != "" || p.PIDFDVerified {
		t.Errorf("PeerOf = %+v, want own uid/pid, no unit, not verified", p)
	}
}

func TestUnitFromCgroup(t *testing.T) {
	tests := []struct {
		name, file, want string
	}{
		{"service", "0::/system.slice/payments.service\n", "payments.service"},
		{"session scope", "0::/user.slice/user-1000.slice/session-3.scope\n", "session-3.scope"},
		{"root", "0::/\n", ""},
		{"below a scope", "0::/system.slice/docker-abc.scope/inner\n", "docker-abc.scope"},
		{"garbage", "not a cgroup file", ""},
		{"empty", "", ""},
		{"socket unit", "0::/system.slice/keyward.socket\n", "keyward.socket"},
		{"template instance", "0::/system.slice/system-getty.slice/getty@tty1.service\n", "getty@tty1.service"},
		{"nested slices", "0::/system.slice/app.slice/app-web.slice/web.service\n", "web.service"},
		// Names below a unit are the unit's to choose (Delegate=, systemd --user):
		// they never become the identity.
		{"user manager's service", "0::/user.slice/user-1000.slice/user@1000.service/app.slice/payments.service\n", "user@1000.service"},
		{"delegated spoof", "0::/system.slice/web.service/payments.service\n", "web.service"},
		{"not under slices", "0::/kubepods/pod1/payments.service\n", ""},
		{"other cgroup namespace", "0::/../../system.slice/payments.service\n", ""},
		{"deleted cgroup", "0::/system.slice/payments.service (deleted)\n", ""},
		{"slice only", "0::/system.slice\n", ""},
		{"bad chars", "0::/system.slice/pay ments.service\n", ""},
		{"suffix only", "0::/system.slice/.service\n", ""},
		{"relative", "0::system.slice/payments.service\n", ""},
		{"hybrid prefers v2",
			"12:name=systemd:/system.slice/old.service\n1:cpu:/\n0::/system.slice/payments.service\n", "payments.service"},
		{"v1 only", "3:cpu,cpuacct:/\n1:name=systemd:/system.slice/payments.service\n", "payments.service"},
		{"v1 no systemd", "3:cpu,cpuacct:/system.slice/payments.service\n", ""},
		{"colon in path", "0::/system.slice/a:b.service\n", "a:b.service"},
		{"this machine", "9:name=systemd:/\n4:memory:/process_api/x\n0::/\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := unitFromCgroupFile([]byte(tt.file)); got != tt.want {
				t.Errorf("unitFromCgroupFile(%q) = %q, want %q", tt.file, got, tt.want)
			}
		})
	}
}

func TestPeerString(t *testing.T) {
	p := Peer{UID: 1000, GID: 1000, PID: 42, Unit: "payments.service", Groups: []uint32{7}}
	if got, want := p.String(), "uid=1000 gid=1000 pid=42 unit=payments.service"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	p.Unit = ""
	if got, want := p.String(), "uid=1000 gid=1000 pid=42"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

func TestPeerOfNil(t *testing.T) {
	if _, err := PeerOf(nil); !errors.Is(err, ErrNotUnix) {
		t.Errorf("PeerOf(nil) error = %v, want ErrNotUnix", err)
	}
}

// pidfdSupported reports whether this kernel has SO_PEERPIDFD.
func pidfdSupported(t *testing.T) bool {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	fd, err := unix.GetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_PEERPIDFD)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}

// cgroup2Mount returns where the cgroup v2 hierarchy is mounted, or skips.
func cgroup2Mount(t *testing.T) string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Skip(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ... mount-point ... - fstype source options
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok || !strings.HasPrefix(post, "cgroup2 ") {
			continue
		}
		if fields := strings.Fields(pre); len(fields) >= 5 && fields[3] == "/" {
			return fields[4]
		}
	}
	t.Skip("no cgroup v2 hierarchy mounted")
	return ""
}

// clientInCgroup starts a holding client as uid 12345, born in the cgroup.
func clientInCgroup(t *testing.T, sock string, cgroupFD int) (*exec.Cmd, *strings.Builder) {
	t.Helper()
	cmd := newHelperCmd("hold", sock)
	out := new(strings.Builder)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential:  &syscall.Credential{Uid: 12345, Gid: 23456},
		UseCgroupFD: true,
		CgroupFD:    cgroupFD,
	}
	if err := cmd.Start(); err != nil {
		t.Skipf("cannot start a process in a cgroup (clone3 CLONE_INTO_CGROUP): %v", err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return cmd, out
}
