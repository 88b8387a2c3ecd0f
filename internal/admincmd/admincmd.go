// Package admincmd names keywardd's commands that open a key device
// directly, without a daemon. They are built as their own executable,
// keywardd-admin, installed beside keywardd, which runs it for
// "keywardd NAME ...": keywardd, running for the life of the host, does
// not carry their code.
package admincmd

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
)

// Names are the commands, as "keywardd NAME" and "keywardd help NAME".
var Names = []string{"doctor", "define-counter", "demo", "bench-baseline"}

// Is reports whether args name one of them (or ask help about one).
func Is(args []string) bool {
	if len(args) > 1 && args[0] == "help" {
		return slices.Contains(Names, args[1])
	}
	return len(args) > 0 && slices.Contains(Names, args[0])
}

// Executable is the commands' executable's name, beside keywardd's.
const Executable = "keywardd-admin"

// ErrMissing: keywardd-admin is not beside keywardd.
var ErrMissing = errors.New(Executable + " is not installed beside keywardd")

// Path is keywardd-admin's path: in the directory of the running
// executable (never looked up in $PATH), resolved through /proc/self/exe.
func Path() (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	p := filepath.Join(filepath.Dir(self), Executable)
	fi, err := os.Stat(p)
	if err != nil || !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%s: %w", p, ErrMissing)
	}
	return p, nil
}

// Exec replaces this process with keywardd-admin running args, with the
// same environment; it returns only on failure.
func Exec(args []string) error {
	p, err := Path()
	if err != nil {
		return err
	}
	return syscall.Exec(p, append([]string{"keywardd"}, args...), os.Environ())
}
