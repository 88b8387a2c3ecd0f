package config

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"github.com/keyward/keyward/internal/safepath"
)

// maxDevFile bounds what LoadDevConfig reads: a policy is a few KiB.
const maxDevFile = 1 << 20

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
	// O_NONBLOCK: a FIFO put at the path must not hang the open.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_CLOEXEC|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	euid := uint32(os.Geteuid())
	switch {
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("config %s: not a regular file: %w", path, ErrConfig)
	case st.Uid != 0 && st.Uid != euid:
		return nil, fmt.Errorf("config %s: owned by uid %d, neither root nor this user (uid %d), who could change who may use the keys: %w",
			path, st.Uid, euid, ErrConfig)
	case fi.Mode().Perm()&0o022 != 0:
		return nil, fmt.Errorf("config %s: mode %04o lets group or others write it, and so change who may use the keys (chmod go-w): %w",
			path, fi.Mode().Perm(), ErrConfig)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxDevFile+1))
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if len(b) > maxDevFile {
		return nil, fmt.Errorf("config %s: larger than %d bytes: %w", path, maxDevFile, ErrConfig)
	}
	return b, nil
}
