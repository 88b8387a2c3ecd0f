// Command keywardd is the keyward daemon: it serves the keyward.v1 API on a
// Unix socket, with master keys held in a PKCS#11 token.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/keyward/keyward/daemon"
	"github.com/keyward/keyward/hsm"
)

// Exit codes.
const (
	exitOK     = 0
	exitFail   = 1
	exitUsage  = 2
	exitConfig = 3
	// exitLogin: the token refused the PIN. keyward.service does not restart
	// on it (RestartPreventExitStatus=): retrying may lock a real token.
	exitLogin = 4
)

const usage = `keywardd: the keyward key daemon

Usage:
  keywardd [--config FILE]          serve (default config %s)
  keywardd --check-config [--config FILE]
                                    validate the config and its policy, then exit
  keywardd --dev [--socket PATH] [--dev-dir DIR]
                                    development mode: a private SoftHSM2 token in a
                                    temporary directory (removed on exit) or in DIR
                                    (kept), the invoking user allowed everything,
                                    socket ./keyward-dev.sock

Flags:
`

const usageTail = `
Signals: SIGTERM and SIGINT drain calls in flight, then stop; SIGHUP re-reads
the config (rules and per-call limits; a bad file keeps the running one).

Exit codes: 0 stopped cleanly, or the config is valid; 1 could not run;
2 usage; 3 invalid configuration; 4 the token refused the PIN (not retried:
a real token may lock).

Under systemd (keyward.socket, keyward.service): serves the passed socket
named systemd_socket_name; with $NOTIFY_SOCKET, sends READY=1 once the token
is logged in and the keyring read, STATUS= lines, RELOADING=1 and READY=1 on
SIGHUP, STOPPING=1, and WATCHDOG=1 every $WATCHDOG_USEC/2 while the token
answers a health probe; reads the PIN from $CREDENTIALS_DIRECTORY/pin when
backend.pin_file is not set; logs to the journal when stderr is the journal.

Documentation: README.md (installed in /usr/share/doc/keyward/).
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("keywardd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, usage, daemon.DefaultConfigPath)
		fs.PrintDefaults()
		fmt.Fprint(stderr, usageTail)
	}
	configPath := fs.String("config", daemon.DefaultConfigPath, "configuration file (TOML)")
	check := fs.Bool("check-config", false, "validate the configuration and its policy, then exit")
	dev := fs.Bool("dev", false, "development mode on a private SoftHSM2 token")
	sock := fs.String("socket", "", "socket path (dev mode; default ./keyward-dev.sock)")
	devDir := fs.String("dev-dir", "", "dev mode: keep the token in this directory (created, reused on the next start) instead of a temporary one")
	logLevel := fs.String("log-level", "", "debug, info, warn or error (overrides the config)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "keywardd: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	if *check {
		_, pol, err := daemon.CheckConfig(*configPath)
		if err != nil {
			fmt.Fprintf(stderr, "keywardd: %v\n", err)
			return exitConfig
		}
		fmt.Fprintf(stdout, "%s: ok (%d rules)\n", *configPath, pol.Rules())
		return exitOK
	}
	if err := daemon.HardenProcess(); err != nil {
		fmt.Fprintf(stderr, "keywardd: %v\n", err)
		return exitFail
	}
	if *dev {
		return runDev(ctx, *devDir, *sock, *logLevel, stdout, stderr)
	}
	if *sock != "" || *devDir != "" {
		fmt.Fprintln(stderr, "keywardd: --socket and --dev-dir are for --dev; set socket in the config file")
		return exitUsage
	}
	cfg, pol, err := daemon.CheckConfig(*configPath)
	if err != nil {
		fmt.Fprintf(stderr, "keywardd: %v\n", err)
		return exitConfig
	}
	if *logLevel != "" {
		cfg.LogLevel = *logLevel
	}
	log := daemon.NewLogger(cfg.LogLevel)
	notifier, watchdog, err := daemon.SystemdNotifier()
	if err != nil {
		log.Error("systemd notification", "err", err)
		return exitFail
	}
	be, err := daemon.OpenBackend(ctx, cfg, log)
	if err != nil {
		log.Error("cannot open the key backend", "err", err)
		if errors.Is(err, hsm.ErrLogin) {
			return exitLogin
		}
		return exitFail
	}
	defer be.Close()
	opts := daemon.Options{ConfigPath: *configPath, Logger: log, Notifier: notifier, Watchdog: watchdog}
	if err := daemon.Run(ctx, cfg, pol, be, opts); err != nil {
		log.Error("daemon stopped", "err", err)
		return exitFail
	}
	return exitOK
}

func runDev(ctx context.Context, dir, sock, logLevel string, stdout, stderr io.Writer) int {
	if sock == "" {
		sock = "./keyward-dev.sock"
	}
	if logLevel == "" {
		logLevel = "info"
	}
	d, err := daemon.NewDev(dir, sock, logLevel)
	if err != nil {
		fmt.Fprintf(stderr, "keywardd: %v\n", err)
		return exitFail
	}
	defer d.Close()
	log := daemon.NewLogger(logLevel)
	be, err := daemon.OpenBackend(ctx, d.Config, log)
	if err != nil {
		fmt.Fprintf(stderr, "keywardd: dev token: %v\n", err)
		return exitFail
	}
	defer be.Close()
	err = daemon.Run(ctx, d.Config, d.Policy, be, daemon.Options{Logger: log, Ready: func(path string) {
		kept := "removed on exit"
		if dir != "" {
			kept = "kept for the next start"
		}
		fmt.Fprintf(stdout, banner, path, d.Dir, kept, os.Getuid(), path)
	}})
	if err != nil {
		fmt.Fprintf(stderr, "keywardd: %v\n", err)
		return exitFail
	}
	return exitOK
}

const banner = `keywardd: serving on %s
keywardd: development mode: SoftHSM2 token in %s (%s); uid %d may do everything
Try, in another shell:
  export KEYWARD_SOCKET=%s
  keyward key create demo/app --type aes-256-gcm
  printf 's3cr3t' | keyward wrap --key demo/app --context app=demo > blob.txt
  keyward unwrap --context app=demo < blob.txt
  keyward key rotate demo/app && keyward rewrap --context app=demo < blob.txt
  keyward key create demo/sig --type ecdsa-p256
  printf 'hello' | keyward sign --key demo/sig
  keyward status
Stop with Ctrl-C.
`
