package socket

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func mustDial(t *testing.T, path string) {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	c.Close()
}

func statT(t *testing.T, path string) *syscall.Stat_t {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t)
}

func TestListenCreatesDirAndSocket(t *testing.T) {
	requireRoot(t)
	dir := filepath.Join(sharedDir(t), "run", "keyward")
	path := filepath.Join(dir, "keyward.sock")
	l, err := Listen(Config{Path: path, Group: "23456"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	if st := statT(t, filepath.Dir(dir)); st.Mode&0o7777 != 0o755 {
		t.Errorf("created parent mode %o, want 0755", st.Mode&0o7777)
	}
	if st := statT(t, dir); st.Mode&0o7777 != 0o750 || st.Gid != 23456 {
		t.Errorf("dir mode %o gid %d, want 0750 gid 23456", st.Mode&0o7777, st.Gid)
	}
	st := statT(t, path)
	if st.Mode&syscall.S_IFMT != syscall.S_IFSOCK || st.Mode&0o7777 != 0o660 || st.Gid != 23456 {
		t.Errorf("socket mode %o gid %d, want socket 0660 gid 23456", st.Mode, st.Gid)
	}
	if _, ok := l.Addr().(*net.UnixAddr); !ok {
		t.Errorf("Addr() = %T", l.Addr())
	}

	// A member of the group gets through the 0750 directory and the 0660 socket.
	go func() {
		if c, err := l.Accept(); err == nil {
			c.Close()
		}
	}()
	if out, code := runClient(t, "dial", path, &syscall.Credential{Uid: 12345, Gid: 11111, Groups: []uint32{23456}}); code != 0 {
		t.Errorf("group member: exit %d: %s", code, out)
	}
}

// Linux checks write permission on the socket file at connect: the group's
// members may connect, others may not (EACCES), even with the directory open.
func TestListenGroupGatesConnect(t *testing.T) {
	requireRoot(t)
	path := filepath.Join(sharedDir(t), "keyward.sock") // existing 0755 dir: only the socket gates
	l, err := Listen(Config{Path: path, Group: "23456"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	tests := []struct {
		name     string
		cred     *syscall.Credential
		wantCode int
	}{
		{"primary group", &syscall.Credential{Uid: 12345, Gid: 23456}, 0},
		{"supplementary group", &syscall.Credential{Uid: 12345, Gid: 11111, Groups: []uint32{34567, 23456}}, 0},
		{"not in group", &syscall.Credential{Uid: 12346, Gid: 11111, Groups: []uint32{34567}}, 13},
		{"root", nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, code := runClient(t, "dial", path, tt.cred)
			if code != tt.wantCode {
				t.Errorf("exit %d (%s), want %d", code, strings.TrimSpace(out), tt.wantCode)
			}
		})
	}
}

func TestListenExistingDirUntouched(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	l, err := Listen(Config{Path: filepath.Join(dir, "s.sock")})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if st := statT(t, dir); st.Mode&0o7777 != 0o711 {
		t.Errorf("existing dir mode changed to %o", st.Mode&0o7777)
	}
}

func TestListenSecondInstance(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keyward.sock")
	l1, err := Listen(Config{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer l1.Close()
	go func() {
		for {
			c, err := l1.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()

	l2, err := Listen(Config{Path: path})
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), path) {
		t.Fatalf("second Listen: %v, want ErrInUse naming %s", err, path)
	}
	if l2 != nil {
		t.Errorf("second Listen returned a listener")
	}
	// The live socket is still there and still served.
	mustDial(t, path)

	// Close removes the socket and frees the lock for the next daemon.
	if err := l1.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l1.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket after Close: %v", err)
	}
	l3, err := Listen(Config{Path: path})
	if err != nil {
		t.Fatalf("Listen after Close: %v", err)
	}
	l3.Close()
}

// A socket someone else serves (no lock: another program, an older keyward) is
// not ours to remove.
func TestListenLiveForeignSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keyward.sock")
	foreign, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer foreign.Close()
	if _, err := Listen(Config{Path: path}); !errors.Is(err, ErrInUse) {
		t.Fatalf("Listen over a live socket: %v, want ErrInUse", err)
	}
	mustDial(t, path)
}

func TestListenReplacesStaleSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keyward.sock")
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("stale socket not left behind: %v", err)
	}

	l, err := Listen(Config{Path: path})
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	defer l.Close()
	go func() {
		if c, err := l.Accept(); err == nil {
			c.Close()
		}
	}()
	mustDial(t, path)
}

func TestListenRefusesNonSocket(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name  string
		setup func(path string) error
	}{
		{"regular file", func(p string) error { return os.WriteFile(p, []byte("keep me"), 0o600) }},
		{"directory", func(p string) error { return os.Mkdir(p, 0o700) }},
		{"symlink", func(p string) error { return os.Symlink("/nonexistent", p) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-"))
			if err := tt.setup(path); err != nil {
				t.Fatal(err)
			}
			before, _ := os.Lstat(path)
			l, err := Listen(Config{Path: path})
			if err == nil {
				l.Close()
				t.Fatal("Listen succeeded")
			}
			if errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "not a socket") {
				t.Errorf("error = %v, want a not-a-socket error", err)
			}
			after, err := os.Lstat(path)
			if err != nil || !os.SameFile(before, after) {
				t.Errorf("%s was touched: %v", path, err)
			}
		})
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "regular-file")); string(b) != "keep me" {
		t.Errorf("regular file content = %q", b)
	}
}

func TestListenConfigErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		cfg  Config
	}{
		{"empty path", Config{}},
		{"unknown group", Config{Path: filepath.Join(dir, "a.sock"), Group: "no-such-group-keyward"}},
		{"mode with type bits", Config{Path: filepath.Join(dir, "b.sock"), Mode: os.ModeSetuid | 0o660}},
		{"parent is a file", Config{Path: filepath.Join(dir, "file", "c.sock")}},
	}
	os.WriteFile(filepath.Join(dir, "file"), nil, 0o600)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := Listen(tt.cfg)
			if err == nil {
				l.Close()
				t.Fatal("Listen succeeded")
			}
		})
	}
}

func TestListenModeAndUmask(t *testing.T) {
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)
	path := filepath.Join(t.TempDir(), "s.sock")
	l, err := Listen(Config{Path: path, Mode: 0o600})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if st := statT(t, path); st.Mode&0o7777 != 0o600 {
		t.Errorf("socket mode %o, want 0600", st.Mode&0o7777)
	}
	if got := syscall.Umask(0o022); got != 0o022 {
		t.Errorf("umask after Listen = %o, want it restored to 022", got)
	}
}

// TestListenRefusesUnsafeDir: a socket directory that someone other than root
// and the daemon can change, or one above it that they can change without the
// sticky bit, is refused before anything is created in it.
func TestListenRefusesUnsafeDir(t *testing.T) {
	requireRoot(t)
	const other = 4242
	tests := []struct {
		name    string
		setup   func(t *testing.T, base string) string // returns the socket dir
		wantErr error
	}{
		{"private dir", func(t *testing.T, b string) string { return mkdirT(t, b, "d", 0o750, 0) }, nil},
		{"world-writable dir", func(t *testing.T, b string) string { return mkdirT(t, b, "d", 0o777, 0) }, ErrUnsafeDir},
		{"group-writable dir", func(t *testing.T, b string) string { return mkdirT(t, b, "d", 0o770, 0) }, ErrUnsafeDir},
		{"sticky /tmp-like dir", func(t *testing.T, b string) string { return mkdirT(t, b, "d", os.ModeSticky|0o777, 0) }, ErrUnsafeDir},
		{"dir owned by another uid", func(t *testing.T, b string) string { return mkdirT(t, b, "d", 0o700, other) }, ErrUnsafeDir},
		{"private dir in a sticky one", func(t *testing.T, b string) string {
			mkdirT(t, b, "tmp", os.ModeSticky|0o777, 0)
			return mkdirT(t, b, "tmp/d", 0o700, 0)
		}, nil},
		{"private dir in a world-writable one", func(t *testing.T, b string) string {
			mkdirT(t, b, "w", 0o777, 0)
			return mkdirT(t, b, "w/d", 0o700, 0)
		}, ErrUnsafeDir},
		{"private dir in another uid's", func(t *testing.T, b string) string {
			mkdirT(t, b, "home", 0o755, other)
			return mkdirT(t, b, "home/d", 0o700, 0)
		}, ErrUnsafeDir},
		{"missing dir in a world-writable one", func(t *testing.T, b string) string {
			mkdirT(t, b, "w", 0o777, 0)
			return filepath.Join(b, "w", "new")
		}, ErrUnsafeDir},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := tt.setup(t, t.TempDir())
			path := filepath.Join(dir, "keyward.sock")
			l, err := Listen(Config{Path: path})
			if err == nil {
				l.Close()
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Listen in %s: %v, want %v", dir, err, tt.wantErr)
			}
			if err != nil {
				if _, err := os.Lstat(path + ".lock"); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("the lock file was created in an unsafe directory: %v", err)
				}
			}
		})
	}
}

// TestListenNeverFollowsSymlink: if the socket path becomes a symlink after
// the bind (an attacker moved the socket aside), Listen neither changes the
// symlink's target nor serves on it.
func TestListenNeverFollowsSymlink(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keyward.sock")
	target := filepath.Join(dir, "victim")
	if err := os.WriteFile(target, []byte("root's file"), 0o644); err != nil {
		t.Fatal(err)
	}
	testHookBound = func(string) {
		os.Rename(path, path+".moved") // the bound socket, if it is at path
		if err := os.Symlink(target, path); err != nil {
			t.Error(err)
		}
	}
	defer func() { testHookBound = nil }()
	l, err := Listen(Config{Path: path, Mode: 0o666})
	if err == nil {
		l.Close()
		t.Error("Listen succeeded with a symlink at the socket path")
	}
	if st := statT(t, target); st.Mode&0o7777 != 0o644 {
		t.Errorf("the symlink's target changed mode to %04o", st.Mode&0o7777)
	}
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Type() != os.ModeSymlink {
		t.Errorf("the symlink was replaced: %v", err)
	}
}

// TestListenLeavesNoPrivateDir: the private directory the socket is bound
// in is gone once Listen returns, and Addr names the socket path.
func TestListenLeavesNoPrivateDir(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keyward.sock")
	l, err := Listen(Config{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	if got := l.Addr().String(); got != path {
		t.Errorf("Addr() = %s, want %s", got, path)
	}
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if strings.Join(names, ",") != "keyward.sock,keyward.sock.lock" {
		t.Errorf("directory holds %v", names)
	}
	go func() {
		if c, err := l.Accept(); err == nil {
			c.Close()
		}
	}()
	mustDial(t, path)
	l.Close()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left after Close: %v", err)
	}
}

func mkdirT(t *testing.T, base, rel string, mode os.FileMode, uid int) string {
	t.Helper()
	p := filepath.Join(base, rel)
	if err := os.Mkdir(p, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(p, uid, -1); err != nil {
		t.Fatal(err)
	}
	return p
}
