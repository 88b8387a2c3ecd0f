package audit

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/keyward/keyward/internal/safepath"
)

// The log's directory is opened once, at Open, and checked: every file of
// the log is then opened, created and renamed relative to that descriptor
// with O_NOFOLLOW, so neither a symlink planted at a file's name nor the
// directory's path swapped afterwards can redirect a write (keywardd, often
// root, would otherwise truncate and write whatever file the link names).
// The path may go through symlinks up to the directory (a log directory
// linked to another disk): every directory and link on the way must be
// root's or this user's, and the directory reached is the one checked.

// openDir opens and checks the log's directory: a directory owned by this
// process's user or root that neither its group nor others may write.
func openDir(dir string) (*os.File, error) {
	// Every directory on the way, symlinks followed, must be one that only
	// root or this user can change: the owner of a parent could move the
	// log's directory away or put another in its place.
	if _, err := safepath.CheckDir(dir, uint32(os.Geteuid())); err != nil {
		return nil, fmt.Errorf("audit directory: %w: %w", err, ErrUnsafe)
	}
	d, err := os.OpenFile(dir, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("audit directory: %w", err)
	}
	fi, err := d.Stat()
	if err == nil {
		err = checkDir(dir, fi)
	}
	if err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

func checkDir(dir string, fi fs.FileInfo) error {
	uid, ok := ownerOf(fi)
	me := uint32(os.Geteuid())
	switch {
	case !fi.IsDir():
		return fmt.Errorf("audit directory %s is not a directory: %w", dir, ErrUnsafe)
	case !ok || (uid != me && uid != 0):
		return fmt.Errorf("audit directory %s is owned by uid %d, not by this process's uid %d or root: %w", dir, uid, me, ErrUnsafe)
	case fi.Mode().Perm()&0o022 != 0:
		return fmt.Errorf("audit directory %s has mode %04o: its group or others may write in it (want 0750 or 0700): %w",
			dir, fi.Mode().Perm(), ErrUnsafe)
	}
	return nil
}

// checkFile refuses a file of the log that is not a regular file owned by
// this process's user.
func checkFile(name string, fi fs.FileInfo) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s: no owner to check: %w", name, ErrUnsafe)
	}
	return checkStat(name, &unix.Stat_t{Mode: st.Mode, Uid: st.Uid})
}

func checkStat(name string, st *unix.Stat_t) error {
	me := uint32(os.Geteuid())
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		return fmt.Errorf("%s is not a regular file: %w", name, ErrUnsafe)
	case st.Uid != me:
		return fmt.Errorf("%s is owned by uid %d, not by this process's uid %d: %w", name, st.Uid, me, ErrUnsafe)
	}
	return nil
}

func ownerOf(fi fs.FileInfo) (uint32, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return st.Uid, true
}

// openAt opens name, a file of the log's directory d (named dirName in
// errors), never following a symlink, and checks that it is a regular file
// owned by this process's user. It opens non-blocking so that a FIFO planted
// there cannot hang it, and checks before anything is read or written.
func openAt(d *os.File, dirName, name string, flag int, perm fs.FileMode) (*os.File, error) {
	path := filepath.Join(dirName, name)
	fd, err := unix.Openat(int(d.Fd()), name, flag|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, uint32(perm.Perm()))
	if errors.Is(err, unix.ELOOP) {
		return nil, fmt.Errorf("%s is a symbolic link: refused: %w", path, ErrUnsafe)
	}
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	var st unix.Stat_t
	err = unix.Fstat(fd, &st)
	if err != nil {
		err = &fs.PathError{Op: "stat", Path: path, Err: err}
	} else if err = checkStat(path, &st); err == nil {
		err = unix.SetNonblock(fd, false)
	}
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), path), nil
}

// readDirAt lists the directory d.
func readDirAt(d *os.File) ([]os.DirEntry, error) {
	fd, err := unix.Openat(int(d.Fd()), ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: d.Name(), Err: err}
	}
	f := os.NewFile(uintptr(fd), d.Name())
	defer f.Close()
	return f.ReadDir(-1)
}

// renameAt renames old to new in d without replacing new if it exists
// (whatever it is: a symlink planted there is left alone, as is its target).
func renameAt(d *os.File, old, new string) error {
	err := unix.Renameat2(int(d.Fd()), old, int(d.Fd()), new, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		// A file system without RENAME_NOREPLACE: check, then rename.
		// rename(2) follows no symlink; the window only matters to who may
		// write in the directory, which checkDir limits to its owner.
		var st unix.Stat_t
		if err = unix.Fstatat(int(d.Fd()), new, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
			err = unix.EEXIST
		} else if errors.Is(err, unix.ENOENT) {
			err = unix.Renameat(int(d.Fd()), old, int(d.Fd()), new)
		}
	}
	if err != nil {
		return &os.LinkError{Op: "rename", Old: filepath.Join(d.Name(), old), New: filepath.Join(d.Name(), new), Err: err}
	}
	return nil
}

// removeAt removes the file name from d.
func removeAt(d *os.File, name string) error {
	return unix.Unlinkat(int(d.Fd()), name, 0)
}
