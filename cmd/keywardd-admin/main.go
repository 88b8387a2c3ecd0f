// Command keywardd-admin runs keywardd's commands that open a key device
// directly, without a daemon: doctor, define-counter, demo and
// bench-baseline. keywardd runs it for "keywardd NAME ..." (it is
// installed beside keywardd), so that keywardd itself, which runs for
// the life of the host, does not carry their code: it is smaller and
// keeps fewer pages resident.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := runAdmin(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
