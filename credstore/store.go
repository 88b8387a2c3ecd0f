package credstore

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keyward/keyward/internal/safepath"
	"github.com/keyward/keyward/keys"
)

// MaxFile bounds a stored credential: a keyward blob is never larger.
const MaxFile = keys.MaxBlob

// Store is a credential directory. Its directories are made 0700 and its
// files 0600, owned by the daemon's user; root's and that user's entries
// are the only ones read.
type Store struct {
	dir   string
	owner uint32
}

// New returns the store at dir, for a daemon running as the current euid.
// Nothing is checked until it is used.
func New(dir string) *Store { return &Store{dir: dir, owner: uint32(os.Geteuid())} }

// Dir is the store's directory as configured.
func (s *Store) Dir() string { return s.dir }

// Entry is one stored credential, as List finds it.
type Entry struct {
	Unit, ID string
	Blob     []byte // the stored blob (ciphertext), nil when Err is set
	Modified time.Time
	Err      error // why this entry could not be read
}

const (
	dirFlags  = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	fileFlags = unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_CLOEXEC
)

// openRoot opens the store's directory after checking the path to it
// (internal/safepath); with create it is made (0700) when missing.
func (s *Store) openRoot(create bool) (int, error) {
	if create {
		if err := os.Mkdir(s.dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return -1, fmt.Errorf("credstore: %w", err)
		}
	}
	real, err := safepath.CheckDir(s.dir, s.owner)
	if errors.Is(err, os.ErrNotExist) {
		return -1, fmt.Errorf("credstore: %s does not exist: %w", s.dir, ErrNotFound)
	}
	if err != nil {
		return -1, fmt.Errorf("credstore: %s: %v: %w", s.dir, err, ErrUnsafe)
	}
	fd, err := unix.Open(real, dirFlags, 0)
	if err != nil {
		return -1, fmt.Errorf("credstore: open %s: %w", s.dir, err)
	}
	if err := s.check(fd, s.dir, true); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// check refuses an entry that is not a directory (dir) or a regular file
// with one link, owned by root or the daemon's user, closed to group and
// others.
func (s *Store) check(fd int, name string, dir bool) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("credstore: stat %s: %w", name, err)
	}
	typ := st.Mode & unix.S_IFMT
	switch {
	case dir && typ != unix.S_IFDIR, !dir && typ != unix.S_IFREG:
		return fmt.Errorf("credstore: %s is not a plain %s: %w", name, kind(dir), ErrUnsafe)
	case st.Uid != 0 && st.Uid != s.owner:
		return fmt.Errorf("credstore: %s is owned by uid %d, neither root nor %d: %w", name, st.Uid, s.owner, ErrUnsafe)
	case st.Mode&0o077 != 0:
		return fmt.Errorf("credstore: %s has mode %04o: group and others must have no access: %w", name, st.Mode&0o7777, ErrUnsafe)
	case !dir && st.Nlink != 1:
		return fmt.Errorf("credstore: %s has %d links: %w", name, st.Nlink, ErrUnsafe)
	case !dir && st.Size > MaxFile:
		return fmt.Errorf("credstore: %s is %d bytes, at most %d: %w", name, st.Size, MaxFile, ErrTooLarge)
	}
	return nil
}

func kind(dir bool) string {
	if dir {
		return "directory"
	}
	return "file"
}

// Read returns the blob stored for unit's credential id, and the unit whose
// directory held it: unit itself or, for an instance with no such
// credential of its own, its template ("app@.service"). The blob is bound
// to that directory's unit.
func (s *Store) Read(unit, id string) ([]byte, string, error) {
	if err := CheckUnit(unit); err != nil {
		return nil, "", err
	}
	if err := CheckID(id); err != nil {
		return nil, "", err
	}
	root, err := s.openRoot(false)
	if err != nil {
		return nil, "", err
	}
	defer unix.Close(root)
	try := []string{unit}
	if t, ok := Template(unit); ok {
		try = append(try, t)
	}
	for _, u := range try {
		b, _, err := s.readAt(root, u, id)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		return b, u, err
	}
	return nil, "", fmt.Errorf("credstore: %s/%s: %w", unit, id, ErrNotFound)
}

// openDir opens root's subdirectory unit, checked.
func (s *Store) openDir(root int, unit string) (int, error) {
	fd, err := unix.Openat(root, unit, dirFlags, 0)
	switch {
	case errors.Is(err, unix.ENOENT):
		return -1, fmt.Errorf("credstore: %s: %w", unit, ErrNotFound)
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.ENOTDIR):
		return -1, fmt.Errorf("credstore: %s is not a plain directory: %w", unit, ErrUnsafe)
	case err != nil:
		return -1, fmt.Errorf("credstore: open %s: %w", unit, err)
	}
	if err := s.check(fd, unit, true); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// readAt reads root/unit/id, checked, and its modification time.
func (s *Store) readAt(root int, unit, id string) ([]byte, time.Time, error) {
	dfd, err := s.openDir(root, unit)
	if err != nil {
		return nil, time.Time{}, err
	}
	defer unix.Close(dfd)
	name := unit + "/" + id
	fd, err := unix.Openat(dfd, id, fileFlags, 0)
	switch {
	case errors.Is(err, unix.ENOENT):
		return nil, time.Time{}, fmt.Errorf("credstore: %s: %w", name, ErrNotFound)
	case errors.Is(err, unix.ELOOP):
		return nil, time.Time{}, fmt.Errorf("credstore: %s is a symlink: %w", name, ErrUnsafe)
	case err != nil:
		return nil, time.Time{}, fmt.Errorf("credstore: open %s: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	if err := s.check(fd, name, false); err != nil {
		return nil, time.Time{}, err
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("credstore: %w", err)
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxFile+1))
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("credstore: read %s: %w", name, err)
	}
	if len(b) > MaxFile {
		return nil, time.Time{}, fmt.Errorf("credstore: %s grew past %d bytes: %w", name, MaxFile, ErrTooLarge)
	}
	return b, fi.ModTime(), nil
}

// Write stores blob as unit's credential id: a new file (0600) written,
// synced and renamed into place, so that a crash leaves the old or the new
// credential, never a torn one. Without replace an existing one is kept
// and ErrExists returned.
func (s *Store) Write(unit, id string, blob []byte, replace bool) error {
	if err := CheckUnit(unit); err != nil {
		return err
	}
	if err := CheckID(id); err != nil {
		return err
	}
	root, err := s.openRoot(true)
	if err != nil {
		return err
	}
	defer unix.Close(root)
	if err := unix.Mkdirat(root, unit, 0o700); err == nil {
		defer unix.Fsync(root)
	} else if !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("credstore: mkdir %s: %w", unit, err)
	}
	dfd, err := s.openDir(root, unit)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	tmp, err := writeTemp(dfd, blob)
	if err != nil {
		return err
	}
	flags := uint(unix.RENAME_NOREPLACE)
	if replace {
		flags = 0
	}
	if err := unix.Renameat2(dfd, tmp, dfd, id, flags); err != nil {
		unix.Unlinkat(dfd, tmp, 0)
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("credstore: %s/%s: %w", unit, id, ErrExists)
		}
		return fmt.Errorf("credstore: rename into %s/%s: %w", unit, id, err)
	}
	if err := unix.Fsync(dfd); err != nil {
		return fmt.Errorf("credstore: sync %s: %w", unit, err)
	}
	return nil
}

// writeTemp writes blob to a new 0600 file in dfd and syncs it; its name
// starts with '.', which no credential id does.
func writeTemp(dfd int, blob []byte) (string, error) {
	var r [8]byte
	rand.Read(r[:])
	tmp := ".tmp-" + hex.EncodeToString(r[:])
	fd, err := unix.Openat(dfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return "", fmt.Errorf("credstore: create: %w", err)
	}
	f := os.NewFile(uintptr(fd), tmp)
	_, werr := f.Write(blob)
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		unix.Unlinkat(dfd, tmp, 0)
		return "", fmt.Errorf("credstore: write: %w", werr)
	}
	return tmp, nil
}

// Remove deletes unit's credential id, and the unit's directory once it
// is empty.
func (s *Store) Remove(unit, id string) error {
	if err := CheckUnit(unit); err != nil {
		return err
	}
	if err := CheckID(id); err != nil {
		return err
	}
	root, err := s.openRoot(false)
	if err != nil {
		return err
	}
	defer unix.Close(root)
	dfd, err := s.openDir(root, unit)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	if err := unix.Unlinkat(dfd, id, 0); errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("credstore: %s/%s: %w", unit, id, ErrNotFound)
	} else if err != nil {
		return fmt.Errorf("credstore: remove %s/%s: %w", unit, id, err)
	}
	unix.Fsync(dfd)
	if unix.Unlinkat(root, unit, unix.AT_REMOVEDIR) == nil {
		unix.Fsync(root)
	}
	return nil
}
