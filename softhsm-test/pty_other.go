//go:build !linux

package softhsmtest

import (
	"fmt"
	"os"
)

// The pseudo-terminal that keeps PINs off argv is implemented for Linux only,
// keyward's only platform; elsewhere the helper reports SoftHSM2 as missing so
// tests skip.

func ptyAvailable() error {
	return fmt.Errorf("%w: softhsmtest supports Linux only", ErrNotInstalled)
}

func openPTY() (master, slave *os.File, err error) {
	return nil, nil, ptyAvailable()
}
