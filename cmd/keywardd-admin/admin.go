package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/keyward/keyward/internal/ctxflag"
	"io"
	"io/fs"
	"strings"

	"github.com/spf13/cobra"

	"github.com/keyward/keyward/hsm"
	"github.com/keyward/keyward/internal/secretfile"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/tpm"
)

// The commands are run as "keywardd NAME ..." (keywardd execs this
// executable; internal/admincmd); their exit statuses are keyward's
// (adminExitText).

// Exit statuses of the device commands: keyward's, which they had before
// they moved here.
const (
	adminOK          = 0
	adminFailed      = 1
	adminUsage       = 2
	adminPermission  = 3
	adminNotFound    = 4
	adminUnavailable = 5
)

const adminExitText = `Exit status:
  0  ok
  1  weak objects found (doctor); any other error
  2  usage error: bad flags or arguments; no PIN source, ambiguous token
     selection, a TPM device string, auth secret or state directory keyward
     refuses
  3  the token refused the PIN or the TPM the auth secret, or the PIN file
     cannot be read or is readable by group or others (it must be 0600 or 0400)
  4  not found: a key or version, a file or a directory
  5  the PKCS#11 module cannot be loaded, the token or the TPM is missing or
     not answering

Errors are one line on stderr, "keywardd NAME: ...". PINs never appear in an
error.`

// app is one run of a device command: its output streams.
type app struct {
	stdout, stderr io.Writer
}

// usageError is a bad command line: exit status 2.
type usageError struct{ cmd, msg string }

func (e *usageError) Error() string {
	return fmt.Sprintf("%s: %s (see \"keywardd help %s\")", e.cmd, e.msg, e.cmd)
}

func usagef(cmd, format string, a ...any) error {
	return &usageError{cmd: cmd, msg: fmt.Sprintf(format, a...)}
}

// errWeak: the token holds objects that are not protected as keyward requires.
var errWeak = errors.New("weak objects found")

// runAdmin runs one device command.
func runAdmin(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	a := &app{stdout: stdout, stderr: stderr}
	root := &cobra.Command{Use: "keywardd", SilenceErrors: true, SilenceUsage: true}
	root.AddCommand(a.doctorCmd(), a.defineCounterCmd(), a.demoCmd(), a.benchBaselineCmd())
	root.SetHelpCommand(&cobra.Command{Use: "help COMMAND", Hidden: true, RunE: func(c *cobra.Command, args []string) error {
		target, _, err := root.Find(args)
		if err != nil {
			return err
		}
		return target.Help()
	}})
	for _, c := range root.Commands() {
		c.DisableFlagsInUseLine = true
		c.SetHelpTemplate(c.HelpTemplate() + "\n" + adminExitText + "\n")
		c.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usagef(c.Name(), "%v", err) })
	}
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return adminOK
	}
	name := cmd.Name()
	var ue *usageError
	if !errors.As(err, &ue) && !cmd.Runnable() {
		err = usagef(name, "%v", err)
	}
	msg := strings.Join(strings.Fields(err.Error()), " ")
	if h := hint(err); h != "" {
		msg += " (hint: " + h + ")"
	}
	fmt.Fprintln(stderr, "keywardd "+msg)
	return adminExit(err)
}

// hint is the advice printed under an error: what to run about it. The
// libraries' errors say what is wrong and never which command fixes it.
func hint(err error) string {
	switch {
	case errors.Is(err, tpm.ErrHistoryLost):
		return "if you know why, accept the state directory as it is with `keywardd define-counter --trust-current-state` (keywardd stopped)"
	case errors.Is(err, tpm.ErrOwnerAuth):
		return "run `keywardd define-counter --owner-auth-file FILE` once, or set backend.rollback_counter = false"
	case errors.Is(err, tpm.ErrNoSimulator):
		return "the simulator is in builds made with -tags tpmsim"
	}
	return ""
}

// adminExit maps a device command's error to its exit status. The order
// matters where an error wraps several sentinels: the most specific wins.
func adminExit(err error) int {
	var ue *usageError
	switch {
	case err == nil:
		return adminOK
	case errors.As(err, &ue):
		return adminUsage
	case errors.Is(err, hsm.ErrCredential), errors.Is(err, tpm.ErrCredential), errors.Is(err, secretfile.ErrTooOpen), errors.Is(err, secretfile.ErrOwner), errors.Is(err, fs.ErrPermission):
		return adminPermission
	case errors.Is(err, hsm.ErrTokenNotFound), errors.Is(err, hsm.ErrModule), errors.Is(err, tpm.ErrTransport), errors.Is(err, keys.ErrUnavailable):
		return adminUnavailable
	case errors.Is(err, keys.ErrKeyNotFound), errors.Is(err, fs.ErrNotExist):
		return adminNotFound
	case errors.Is(err, hsm.ErrConfig), errors.Is(err, tpm.ErrConfig), errors.Is(err, tpm.ErrNoSimulator),
		errors.Is(err, secretfile.ErrNoSource), errors.Is(err, keys.ErrInvalidName):
		return adminUsage
	}
	return adminFailed
}

// noArgs refuses positional arguments.
func noArgs(c *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef(c.Name(), "unexpected argument %q", args[0])
	}
	return nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// contextFlag collects repeated --context k=v flags.
type contextFlag = ctxflag.Flag
