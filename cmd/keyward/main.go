// Command keyward is the keyward command-line tool. Today it has two
// subcommands: `demo`, which exercises a development SoftHSM2 token (what
// `make run` shows until the daemon exists), and `token doctor`, which checks
// every keyward object in a PKCS#11 token for weak protection.
//
// main stays thin: it wires signals and standard streams to run, which the
// tests call too. Errors go to stderr as one line "keyward: ..."; the exit
// status says what kind of failure it was (see usage). No PIN, and no
// plaintext other than the demo's constant, is ever printed.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
