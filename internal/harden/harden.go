// Package harden makes a process that holds secrets (a PIN, plaintexts,
// a TPM's owner authorisation) refuse core dumps and ptrace by other
// processes of the same uid: a dump would hold them.
package harden

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Process marks the process not dumpable (no core, no ptrace attach by
// the same uid, /proc/PID/mem closed to it) and sets RLIMIT_CORE to 0.
func Process() error {
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("prctl(PR_SET_DUMPABLE): %w", err)
	}
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{Cur: 0, Max: 0}); err != nil {
		return fmt.Errorf("setrlimit(RLIMIT_CORE): %w", err)
	}
	return nil
}
