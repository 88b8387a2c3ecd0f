// Command keywardd is the keyward daemon: it serves the keyward.v1 API on a
// Unix socket, with master keys held in a PKCS#11 token or a TPM 2.0.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/keyward/keyward/internal/admincmd"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/daemon"
	"github.com/keyward/keyward/devmode"
	"github.com/keyward/keyward/hsm"
	"github.com/keyward/keyward/internal/secretfile"
	"github.com/keyward/keyward/internal/version"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/tpm"
)

// Exit codes.
const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
	// exitConfig: the config is invalid, the device refused a setting
	// (tpm.ErrConfig: the device string, the state directory's mode, an
	// auth secret too short; hsm.ErrConfig), or the PIN or auth secret
	// could not be had (secretfile.ErrUnusable). keyward.service does not
	// restart on it.
	exitConfig = 3
	// exitLogin: the token refused the PIN, or the TPM the auth secret.
	// keyward.service does not restart on it (RestartPreventExitStatus=):
	// retrying may lock a real token, and cannot change a TPM's answer.
	exitLogin = 4
	// exitIntegrity: the key store failed its integrity check at start (a
	// TPM whose parent is not the pinned one, an edited keyring record). Not
	// restarted either: a restart reads the same state; an operator must look.
	exitIntegrity = 5
)

const usage = `keywardd: the keyward key daemon

Usage:
  keywardd [--config FILE]          serve (default config %s)
  keywardd --version                print the version and exit
  keywardd --check-config [--dev --config FILE | --config FILE]
                                    validate the config and its policy (with --dev: as
                                    --dev --config takes it), then exit
  keywardd ... --ready-file FILE    write FILE (0600) once serving, remove it on exit
  keywardd --dev [--backend pkcs11|tpm] [--socket PATH] [--dev-dir DIR]
          [--config FILE] [--dev-allow-uid UID]... [--dev-allow-gid GID]...
                                    development mode: a private device in a temporary
                                    directory (removed on exit) or in DIR (kept), the
                                    invoking user allowed everything (with --config:
                                    the file's rules and limits instead; a key of it
                                    other than rule, limits and log_level is refused),
                                    each --dev-allow-uid/gid too, socket
                                    ./keyward-dev.sock. pkcs11 (default): a SoftHSM2
                                    token. tpm: the in-process TPM simulator in builds
                                    with -tags tpmsim, else a swtpm child process
                                    (swtpm must be installed: make deps)

Commands that open a device directly, without a daemon (keywardd help NAME;
their exit statuses are keyward's):
  keywardd doctor ...               check a token's or TPM state directory's objects
  keywardd define-counter ...       define a TPM state directory's rollback counter
  keywardd demo --dev-dir DIR       wrap, unwrap and rotate on a SoftHSM2 token
  keywardd bench-baseline ...       the in-process half of keyward bench --baseline

Flags:
`

const usageTail = `
Signals: SIGTERM and SIGINT drain calls in flight, then stop; SIGHUP re-reads
the config (rules and per-call limits; a bad file keeps the running one).

Exit codes: 0 stopped cleanly, or the config is valid; 1 could not run;
2 usage; 3 invalid configuration (also one the backend refuses: the TPM
device string, the state directory's mode, an auth secret under 16 bytes;
and no PIN source, or a PIN file missing, unreadable or open to others);
4 the token refused the PIN or the TPM the auth secret (not retried: a real
token may lock); 5 the key store failed its integrity check at start (a TPM
whose parent is not the pinned one, an edited keyring record).

Under systemd (keyward.socket, keyward.service): serves the passed socket
named systemd_socket_name; with $NOTIFY_SOCKET (also in --dev), sends READY=1 once the token
is logged in and the keyring read, STATUS= lines, RELOADING=1 and READY=1 on
SIGHUP, STOPPING=1, and WATCHDOG=1 every $WATCHDOG_USEC/2 while the token
answers a health probe; reads the PIN from $CREDENTIALS_DIRECTORY/pin when
backend.pin_file is not set; logs to the journal when stderr is the journal.

Documentation: README.md and docs/ (installed in /usr/share/doc/keyward/).
`

// hangups holds the SIGHUPs caught since main started (nil when run
// without main, in tests): a reload asked for while keywardd starts (a
// slow token's login can take seconds) is made once it serves, rather
// than the signal's default action ending the process.
var hangups chan os.Signal

func main() {
	hangups = make(chan os.Signal, 1)
	signal.Notify(hangups, syscall.SIGHUP)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// flags are keywardd's command line.
type flags struct {
	configPath, backend, sock, devDir, logLevel *string
	readyFile                                   *string
	check, dev, version                         *bool
	callers                                     *devCallers
}

func newFlags(stderr io.Writer) (*flag.FlagSet, flags) {
	fs := flag.NewFlagSet("keywardd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, usage, config.DefaultConfigPath)
		fs.PrintDefaults()
		fmt.Fprint(stderr, usageTail)
	}
	callers := &devCallers{}
	callers.register(fs)
	return fs, flags{
		callers:    callers,
		configPath: fs.String("config", config.DefaultConfigPath, "configuration file (TOML)"),
		check:      fs.Bool("check-config", false, "validate the configuration and its policy, then exit"),
		dev:        fs.Bool("dev", false, "development mode on a private SoftHSM2 token or TPM"),
		backend:    fs.String("backend", "", "dev mode: pkcs11 (a SoftHSM2 token, the default) or tpm (the TPM simulator or swtpm)"),
		sock:       fs.String("socket", "", "socket path (dev mode; default ./keyward-dev.sock)"),
		devDir:     fs.String("dev-dir", "", "dev mode: keep the token or TPM in this directory (created, reused on the next start) instead of a temporary one"),
		logLevel:   fs.String("log-level", "", "debug, info, warn or error (overrides the config)"),
		version:    fs.Bool("version", false, "print the version and exit"),
		readyFile:  fs.String("ready-file", "", "write this file (0600: socket, pid, version) once serving, remove it on exit; for scripts that wait for the daemon"),
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if admincmd.Is(args) {
		err := admincmd.Exec(args) // returns only on failure
		fmt.Fprintf(stderr, "keywardd %s: %v\n", args[0], err)
		return exitFail
	}
	if len(args) == 1 && args[0] == "help" { // as "keywardd help NAME" is
		args = []string{"--help"}
	}
	fs, f := newFlags(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() > 0 {
		if fs.Arg(0) == "help" && fs.NArg() > 1 { // "keywardd help NAME" for no command NAME
			fmt.Fprintf(stderr, "keywardd: no command %q (commands: %s)\n", fs.Arg(1), strings.Join(admincmd.Names, ", "))
			return exitUsage
		}
		fmt.Fprintf(stderr, "keywardd: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	if err := f.callers.check(fs, *f.dev, *f.configPath); err != nil {
		fmt.Fprintf(stderr, "keywardd: %v\n", err)
		return exitUsage
	}
	if *f.version {
		fmt.Fprintln(stdout, version.Line("keywardd"))
		return exitOK
	}
	if *f.check && *f.readyFile != "" {
		fmt.Fprintln(stderr, "keywardd: --ready-file is for a serving keywardd, not --check-config")
		return exitUsage
	}
	if *f.check && *f.dev {
		return checkDevConfigCmd(f.callers, stdout, stderr)
	}
	if *f.check {
		return checkConfig(*f.configPath, stdout, stderr)
	}
	ctx, ready, err := newReadiness(ctx, *f.readyFile, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "keywardd: %v\n", err)
		return exitUsage
	}
	return ready.finish(start(ctx, f, ready, stdout, stderr))
}

// start runs the daemon: --dev, or on the config file.
func start(ctx context.Context, f flags, ready *readiness, stdout, stderr io.Writer) int {
	if err := daemon.HardenProcess(); err != nil {
		fmt.Fprintf(stderr, "keywardd: %v\n", err)
		return exitFail
	}
	if *f.dev {
		switch *f.backend {
		case "":
			*f.backend = "pkcs11"
		case "pkcs11", "tpm":
		default:
			fmt.Fprintf(stderr, "keywardd: --backend %q: want pkcs11 or tpm\n", *f.backend)
			return exitUsage
		}
		return runDev(ctx, *f.devDir, *f.sock, *f.logLevel, *f.backend, f.callers.Callers, ready, stdout, stderr)
	}
	if *f.sock != "" || *f.devDir != "" || *f.backend != "" {
		fmt.Fprintln(stderr, "keywardd: --socket, --dev-dir and --backend are for --dev; set socket and [backend] in the config file")
		return exitUsage
	}
	return serve(ctx, *f.configPath, *f.logLevel, ready, stderr)
}

// checkConfig is --check-config: every problem of the file, then exit 3;
// warnings do not fail it.
func checkConfig(path string, stdout, stderr io.Writer) int {
	_, pol, err := config.CheckConfig(path)
	if err != nil {
		printLines(stderr, "keywardd: ", err.Error())
		return exitConfig
	}
	for _, w := range pol.Warnings() {
		printLines(stderr, "keywardd: warning: "+path+": ", w)
	}
	fmt.Fprintf(stdout, "%s: ok (%d rules)\n", path, pol.Rules())
	return exitOK
}

// serve runs keywardd on the config file until ctx ends.
func serve(ctx context.Context, path, logLevel string, ready *readiness, stderr io.Writer) int {
	cfg, pol, err := config.CheckConfig(path)
	if err != nil {
		printLines(stderr, "keywardd: ", err.Error())
		return exitConfig
	}
	if logLevel != "" {
		cfg.LogLevel = logLevel
	}
	log := daemon.NewLogger(cfg.LogLevel)
	for _, w := range pol.Warnings() {
		log.Warn("policy", "warning", w)
	}
	notifier, watchdog, err := daemon.SystemdNotifier()
	if err != nil {
		log.Error("systemd notification", "err", err)
		return exitFail
	}
	be, err := daemon.OpenBackend(ctx, cfg, log)
	if err != nil {
		log.Error("cannot open the key backend", "backend", cfg.Backend.Kind, "err", err)
		return openFailure(err)
	}
	defer be.Close()
	opts := daemon.Options{ConfigPath: path, Logger: log, Notifier: notifier, Watchdog: watchdog, Ready: ready.hook(nil), Hangups: hangups}
	opts.SchedulerClock = schedulerClock()
	opts.BreakglassClock = breakglassClock()
	if err := daemon.Run(ctx, cfg, pol, be, opts); err != nil {
		log.Error("daemon stopped", "err", err)
		if errors.Is(err, config.ErrConfig) { // a setting only the running daemon can judge (kms_key, audit_checkpoint_key)
			return exitConfig
		}
		if errors.Is(err, keys.ErrIntegrity) { // a break-glass grant store that fails its check
			return exitIntegrity
		}
		return exitFail
	}
	return exitOK
}

// printLines writes each line of msg (one problem each) with prefix.
func printLines(w io.Writer, prefix, msg string) {
	for _, line := range strings.Split(msg, "\n") {
		fmt.Fprintf(w, "%s%s\n", prefix, line)
	}
}

// openFailure is the exit code for a backend that would not open: 4 when
// the device refused the credential, 3 when it refused a setting or the PIN
// (auth secret) could not be had: no source, a file missing, unreadable,
// open to others, empty (none is restarted by keyward.service: a restart
// cannot change the answer), 1
// otherwise (a TPM or token away, a state directory another keywardd
// holds, a pinned TPM parent that does not match: the log says which).
func openFailure(err error) int {
	switch {
	case errors.Is(err, hsm.ErrCredential), errors.Is(err, tpm.ErrCredential):
		return exitLogin
	case errors.Is(err, tpm.ErrConfig), errors.Is(err, tpm.ErrNoSimulator), errors.Is(err, hsm.ErrConfig),
		errors.Is(err, secretfile.ErrUnusable):
		return exitConfig
	case errors.Is(err, tpm.ErrParentMismatch), errors.Is(err, keys.ErrIntegrity):
		return exitIntegrity
	}
	return exitFail
}

func runDev(ctx context.Context, dir, sock, logLevel, backend string, callers devmode.Callers, ready *readiness, stdout, stderr io.Writer) int {
	if sock == "" {
		sock = "./keyward-dev.sock"
	}
	loaded, err := checkDevConfig(callers) // before a device is made for nothing
	if err != nil {
		printLines(stderr, "keywardd: ", err.Error())
		return exitConfig
	}
	callers.Loaded = loaded
	d, err := devmode.New(dir, sock, orDefault(logLevel, "info"), backend)
	if err != nil {
		fmt.Fprintf(stderr, "keywardd: %v\n", err)
		return exitFail
	}
	defer d.Close() // after be.Close: swtpm stops once the backend let go
	if err := d.Allow(callers); err != nil {
		printLines(stderr, "keywardd: ", err.Error())
		return exitConfig
	}
	d.Config.LogLevel = orDefault(logLevel, d.Config.LogLevel) // --log-level, else the file's, else info
	log := daemon.NewLogger(d.Config.LogLevel)
	// As in production: READY=1 (and the watchdog) for a dev daemon run by a
	// service manager or a harness that sets $NOTIFY_SOCKET.
	notifier, watchdog, err := daemon.SystemdNotifier()
	if err != nil {
		fmt.Fprintf(stderr, "keywardd: systemd notification: %v\n", err)
		return exitFail
	}
	be, err := daemon.OpenBackend(ctx, d.Config, log)
	if err != nil {
		fmt.Fprintf(stderr, "keywardd: dev %s: %v\n", d.What, err)
		return exitFail
	}
	defer be.Close()
	if hangups != nil {
		// No file to reload: a hang-up ends a dev daemon, as a terminal's does.
		signal.Stop(hangups)
	}
	err = daemon.Run(ctx, d.Config, d.Policy, be, daemon.Options{Logger: log, Notifier: notifier, Watchdog: watchdog, Ready: ready.hook(func(path string) {
		kept := "removed on exit"
		if dir != "" {
			kept = "kept for the next start"
		}
		fmt.Fprintf(stdout, banner, path, d.What, d.Dir, kept, devWho(callers), d.Device, path)
	})})
	if err != nil {
		fmt.Fprintf(stderr, "keywardd: %v\n", err)
		return exitFail
	}
	return exitOK
}

const banner = `keywardd: serving on %s
keywardd: development mode: %s in %s (%s); %s
keywardd: backend %s
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
