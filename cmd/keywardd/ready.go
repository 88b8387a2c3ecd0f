package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/keyward/keyward/internal/safepath"
	"github.com/keyward/keyward/internal/version"
)

// readyFile is --ready-file: written (0600, atomically: a temporary file in
// the same directory renamed over the path) once the socket is serving, so
// a script can wait for the file; removed when keywardd exits. It holds no
// secret: the socket path, the pid and the version, one "key=value" a line.
//
// The directory must pass internal/safepath's rule (only root and this
// user may change it or any directory above it), like the socket's, and is
// opened once: every later step (removing a stale file, creating the
// temporary file, the rename, the removal at exit) is relative to that
// descriptor and never follows a symlink at the file's name, so no one can
// point keywardd's writes or unlinks elsewhere.
type readyFile struct {
	path    string // as given, absolute, for messages
	name    string // the file's name in dir
	dir     *os.File
	written bool
}

// newReadyFile checks the file's directory and that the path is not a
// directory, and removes a file left by an earlier keywardd (a script must
// not take a stale file for this one's readiness).
func newReadyFile(path string) (*readyFile, error) {
	if path == "" {
		return nil, nil
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("--ready-file %s: %w", path, err)
	}
	real, err := safepath.CheckDir(filepath.Dir(abs), uint32(os.Geteuid()))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("--ready-file %s: its directory must exist", path)
	case err != nil:
		return nil, fmt.Errorf("--ready-file %s: %w", path, err)
	}
	dir, err := os.OpenFile(real, os.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("--ready-file %s: its directory: %w", path, err)
	}
	r := &readyFile{path: abs, name: filepath.Base(abs), dir: dir}
	if err := r.removeStale(); err != nil {
		dir.Close()
		return nil, err
	}
	return r, nil
}

// removeStale removes what an earlier keywardd left at the name (a file or
// a symlink, never what a symlink points to) and refuses a directory.
func (r *readyFile) removeStale() error {
	var st unix.Stat_t
	err := unix.Fstatat(int(r.dir.Fd()), r.name, &st, unix.AT_SYMLINK_NOFOLLOW)
	switch {
	case errors.Is(err, unix.ENOENT):
		return nil
	case err != nil:
		return fmt.Errorf("--ready-file: %w", err)
	case st.Mode&unix.S_IFMT == unix.S_IFDIR:
		return fmt.Errorf("--ready-file %s is a directory", r.path)
	}
	if err := unix.Unlinkat(int(r.dir.Fd()), r.name, 0); err != nil {
		return fmt.Errorf("--ready-file: removing the one an earlier keywardd left: %w", err)
	}
	return nil
}

// write creates the file; the rename makes it appear whole or not at all.
func (r *readyFile) write(socketPath string) error {
	dfd := int(r.dir.Fd())
	tmp := "." + r.name + ".tmp" + strconv.Itoa(os.Getpid())
	fd, err := unix.Openat(dfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("--ready-file: %w", err)
	}
	f := os.NewFile(uintptr(fd), tmp)
	_, err = fmt.Fprintf(f, "socket=%s\npid=%d\nversion=%s\n", socketPath, os.Getpid(), version.String())
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		// rename(2) replaces whatever is at the name, a symlink included,
		// without following it.
		err = unix.Renameat(dfd, tmp, dfd, r.name)
	}
	if err != nil {
		unix.Unlinkat(dfd, tmp, 0)
		return fmt.Errorf("--ready-file: %w", err)
	}
	r.written = true
	return nil
}

// remove deletes the file if this keywardd wrote it, and closes the
// directory.
func (r *readyFile) remove() {
	if r == nil {
		return
	}
	if r.written {
		unix.Unlinkat(int(r.dir.Fd()), r.name, 0)
	}
	r.dir.Close()
}

// readiness wires --ready-file into a run: ready is the daemon's Ready hook
// (it calls next, then writes the file; a file that cannot be written stops
// the daemon, since a script would wait for it for ever), and finish
// removes the file and turns that failure into exit 1.
type readiness struct {
	file   *readyFile
	cancel context.CancelFunc
	stderr io.Writer
	failed bool
}

func newReadiness(ctx context.Context, path string, stderr io.Writer) (context.Context, *readiness, error) {
	rf, err := newReadyFile(path)
	if err != nil {
		return ctx, nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	return ctx, &readiness{file: rf, cancel: cancel, stderr: stderr}, nil
}

// hook returns the Ready callback: next first (the dev banner), then the file.
func (r *readiness) hook(next func(string)) func(string) {
	return func(socketPath string) {
		if next != nil {
			next(socketPath)
		}
		if r.file == nil {
			return
		}
		if err := r.file.write(socketPath); err != nil {
			fmt.Fprintf(r.stderr, "keywardd: %v; stopping\n", err)
			r.failed = true
			r.cancel()
		}
	}
}

func (r *readiness) finish(code int) int {
	r.cancel()
	r.file.remove()
	if r.failed && code == exitOK {
		return exitFail
	}
	return code
}
