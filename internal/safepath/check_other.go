//go:build !unix

package safepath

import "fmt"

// CheckDir cannot tell owners apart here: it refuses.
func CheckDir(dir string, trusted ...uint32) (string, error) {
	return "", fmt.Errorf("%s: ownership checks need a Unix system: %w", dir, ErrUnsafe)
}
