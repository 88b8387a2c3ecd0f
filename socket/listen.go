package socket

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keyward/keyward/internal/safepath"

	"github.com/keyward/keyward/internal/osuser"
)

// Config describes a socket that keyward binds itself (not socket-activated).
type Config struct {
	// Path is the socket path, e.g. /run/keyward/keyward.sock.
	Path string
	// Group is the group name or numeric GID whose members may connect. ""
	// keeps the daemon's GID.
	Group string
	// Mode is the socket's permission bits, 0660 when zero. Connecting needs
	// write permission, so 0640 would lock the group out.
	Mode os.FileMode
}

// umaskMu serialises Listen's umask change within the process. The umask is
// process-wide, so other goroutines creating files during a bind get 0777&^Mode
// as their umask too: call Listen at start-up, before such work begins.
var umaskMu sync.Mutex

// staleDialTimeout bounds the probe of an existing socket file.
const staleDialTimeout = 2 * time.Second

// Listen binds a socket that this process owns, in this order:
//
//  1. The directory: if missing, created with mode 0750 and, with Group, owned
//     by that group (members must be able to traverse it); missing parents are
//     created 0755. An existing directory is left alone: it belongs to
//     RuntimeDirectory= or tmpfiles.d.
//  2. The directory and every one above it must be safe (internal/safepath):
//     owned by root or this process's uid, the directory itself writable by
//     nobody else, the ones above writable by others only if sticky (/tmp).
//     Otherwise Listen fails with ErrUnsafeDir: whoever may change a
//     directory on the path could move the socket aside and answer clients
//     in the daemon's place, or swap a file for a symlink to one we would
//     then change.
//  3. flock(Path+".lock", LOCK_EX|LOCK_NB, opened O_NOFOLLOW): a second
//     daemon fails with ErrInUse here. The lock file is never removed;
//     deleting it would let two processes lock different inodes.
//  4. A leftover socket file is removed only if nothing accepts on it (dialing
//     is refused). A live socket gives ErrInUse; a file that is not a socket is
//     an error and is left in place.
//  5. bind in a fresh 0700 directory beside Path, with umask 0777&^Mode
//     (0117 by default), then chown to Group and chmod to Mode there, where no
//     other user can swap the socket for a symlink; then link(2) it to Path,
//     which never replaces nor follows anything already at Path, and remove
//     the private directory. (On Linux, fchmod on a socket's fd does not
//     change its file, and fchmodat's AT_SYMLINK_NOFOLLOW needs Linux 6.6.)
//
// Closing the listener removes the socket file, then releases the lock.
func Listen(cfg Config) (net.Listener, error) {
	if cfg.Path == "" {
		return nil, errors.New("socket: listen: empty path")
	}
	path := filepath.Clean(cfg.Path)
	mode := cfg.Mode
	if mode == 0 {
		mode = 0o660
	}
	if mode&^os.ModePerm != 0 {
		return nil, fmt.Errorf("socket: listen %s: mode %v has bits other than permissions", path, mode)
	}
	gid := -1
	if cfg.Group != "" {
		g, err := lookupGroup(cfg.Group)
		if err != nil {
			return nil, fmt.Errorf("socket: listen %s: %w", path, err)
		}
		gid = g
	}
	if err := ensureDir(filepath.Dir(path), gid); err != nil {
		return nil, fmt.Errorf("socket: listen %s: %w", path, err)
	}
	if _, err := safepath.CheckDir(filepath.Dir(path), uint32(os.Geteuid())); err != nil {
		return nil, fmt.Errorf("socket: listen %s: %w: %w", path, ErrUnsafeDir, err)
	}
	lock, err := lockPath(path)
	if err != nil {
		return nil, err
	}
	ul, err := bindLocked(path, gid, mode)
	if err != nil {
		lock.Close()
		return nil, err
	}
	return &ownedListener{UnixListener: ul, path: path, lock: lock}, nil
}

// testHookBound, when set by a test, runs after bind and before the socket's
// group and mode are set; it gets the path being set up.
var testHookBound func(path string)

func bindLocked(path string, gid int, mode os.FileMode) (*net.UnixListener, error) {
	if err := removeStale(path); err != nil {
		return nil, err
	}
	private, err := os.MkdirTemp(filepath.Dir(path), ".kwb")
	if err != nil {
		return nil, fmt.Errorf("socket: listen %s: %w", path, err)
	}
	defer os.RemoveAll(private)
	tmp := filepath.Join(private, "s")
	if max := len(unix.RawSockaddrUnix{}.Path) - 1; len(tmp) > max {
		return nil, fmt.Errorf("socket: listen %s: the path %s used while binding is longer than a socket path's %d bytes: use a shorter path", path, tmp, max)
	}
	umaskMu.Lock()
	old := unix.Umask(int(0o777 &^ mode))
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	unix.Umask(old)
	umaskMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("socket: listen %s: %w", path, err)
	}
	ul.SetUnlinkOnClose(false)
	if err := placeSocket(tmp, path, gid, mode); err != nil {
		ul.Close()
		return nil, fmt.Errorf("socket: listen %s: %w", path, err)
	}
	return ul, nil
}

// placeSocket sets the group and mode of the socket bound at tmp, in a
// directory only this process's uid may change, and links it to path.
func placeSocket(tmp, path string, gid int, mode os.FileMode) error {
	if testHookBound != nil {
		testHookBound(path)
	}
	if gid >= 0 {
		if err := os.Lchown(tmp, -1, gid); err != nil {
			return fmt.Errorf("set group: %w", err)
		}
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return err
	}
	if err := os.Link(tmp, path); err != nil {
		return fmt.Errorf("something appeared at the socket path while binding: %w", err)
	}
	return nil
}

func lookupGroup(s string) (int, error) { return osuser.LookupGroup(s) }

func ensureDir(dir string, gid int) error { return makeDir(dir, 0o750, gid) }

// makeDir creates dir with mode (and group gid, when >= 0) if it is
// missing; an existing directory is never changed. Missing parents are
// created 0755 (the group must be able to pass them). Modes are set
// explicitly: Mkdir's are filtered by the umask. Listen checks the result
// with safepath afterwards.
func makeDir(dir string, mode os.FileMode, gid int) error {
	fi, err := os.Stat(dir)
	if err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%s is not a directory", dir)
		}
		return nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if parent := filepath.Dir(dir); parent != dir {
		if err := makeDir(parent, 0o755, -1); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, mode); err != nil {
		if errors.Is(err, os.ErrExist) {
			return makeDir(dir, mode, gid) // created concurrently: not ours
		}
		return err
	}
	// Through a descriptor of the directory just made: had it been swapped
	// for a symlink, the open fails instead of changing the target.
	f, err := os.OpenFile(dir, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Chmod(mode); err != nil {
		return err
	}
	if gid >= 0 {
		if err := f.Chown(-1, gid); err != nil {
			return fmt.Errorf("set group of %s: %w", dir, err)
		}
	}
	return nil
}

func lockPath(path string) (*os.File, error) {
	name := path + ".lock"
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("socket: listen %s: lock: %w", path, err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("socket: %s: %w: %s is locked by another process", path, ErrInUse, name)
		}
		return nil, fmt.Errorf("socket: listen %s: lock %s: %w", path, name, err)
	}
	return f, nil
}

// removeStale removes path only if it is a socket nobody accepts on.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("socket: listen %s: %w", path, err)
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("socket: listen %s: exists and is not a socket (%v); not removing it", path, fi.Mode().Type())
	}
	c, err := net.DialTimeout("unix", path, staleDialTimeout)
	switch {
	case err == nil:
		c.Close()
		return fmt.Errorf("socket: %s: %w: another process accepts connections on it", path, ErrInUse)
	case errors.Is(err, syscall.ENOENT):
		return nil
	case errors.Is(err, syscall.EAGAIN):
		// A full backlog: someone listens but is not keeping up.
		return fmt.Errorf("socket: %s: %w: another process listens on it", path, ErrInUse)
	case !errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("socket: listen %s: cannot tell whether the existing socket is in use: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("socket: listen %s: remove stale socket: %w", path, err)
	}
	return nil
}

// ownedListener is a socket bound by Listen. Accept returns *net.UnixConn.
type ownedListener struct {
	*net.UnixListener
	path string
	lock *os.File

	once sync.Once
	err  error
}

// Close unlinks the socket file while still holding the lock, so it can never
// delete the socket of a successor, then releases the lock.
func (l *ownedListener) Close() error {
	l.once.Do(func() {
		l.err = l.UnixListener.Close()
		if err := os.Remove(l.path); err != nil && !errors.Is(err, os.ErrNotExist) && l.err == nil {
			l.err = err
		}
		if err := l.lock.Close(); l.err == nil {
			l.err = err
		}
	})
	return l.err
}

// Addr is the socket's path (the kernel still names the private path it was
// bound at).
func (l *ownedListener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

// LookupGroup resolves a socket group given by name or number, as Listen
// does; --check-config uses it so a missing group fails before start.
func LookupGroup(s string) (int, error) { return lookupGroup(s) }
