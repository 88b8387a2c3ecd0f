//go:build unix

package safepath

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// CheckDir applies the package's rule to dir (made absolute against the
// working directory) with root and trusted as the trusted users. It returns
// the directory the path resolves to. A missing component is an error
// wrapping fs.ErrNotExist.
func CheckDir(dir string, trusted ...uint32) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	cur := "/"
	if err := checkEntry(cur, trusted, false); err != nil {
		return "", err
	}
	todo := split(abs)
	links := 0
	for len(todo) > 0 {
		name := todo[0]
		todo = todo[1:]
		if name == ".." {
			cur = filepath.Dir(cur) // already checked on the way down
			continue
		}
		next := filepath.Join(cur, name)
		fi, err := os.Lstat(next)
		if err != nil {
			return "", err
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode()&fs.ModeSymlink != 0 {
			if links++; links > maxLinks {
				return "", fmt.Errorf("%s: too many symlinks: %w", abs, syscall.ELOOP)
			}
			if !trustedUID(st.Uid, trusted) {
				return "", fmt.Errorf("symlink %s is owned by uid %d, neither root nor %s: %w", next, st.Uid, uids(trusted), ErrUnsafe)
			}
			target, err := os.Readlink(next)
			if err != nil {
				return "", err
			}
			if filepath.IsAbs(target) {
				cur = "/"
			}
			todo = append(split(target), todo...)
			continue
		}
		if err := checkEntry(next, trusted, false); err != nil {
			return "", err
		}
		cur = next
	}
	// The last directory (possibly reached through a symlink or "..") gets
	// the strict rule.
	if err := checkEntry(cur, trusted, true); err != nil {
		return "", err
	}
	return cur, nil
}

// checkEntry checks one directory: its owner, and who else may write it.
func checkEntry(path string, trusted []uint32, last bool) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory: %w", path, syscall.ENOTDIR)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if !trustedUID(st.Uid, trusted) {
		return fmt.Errorf("directory %s is owned by uid %d, neither root nor %s: %w", path, st.Uid, uids(trusted), ErrUnsafe)
	}
	perm := fi.Mode().Perm()
	switch {
	case perm&0o022 == 0:
		return nil
	case last:
		return fmt.Errorf("directory %s is writable by its group or others (mode %04o): %w", path, perm, ErrUnsafe)
	case fi.Mode()&fs.ModeSticky == 0:
		return fmt.Errorf("directory %s is writable by its group or others and not sticky (mode %04o): %w", path, perm, ErrUnsafe)
	}
	return nil
}

func split(p string) []string {
	var out []string
	for _, s := range strings.Split(p, "/") {
		if s != "" && s != "." {
			out = append(out, s)
		}
	}
	return out
}

func uids(trusted []uint32) string {
	if len(trusted) == 0 {
		return "another trusted uid"
	}
	s := make([]string, len(trusted))
	for i, u := range trusted {
		s[i] = fmt.Sprint(u)
	}
	return "uid " + strings.Join(s, " or ")
}

func trustedUID(uid uint32, trusted []uint32) bool {
	return uid == 0 || slices.Contains(trusted, uid)
}
