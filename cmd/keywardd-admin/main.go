// Command keywardd-admin runs keywardd's commands that open a key device
// directly, without a daemon: doctor, define-counter, demo and
// bench-baseline. keywardd runs it for "keywardd NAME ..." (it is
// installed beside keywardd), so that keywardd itself, which runs for
// the life of the host, does not carry their code: it is smaller and
// keeps fewer pages resident.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/keyward/keyward/internal/harden"
)

func main() {
	// Every command opens the device with the PIN (define-counter also
	// holds the TPM's owner authorisation): no core dump may hold them.
	if err := harden.Process(); err != nil {
		fmt.Fprintf(os.Stderr, "keywardd: %v\n", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := runAdmin(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
