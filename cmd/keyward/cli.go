package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"strings"

	"github.com/keyward/keyward/hsm"
	"github.com/keyward/keyward/internal/secretfile"
	"github.com/keyward/keyward/keys"
)

// Exit statuses. They are part of the command's interface: scripts and CI
// branch on them, so they only ever gain meanings, never change them.
const (
	exitOK          = 0 // success
	exitFailed      = 1 // verification failed, weak objects, or any other error
	exitUsage       = 2 // bad command line
	exitPermission  = 3 // the token refused the PIN, or the PIN file may not be read
	exitNotFound    = 4 // a key or file does not exist
	exitUnavailable = 5 // module cannot be loaded, token absent or not answering
)

const exitStatusText = `Exit status:
  0  ok
  1  verification failed, weak objects found, or any other error
  2  usage error
  3  permission denied: the token refused the PIN, or the PIN file cannot be
     read or is readable by group or others (it must be 0600 or 0400)
  4  not found: a key, a file or a directory
  5  unavailable: the PKCS#11 module cannot be loaded, or the token is
     missing or not answering

Errors are one line on stderr, "keyward: ...". PINs are never printed.`

const mainUsage = `keyward: hardware-backed keys (PKCS#11 token today; TPM 2.0 and the daemon come next)

Usage:
  keyward demo --dev-dir DIR [--key NAME] [--token LABEL] [--context k=v ...]
  keyward token doctor (--token LABEL | --uri URI) [--module PATH] [--pin-file FILE] [--json]
  keyward help [COMMAND]

Commands:
  demo           create, wrap, unwrap, rotate and check a key on a development
                 SoftHSM2 token (what "make run" shows)
  token doctor   check every keyward object in a PKCS#11 token for weak
                 protection and leftovers
  help           show this text, or a command's ("keyward help token doctor")

Every command takes -h for its own usage.

Examples:
  make run      # provisions .dev/softhsm once, then runs:
  keyward demo --dev-dir .dev/softhsm
  keyward token doctor --module /usr/lib/softhsm/libsofthsm2.so \
      --token keyward --pin-file /etc/keyward/pin

` + exitStatusText + "\n"

const tokenUsage = `Usage:
  keyward token doctor (--token LABEL | --uri URI) [--module PATH] [--pin-file FILE] [--json]

Subcommands:
  doctor   check every keyward object in a PKCS#11 token for weak protection

Example:
  keyward token doctor --module /usr/lib/softhsm/libsofthsm2.so --token keyward --pin-file /etc/keyward/pin

Run "keyward token doctor -h" for the flags.
`

// usageError is a bad command line: exit status 2.
type usageError struct {
	cmd string // "demo", "token doctor", or "" for the top level
	msg string
}

func (e *usageError) Error() string {
	help := "keyward help"
	if e.cmd != "" {
		help += " " + e.cmd
	}
	prefix := ""
	if e.cmd != "" {
		prefix = e.cmd + ": "
	}
	return fmt.Sprintf("%s%s (see %q)", prefix, e.msg, help)
}

func usagef(cmd, format string, a ...any) error {
	return &usageError{cmd: cmd, msg: fmt.Sprintf(format, a...)}
}

// errWeak: the token holds objects that are not protected as keyward requires.
var errWeak = errors.New("weak objects found")

// run executes one command line and returns the exit status. Normal output
// goes to stdout; an error is written to stderr as a single line.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	err := dispatch(ctx, args, stdout)
	if err == nil {
		return exitOK
	}
	fmt.Fprintln(stderr, "keyward: "+oneLine(err.Error()))
	return exitCode(err)
}

func dispatch(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usagef("", "no command given")
	}
	switch cmd, rest := args[0], args[1:]; cmd {
	case "-h", "-help", "--help":
		_, err := io.WriteString(stdout, mainUsage)
		return err
	case "help":
		return help(rest, stdout)
	case "demo":
		opts, err := parseDemo(rest)
		if errors.Is(err, flag.ErrHelp) {
			_, err = io.WriteString(stdout, demoUsage)
			return err
		}
		if err != nil {
			return err
		}
		return demo(ctx, stdout, opts)
	case "token":
		if len(rest) == 0 {
			return usagef("token", "missing subcommand (doctor)")
		}
		switch sub := rest[0]; sub {
		case "-h", "-help", "--help":
			_, err := io.WriteString(stdout, tokenUsage)
			return err
		case "doctor":
			opts, err := parseDoctor(rest[1:])
			if errors.Is(err, flag.ErrHelp) {
				_, err = io.WriteString(stdout, doctorUsage)
				return err
			}
			if err != nil {
				return err
			}
			return tokenDoctor(ctx, stdout, opts)
		default:
			return usagef("token", "unknown subcommand %q (want doctor)", sub)
		}
	default:
		return usagef("", "unknown command %q", cmd)
	}
}

func help(topic []string, stdout io.Writer) error {
	text := mainUsage
	switch strings.Join(topic, " ") {
	case "":
	case "demo":
		text = demoUsage
	case "token":
		text = tokenUsage
	case "token doctor", "doctor":
		text = doctorUsage
	default:
		return usagef("", "no help for %q", strings.Join(topic, " "))
	}
	_, err := io.WriteString(stdout, text)
	return err
}

// newFlagSet returns a flag set that reports errors to the caller instead of
// printing them, so that every error leaves as one stderr line.
func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// parseFlags parses args into fs; flag.ErrHelp passes through, other errors
// become usage errors.
func parseFlags(cmd string, fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usagef(cmd, "%v", err)
	}
	if fs.NArg() > 0 {
		return usagef(cmd, "unexpected argument %q", fs.Arg(0))
	}
	return nil
}

// exitCode maps an error to the exit status. The order matters where an
// error wraps several sentinels: the most specific meaning wins.
func exitCode(err error) int {
	var ue *usageError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ue):
		return exitUsage
	case errors.Is(err, hsm.ErrLogin), errors.Is(err, secretfile.ErrTooOpen), errors.Is(err, fs.ErrPermission):
		return exitPermission
	case errors.Is(err, hsm.ErrTokenNotFound), errors.Is(err, hsm.ErrModule), errors.Is(err, keys.ErrUnavailable):
		return exitUnavailable
	case errors.Is(err, keys.ErrKeyNotFound), errors.Is(err, fs.ErrNotExist):
		return exitNotFound
	case errors.Is(err, hsm.ErrConfig), errors.Is(err, secretfile.ErrNoSource), errors.Is(err, keys.ErrInvalidName):
		// A setting the command line got wrong (two tokens match, no PIN
		// source, a key name outside the grammar).
		return exitUsage
	}
	return exitFailed
}

// oneLine keeps an error on one stderr line whatever a module put in it.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
