// Command keyward is the keyward command-line tool: data operations (wrap,
// unwrap, rewrap, datakey, sign, verify, mac, verify-mac, pubkey) and key
// administration (key create, rotate, list, show, disable, enable, destroy,
// set, adopt), credentials and break-glass through the daemon's socket, its
// status and a load benchmark, and, without the daemon, `policy explain`
// and `policy report`, which answer from keywardd's config file what its
// policy allows, and the audit commands (verify, tail, report,
// context-digest). It is a client only: it links no backend (no PKCS#11, no TPM) and
// builds with CGO_ENABLED=0; the commands that open a device directly are
// keywardd's (keywardd doctor, define-counter, demo, bench-baseline).
//
// main stays thin: it wires signals and standard streams to run, which the
// tests call too. Secrets travel only on stdin and stdout, never in argv.
// Errors go to stderr as one line "keyward: ..."; the exit status says what
// kind of failure it was (see exitStatusText). No PIN, plaintext or data
// key is ever in an error.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
