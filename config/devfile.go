package config

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"github.com/keyward/keyward/internal/safepath"
)

// readDevFile reads --dev --config's file, which decides who may use the
// dev daemon's keys: it must be a regular file owned by root or by the user
// keywardd runs as, and not writable by group or others, in directories
// only they own, and is not followed if it is a symlink, so that no other
// user can change the policy (or swap the file) under them. The checks are
// on the file actually opened.
func readDevFile(path string) ([]byte, error) {
	if _, err := safepath.CheckDir(filepath.Dir(path), uint32(os.Geteuid())); err != nil {
		return nil, fmt.Errorf("config %s: %w: %w", path, err, ErrConfig)
	}
	f, fi, err := openConfigFile(path, syscall.O_NOFOLLOW)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st := fi.Sys().(*syscall.Stat_t)
	euid := uint32(os.Geteuid())
	switch {
	case st.Uid != 0 && st.Uid != euid:
		return nil, fmt.Errorf("config %s: owned by uid %d, neither root nor this user (uid %d), who could change who may use the keys: %w",
			path, st.Uid, euid, ErrConfig)
	case fi.Mode().Perm()&0o022 != 0:
		return nil, fmt.Errorf("config %s: mode %04o lets group or others write it, and so change who may use the keys (chmod go-w): %w",
			path, fi.Mode().Perm(), ErrConfig)
	}
	return readConfigBytes(f, path)
}

// maxConfigFile bounds a configuration file: a real one is a few KiB.
const maxConfigFile = 1 << 20

// readConfigFile reads the configuration file at path, following a
// symlink (configuration managers install them).
func readConfigFile(path string) ([]byte, error) {
	f, _, err := openConfigFile(path, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readConfigBytes(f, path)
}

// openConfigFile opens path (with the extra open flags) and checks that
// it is a regular file. O_NONBLOCK: a FIFO or a device put at the path is
// refused without hanging the open (a reload would wait for ever).
func openConfigFile(path string, flags int) (*os.File, os.FileInfo, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_CLOEXEC|flags, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("config: %w", err)
	}
	fi, err := f.Stat()
	switch {
	case err != nil:
	case fi.IsDir():
		err = fmt.Errorf("config %s: is a directory: %w", path, ErrConfig)
	case !fi.Mode().IsRegular():
		err = fmt.Errorf("config %s: not a regular file: %w", path, ErrConfig)
	}
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, fi, nil
}

// readConfigBytes reads f, refusing one over maxConfigFile bytes without
// reading it whole (/dev/zero's like would exhaust memory).
func readConfigBytes(f *os.File, path string) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(f, maxConfigFile+1))
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if len(b) > maxConfigFile {
		return nil, fmt.Errorf("config %s: larger than %d bytes: %w", path, maxConfigFile, ErrConfig)
	}
	return b, nil
}
