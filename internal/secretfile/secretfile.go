// Package secretfile reads small secrets (PINs, auth values) from files that
// only their owner can read: a 0600/0400 file, or a systemd credential in
// $CREDENTIALS_DIRECTORY. Secrets never come from argv, the environment or a
// config file's text.
package secretfile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"github.com/keyward/keyward/internal/safepath"
)

// MaxSize bounds a secret file: a PIN is short, a larger file is a mistake.
const MaxSize = 4096

var (
	// ErrTooOpen: the file can be read by its group or others.
	ErrTooOpen = errors.New("secret file is readable by group or others (want mode 0600 or 0400)")
	// ErrOwner: the file belongs to a user other than root and this
	// process's, who could read or change the secret.
	ErrOwner = errors.New("secret file is owned by another user (want root or this process's user)")
	// ErrEmpty: the file holds nothing but white space.
	ErrEmpty = errors.New("secret file is empty")
	// ErrNoSource: no path was given and $CREDENTIALS_DIRECTORY is not set.
	ErrNoSource = errors.New("no secret file given and $CREDENTIALS_DIRECTORY is not set")
	// ErrUnusable: every error of Resolve and Read matches it, besides its
	// cause (fs.ErrNotExist, fs.ErrPermission, ErrTooOpen...): the secret
	// cannot be had from what the configuration names, and trying again
	// does not change that (keywardd exits with its configuration status).
	ErrUnusable = errors.New("secret unusable")
)

// unusable marks err as ErrUnusable without changing its text.
type unusable struct{ err error }

func (e unusable) Error() string   { return e.err.Error() }
func (e unusable) Unwrap() []error { return []error{e.err, ErrUnusable} }

func fail(err error) error { return unusable{err} }

// Resolve returns path, or $CREDENTIALS_DIRECTORY/name when path is empty.
func Resolve(path, name string) (string, error) {
	if path != "" {
		return path, nil
	}
	if dir := os.Getenv("CREDENTIALS_DIRECTORY"); dir != "" {
		return filepath.Join(dir, name), nil
	}
	return "", fail(fmt.Errorf("%s: %w", name, ErrNoSource))
}

// Read returns the secret in path with one trailing newline (and CR) removed.
// It opens path with O_NOFOLLOW and refuses a file that group or others may
// read (a POSIX ACL granting read to this process's user alone, as systemd
// gives credentials, is accepted), that another user than root and this
// process's owns (ErrOwner), that is not a regular file, or that is larger
// than MaxSize. The caller
// zeroes the result when done. Errors name the path, never the content.
func Read(path string) ([]byte, error) {
	b, err := read(path)
	if err != nil {
		return nil, fail(err)
	}
	return b, nil
}

func read(path string) ([]byte, error) {
	// The owner of a directory on the way could move the file away or put
	// another in its place: only root and this user may own them.
	if _, err := safepath.CheckDir(filepath.Dir(path), uint32(os.Geteuid())); err != nil {
		return nil, fmt.Errorf("secret file %s: %w", path, err)
	}
	// O_NONBLOCK: a FIFO put at the path must not hang the reader (it is
	// refused below as not a regular file); a regular file ignores it.
	f, err := os.OpenFile(path, os.O_RDONLY|ostNoFollow()|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("secret file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("secret file %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("secret file %s is not a regular file", path)
	}
	if uid, ok := owner(st); !ok || (uid != 0 && uid != uint32(os.Geteuid())) {
		return nil, fmt.Errorf("%s is owned by uid %d: %w", path, uid, ErrOwner)
	}
	if st.Mode().Perm()&0o077 != 0 && !privateByACL(f, st.Mode().Perm()) {
		return nil, fmt.Errorf("%s has mode %04o: %w", path, st.Mode().Perm(), ErrTooOpen)
	}
	buf := make([]byte, MaxSize+1)
	n, err := io.ReadFull(f, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		Zero(buf)
		return nil, fmt.Errorf("secret file %s: %w", path, err)
	}
	if n > MaxSize {
		Zero(buf)
		return nil, fmt.Errorf("secret file %s is larger than %d bytes", path, MaxSize)
	}
	s := buf[:n]
	s = bytes.TrimSuffix(s, []byte("\n"))
	s = bytes.TrimSuffix(s, []byte("\r"))
	if len(bytes.TrimSpace(s)) == 0 {
		Zero(buf)
		return nil, fmt.Errorf("%s: %w", path, ErrEmpty)
	}
	out := make([]byte, len(s))
	copy(out, s)
	Zero(buf)
	return out, nil
}

func owner(fi os.FileInfo) (uint32, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return st.Uid, true
}

// Zero overwrites b with zeros.
func Zero(b []byte) { clear(b) }
