package systemdtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// bootTarget is the unit the guest boots to: sysinit and sockets, nothing
// of multi-user.
const bootTarget = "keyward-test.target"

const targetUnit = `[Unit]
Description=keyward test guest (sysinit and sockets)
Requires=sysinit.target
Wants=sockets.target
After=sysinit.target sockets.target
AllowIsolate=yes
`

// systemdBinary is the manager booted.
const systemdBinary = "/lib/systemd/systemd"

// File is a file staged into the guest before it boots.
type File struct {
	Data []byte
	Mode os.FileMode // 0644 when 0
	UID  int
	GID  int
}

// Options say what the guest holds beyond the host's files.
type Options struct {
	// Files by absolute guest path, written into the overlay's upper layer
	// (units go under /etc/systemd/system).
	Files map[string]File
	// Binds are host directories bound read-write at the same path.
	Binds []string
	// Mask are units linked to /dev/null (the host's services the guest
	// must not start).
	Mask []string
}

// Guest is a booted systemd. Its methods may be called from one test
// goroutine at a time.
type Guest struct {
	t       testing.TB
	inst    string
	cgroup  string
	cmd     *exec.Cmd
	done    chan struct{}
	console *os.File
	conLog  *bytes.Buffer
	conMu   sync.Mutex
}

// Supported returns why a guest cannot boot here, or nil: not root, no
// cgroup2 hierarchy, no systemd, no nsenter.
func Supported() error {
	if os.Geteuid() != 0 {
		return errors.New("booting systemd in namespaces needs root")
	}
	if _, err := cgroupRoot(); err != nil {
		return err
	}
	for _, p := range []string{systemdBinary, "/usr/bin/nsenter", "/usr/bin/setpriv"} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("%s: %w (Debian packages systemd, util-linux)", p, err)
		}
	}
	return nil
}

// cgroupRoot is the host's cgroup2 hierarchy: /sys/fs/cgroup, or on a
// hybrid layout /sys/fs/cgroup/unified.
func cgroupRoot() (string, error) {
	for _, r := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		var st unix.Statfs_t
		if unix.Statfs(r, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			return r, nil
		}
	}
	return "", errors.New("no cgroup2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified")
}

// Boot starts a guest and waits until its manager is running (or
// degraded); the test is skipped when Supported says the machine cannot,
// unless CI is set, and the guest is powered off when the test ends.
func Boot(t testing.TB, opts Options) *Guest {
	t.Helper()
	if err := Supported(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("cannot boot systemd here: %v", err)
		}
		t.Skipf("cannot boot systemd here: %v", err)
	}
	g := &Guest{t: t, done: make(chan struct{}), conLog: &bytes.Buffer{}}
	if err := g.start(opts); err != nil {
		g.teardown()
		t.Fatalf("boot systemd: %v", err)
	}
	t.Cleanup(g.teardown)
	if err := g.waitRunning(60 * time.Second); err != nil {
		t.Fatalf("boot systemd: %v\nconsole:\n%s", err, g.Console())
	}
	return g
}

func (g *Guest) start(opts Options) error {
	inst, err := os.MkdirTemp("", "keyward-systemd-")
	if err != nil {
		return err
	}
	g.inst = inst
	for _, d := range []string{"ovl", "root", "stage"} {
		if err := os.Mkdir(filepath.Join(inst, d), 0o755); err != nil {
			return err
		}
	}
	if err := stage(filepath.Join(inst, "stage"), opts); err != nil {
		return err
	}
	root, err := cgroupRoot()
	if err != nil {
		return err
	}
	g.cgroup = filepath.Join(root, "keyward-test-"+randHex(6))
	if err := os.Mkdir(g.cgroup, 0o755); err != nil {
		return fmt.Errorf("guest cgroup: %w", err)
	}
	return g.launch(opts)
}

// stage writes the guest's own files: the boot target, the units masked,
// an empty tmp.conf (systemd-tmpfiles would hide the host's /tmp) and opts.Files.
func stage(dir string, opts Options) error {
	files := map[string]File{
		"/etc/systemd/system/" + bootTarget: {Data: []byte(targetUnit)},
		"/etc/tmpfiles.d/tmp.conf":          {},
	}
	for p, f := range opts.Files {
		files[p] = f
	}
	for p, f := range files {
		out := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			return err
		}
		mode := f.Mode
		if mode == 0 {
			mode = 0o644
		}
		if err := os.WriteFile(out, f.Data, mode); err != nil {
			return err
		}
		if err := os.Chmod(out, mode); err != nil {
			return err
		}
		if err := os.Chown(out, f.UID, f.GID); err != nil {
			return err
		}
	}
	for _, u := range opts.Mask {
		out := filepath.Join(dir, "etc/systemd/system", u)
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			return err
		}
		if err := os.Symlink("/dev/null", out); err != nil {
			return err
		}
	}
	return nil
}

// launch starts this binary as the guest's first process, in new
// namespaces, in the guest's cgroup (its cgroup namespace's root), with a
// pseudo-terminal as its console.
func (g *Guest) launch(opts Options) error {
	master, slave, err := openPTY()
	if err != nil {
		return err
	}
	defer slave.Close()
	g.console = master
	cg, err := os.Open(g.cgroup)
	if err != nil {
		return err
	}
	defer cg.Close()
	g.cmd = exec.Command("/proc/self/exe")
	g.cmd.Env = []string{initEnv + "=" + g.inst, initEnv + "_BINDS=" + strings.Join(opts.Binds, " ")}
	g.cmd.Stdin, g.cmd.Stdout, g.cmd.Stderr = slave, slave, slave
	g.cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC |
			unix.CLONE_NEWNET | unix.CLONE_NEWCGROUP,
		UseCgroupFD: true, CgroupFD: int(cg.Fd()),
		Setsid: true, Setctty: true, Ctty: 0,
		Pdeathsig: syscall.SIGKILL,
	}
	if err := g.cmd.Start(); err != nil {
		return fmt.Errorf("start the guest's init: %w", err)
	}
	go g.drainConsole()
	go func() { g.cmd.Wait(); close(g.done) }()
	return nil
}

// drainConsole keeps the guest's console from blocking and keeps what it said.
func (g *Guest) drainConsole() {
	buf := make([]byte, 32<<10)
	for {
		n, err := g.console.Read(buf)
		g.conMu.Lock()
		if g.conLog.Len() < 4<<20 {
			g.conLog.Write(bytes.ReplaceAll(buf[:n], []byte("\r"), nil))
		}
		g.conMu.Unlock()
		if err != nil {
			return
		}
	}
}

// Console is what the guest wrote to its console so far.
func (g *Guest) Console() string {
	g.conMu.Lock()
	defer g.conMu.Unlock()
	return g.conLog.String()
}

// PID is the host's PID of the guest's systemd.
func (g *Guest) PID() int { return g.cmd.Process.Pid }

// Path is a guest path as the host sees it (through /proc/PID/root).
func (g *Guest) Path(p string) string {
	return filepath.Join("/proc", strconv.Itoa(g.PID()), "root", p)
}

// waitRunning waits for the manager's private socket, then for the system
// to be up.
func (g *Guest) waitRunning(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		select {
		case <-g.done:
			return fmt.Errorf("the guest's init exited: %v", g.cmd.ProcessState)
		default:
		}
		if fi, err := os.Stat(g.Path("/run/systemd/private")); err == nil && fi.Mode()&os.ModeSocket != 0 {
			break
		}
		if time.Now().After(deadline) {
			return errors.New("no /run/systemd/private")
		}
		time.Sleep(50 * time.Millisecond)
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	out, _ := g.RunContext(ctx, nil, "systemctl", "is-system-running", "--wait")
	if s := strings.TrimSpace(out); s != "running" && s != "degraded" {
		return fmt.Errorf("system state %q", s)
	}
	return nil
}

// Run runs argv in the guest (every namespace of its init, its root,
// the bounding set of the guest) with stdin and returns its output
// (stdout and stderr) and error. It is ended after 60 s.
func (g *Guest) Run(stdin []byte, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return g.RunContext(ctx, stdin, argv...)
}

// RunContext is Run, ended when ctx is.
func (g *Guest) RunContext(ctx context.Context, stdin []byte, argv ...string) (string, error) {
	args := append([]string{"-t", strconv.Itoa(g.PID()), "-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w",
		"/usr/bin/setpriv", "--bounding-set", dropCapsArg}, argv...)
	cmd := exec.CommandContext(ctx, "/usr/bin/nsenter", args...)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_PAGER=cat",
		"SYSTEMD_COLORS=0", "LANG=C.UTF-8", "HOME=/root"}
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// Killed with its process group: nsenter's child must not outlive it
	// (shutdown freezes the guest, and nsenter would never reap it).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	return out.String(), err
}

// Sh runs a shell script in the guest; a failure fails t (the test or
// subtest running it).
func (g *Guest) Sh(t testing.TB, script string) string {
	t.Helper()
	out, err := g.Run(nil, "/bin/sh", "-ec", script)
	if err != nil {
		t.Fatalf("in the guest: %s: %v\n%s", script, err, out)
	}
	return out
}

// sigPoweroff is SIGRTMIN+4: systemd powers off.
const sigPoweroff = syscall.Signal(34 + 4)

// teardown powers the guest off (killed after 30 s) and removes its cgroup
// and files.
func (g *Guest) teardown() {
	if g.cmd != nil && g.cmd.Process != nil {
		g.cmd.Process.Signal(sigPoweroff)
		select {
		case <-g.done:
		case <-time.After(30 * time.Second):
			g.t.Logf("systemdtest: the guest did not power off within 30 s: killed")
			os.WriteFile(filepath.Join(g.cgroup, "cgroup.kill"), []byte("1"), 0)
			g.cmd.Process.Kill()
			<-g.done
		}
	}
	if g.console != nil {
		g.console.Close()
	}
	if g.cgroup != "" {
		removeCgroup(g.cgroup)
	}
	if g.inst != "" {
		os.RemoveAll(g.inst)
	}
}

// removeCgroup removes a cgroup subtree, killing what is left in it.
func removeCgroup(dir string) {
	for range 50 {
		var dirs []string
		filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			unix.Rmdir(dirs[i])
		}
		if _, err := os.Stat(dir); err != nil {
			return
		}
		os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
		time.Sleep(100 * time.Millisecond)
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// hostServices are services of this machine's image that a test guest has
// no use for.
var hostServices = []string{"pcscd.socket", "systemd-timesyncd.service", "postgresql.service"}

// HostServices returns the units a guest should mask (Options.Mask).
func HostServices() []string { return append([]string(nil), hostServices...) }
