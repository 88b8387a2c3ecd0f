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

	"github.com/keyward/keyward/internal/version"
)

// readyFile is --ready-file: written (0600, atomically: a temporary file in
// the same directory renamed over the path) once the socket is serving, so
// a script can wait for the file; removed when keywardd exits. It holds no
// secret: the socket path, the pid and the version, one "key=value" a line.
type readyFile struct {
	path    string
	written bool
}

// newReadyFile checks that the file's directory exists and that the path
// is not a directory, and removes a file left by an earlier keywardd (a
// script must not take a stale file for this one's readiness).
func newReadyFile(path string) (*readyFile, error) {
	if path == "" {
		return nil, nil
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("--ready-file %s: %w", path, err)
	}
	if fi, err := os.Stat(filepath.Dir(abs)); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("--ready-file %s: its directory must exist", path)
	}
	fi, err := os.Lstat(abs)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("--ready-file: %w", err)
	case fi.IsDir():
		return nil, fmt.Errorf("--ready-file %s is a directory", path)
	default:
		if err := os.Remove(abs); err != nil {
			return nil, fmt.Errorf("--ready-file: removing the one an earlier keywardd left: %w", err)
		}
	}
	return &readyFile{path: abs}, nil
}

// write creates the file; the rename makes it appear whole or not at all.
func (r *readyFile) write(socketPath string) error {
	tmp := filepath.Join(filepath.Dir(r.path), "."+filepath.Base(r.path)+".tmp"+strconv.Itoa(os.Getpid()))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("--ready-file: %w", err)
	}
	_, err = fmt.Fprintf(f, "socket=%s\npid=%d\nversion=%s\n", socketPath, os.Getpid(), version.String())
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, r.path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("--ready-file: %w", err)
	}
	r.written = true
	return nil
}

// remove deletes the file if this keywardd wrote it.
func (r *readyFile) remove() {
	if r != nil && r.written {
		os.Remove(r.path)
	}
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
