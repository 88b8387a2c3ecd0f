package testutil

import (
	"io"
	"os"
	"path/filepath"
)

// CopySelf copies the running test binary into a new 0755 directory, so
// that processes under other uids can run it (go test builds in a 0700
// directory they cannot enter). It returns the copy's path and the
// directory, which the caller removes when done.
func CopySelf(prefix, name string) (bin, dir string, err error) {
	self, err := os.Executable()
	if err != nil {
		return "", "", err
	}
	if dir, err = os.MkdirTemp("", prefix); err != nil {
		return "", "", err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", dir, err
	}
	src, err := os.Open(self)
	if err != nil {
		return "", dir, err
	}
	defer src.Close()
	bin = filepath.Join(dir, name)
	dst, err := os.OpenFile(bin, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		return "", dir, err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return "", dir, err
	}
	return bin, dir, dst.Close()
}
