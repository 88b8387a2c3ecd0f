// Command keyward is the keyward command-line tool: data operations (wrap,
// unwrap, rewrap, datakey, sign, verify, mac, verify-mac, pubkey) and key
// administration (key create, rotate, list, show, disable, enable, destroy,
// set, adopt) through the daemon's socket, its status, and, without the
// daemon, `token doctor`, which checks every keyward object in a PKCS#11
// token or a TPM backend's state directory, `policy explain` and `policy report`, which answer from keywardd's
// config file what its policy allows, and `demo`, which exercises a
// development SoftHSM2 token.
//
// main stays thin: it wires signals and standard streams to run, which the
// tests call too. Secrets travel only on stdin and stdout, never in argv.
// Errors go to stderr as one line "keyward: ..."; the exit status says what
// kind of failure it was (see exitStatusText). No PIN, plaintext or data
// key is ever in an error; the only plaintext printed unasked is the demo's
// constant.
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
