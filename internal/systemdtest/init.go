package systemdtest

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// initEnv names the instance directory when this binary is the guest's
// first process.
const initEnv = "KEYWARD_SYSTEMDTEST_INIT"

func init() {
	if inst := os.Getenv(initEnv); inst != "" {
		// The bounding set is per thread: drop it on the thread that execs.
		runtime.LockOSThread()
		err := guestInit(inst)
		fmt.Fprintf(os.Stderr, "systemdtest: guest init: %v\n", err)
		os.Exit(1)
	}
}

// dropCaps leave the guest's bounding set: what a container must not do to
// the host (load modules, set the clock, raw I/O, the kernel log, MAC and
// audit configuration, accounting, wake alarms).
var dropCaps = []uintptr{unix.CAP_SYS_MODULE, unix.CAP_SYS_TIME, unix.CAP_SYS_RAWIO, unix.CAP_SYSLOG,
	unix.CAP_MAC_ADMIN, unix.CAP_MAC_OVERRIDE, unix.CAP_AUDIT_CONTROL, unix.CAP_SYS_PACCT,
	unix.CAP_WAKE_ALARM, unix.CAP_BLOCK_SUSPEND}

// dropCapsArg is dropCaps for setpriv --bounding-set.
const dropCapsArg = "-sys_module,-sys_time,-sys_rawio,-syslog,-mac_admin,-mac_override,-audit_control,-sys_pacct,-wake_alarm,-block_suspend"

// guestInit runs as PID 1 of the new namespaces: it builds the guest's
// root, pivots into it and execs systemd. It returns only on failure.
func guestInit(inst string) error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make / private: %w", err)
	}
	console, err := os.Readlink("/proc/self/fd/0")
	if err != nil {
		return err
	}
	root := filepath.Join(inst, "root")
	if err := overlayRoot(inst, root); err != nil {
		return err
	}
	if err := mountAPI(root, console); err != nil {
		return err
	}
	if err := bindHost(root, os.Getenv(initEnv+"_BINDS")); err != nil {
		return err
	}
	if err := pivot(root); err != nil {
		return err
	}
	// As systemd-nspawn does; systemd itself skips it in a container.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SHARED, ""); err != nil {
		return fmt.Errorf("make / shared: %w", err)
	}
	for _, c := range dropCaps {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, c, 0, 0, 0); err != nil {
			return fmt.Errorf("drop capability %d: %w", c, err)
		}
	}
	env := []string{"container=keyward-test", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	return unix.Exec("/lib/systemd/systemd", []string{"systemd", "--system", "--unit=" + bootTarget, "--show-status=no"}, env)
}

// overlayRoot mounts the host's "/" read-only under a tmpfs upper layer
// at root, with the staged files copied into the upper layer.
func overlayRoot(inst, root string) error {
	ovl := filepath.Join(inst, "ovl")
	if err := unix.Mount("keyward-test-ovl", ovl, "tmpfs", 0, "mode=755"); err != nil {
		return fmt.Errorf("tmpfs for the overlay: %w", err)
	}
	upper, work := filepath.Join(ovl, "upper"), filepath.Join(ovl, "work")
	for _, d := range []string{upper, work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
	}
	if err := copyTree(filepath.Join(inst, "stage"), upper); err != nil {
		return fmt.Errorf("stage the guest's files: %w", err)
	}
	opts := "lowerdir=/,upperdir=" + upper + ",workdir=" + work
	if err := unix.Mount("keyward-test-root", root, "overlay", 0, opts); err != nil {
		return fmt.Errorf("overlay root: %w", err)
	}
	return nil
}

type mnt struct {
	src, dst, fstype string
	flags            uintptr
	data             string
}

// mountAPI mounts /proc, /sys, the cgroup2 tree, /dev and /run in root.
func mountAPI(root, console string) error {
	const nosuid, nodev, noexec = unix.MS_NOSUID, unix.MS_NODEV, unix.MS_NOEXEC
	for _, m := range []mnt{
		{"proc", "proc", "proc", nosuid | nodev | noexec, ""},
		{"sysfs", "sys", "sysfs", unix.MS_RDONLY | nosuid | nodev | noexec, ""},
		{"cgroup2", "sys/fs/cgroup", "cgroup2", nosuid | nodev | noexec, ""},
		{"keyward-test-dev", "dev", "tmpfs", nosuid, "mode=755,size=4m"},
		{"keyward-test-run", "run", "tmpfs", nosuid | nodev, "mode=755"},
	} {
		if err := unix.Mount(m.src, filepath.Join(root, m.dst), m.fstype, m.flags, m.data); err != nil {
			return fmt.Errorf("mount %s: %w", m.dst, err)
		}
	}
	for _, p := range []string{"proc/sys", "proc/sysrq-trigger"} {
		if _, err := os.Stat(filepath.Join(root, p)); err != nil {
			continue // a kernel without it
		}
		if err := bindRO(filepath.Join(root, p)); err != nil {
			return err
		}
	}
	return makeDev(filepath.Join(root, "dev"), console)
}

func bindRO(p string) error {
	if err := unix.Mount(p, p, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s: %w", p, err)
	}
	if err := unix.Mount("", p, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
		return fmt.Errorf("remount %s read-only: %w", p, err)
	}
	return nil
}

// makeDev fills the guest's /dev: the harmless character devices, its own
// devpts, shared memory, the usual links, and console as /dev/console.
func makeDev(dev, console string) error {
	for _, d := range []struct {
		name         string
		major, minor uint32
	}{{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0}} {
		p := filepath.Join(dev, d.name)
		if err := unix.Mknod(p, unix.S_IFCHR|0o666, int(unix.Mkdev(d.major, d.minor))); err != nil {
			return fmt.Errorf("mknod %s: %w", p, err)
		}
		os.Chmod(p, 0o666)
	}
	for _, d := range []string{"pts", "shm"} {
		if err := os.Mkdir(filepath.Join(dev, d), 0o755); err != nil {
			return err
		}
	}
	if err := unix.Mount("devpts", filepath.Join(dev, "pts"), "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620,gid=5"); err != nil {
		return fmt.Errorf("devpts: %w", err)
	}
	if err := unix.Mount("keyward-test-shm", filepath.Join(dev, "shm"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777"); err != nil {
		return fmt.Errorf("/dev/shm: %w", err)
	}
	for name, target := range map[string]string{"ptmx": "pts/ptmx", "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0",
		"stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"} {
		if err := os.Symlink(target, filepath.Join(dev, name)); err != nil {
			return err
		}
	}
	c := filepath.Join(dev, "console")
	if err := os.WriteFile(c, nil, 0o600); err != nil {
		return err
	}
	if err := unix.Mount(console, c, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind the console: %w", err)
	}
	return nil
}

// bindHost binds the host directories in list (space-separated) at the
// same paths in the guest, read-write.
func bindHost(root, list string) error {
	for _, d := range strings.Fields(list) {
		p := filepath.Join(root, d)
		if err := os.MkdirAll(p, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(d, p, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s: %w", d, err)
		}
	}
	return nil
}

// pivot makes root the root of this mount namespace and drops the old one.
func pivot(root string) error {
	old := filepath.Join(root, "run", "keyward-test-oldroot")
	if err := os.Mkdir(old, 0o700); err != nil {
		return err
	}
	if err := unix.Chdir(root); err != nil {
		return err
	}
	if err := unix.PivotRoot(".", "run/keyward-test-oldroot"); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	if err := unix.Unmount("/run/keyward-test-oldroot", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach the old root: %w", err)
	}
	return os.Remove("/run/keyward-test-oldroot")
}

// copyTree copies src's files, directories and symlinks into dst,
// keeping modes and owners.
func copyTree(src, dst string) error {
	return filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		out := filepath.Join(dst, rel)
		st := fi.Sys().(*syscall.Stat_t)
		switch {
		case fi.IsDir():
			if rel != "." {
				if err := os.Mkdir(out, fi.Mode().Perm()); err != nil {
					return err
				}
			}
		case fi.Mode()&os.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := os.Symlink(t, out); err != nil {
				return err
			}
		default:
			if err := copyFile(p, out, fi.Mode().Perm()); err != nil {
				return err
			}
		}
		if err := os.Lchown(out, int(st.Uid), int(st.Gid)); err != nil {
			return err
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			return os.Chmod(out, fi.Mode()&(os.ModePerm|os.ModeSetuid|os.ModeSetgid|os.ModeSticky))
		}
		return nil
	})
}

func copyFile(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
