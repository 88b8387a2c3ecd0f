package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/keyward/keyward/client"
	"github.com/keyward/keyward/internal/version"
	"github.com/keyward/keyward/keys"
)

// Exit statuses. They are part of the command's interface: scripts and CI
// branch on them, so they only ever gain meanings, never change them.
const (
	exitOK          = 0 // success; verify and verify-mac: valid; policy explain: allowed
	exitFailed      = 1 // verification failed (invalid signature or MAC, decryption failed), policy explain: denied, or any other error
	exitUsage       = 2 // bad command line, input over a limit, destroy without --yes, a config file keywardd would refuse
	exitPermission  = 3 // the daemon's policy or the socket's mode refuses us; the token refused the PIN or the TPM the auth secret, or the PIN file may not be read
	exitNotFound    = 4 // a key, version or file does not exist
	exitUnavailable = 5 // the daemon or its device is not answering, or a rate limit was hit; module cannot be loaded, token or TPM absent
)

const exitStatusText = `Exit status:
  0  ok; verify and verify-mac: valid; policy explain: allowed
  1  verify or verify-mac: invalid; policy explain: denied; decryption
     failed; any other error
  2  usage error: bad flags or arguments, input over a limit, key destroy
     without --yes, a request keywardd rejects as malformed, a config file
     keywardd would refuse (policy explain and report)
  3  permission denied: keywardd's policy refuses the operation, or this user
     may not open its socket; bench --baseline: the token refused the PIN, or
     the PIN file cannot be read or is readable by group or others (it must
     be 0600 or 0400)
  4  not found: a key or version, a file or a directory
  5  unavailable: keywardd is not running or not answering, its device is
     unavailable, or a rate limit was hit (retry later); bench --baseline:
     the PKCS#11 module cannot be loaded, the token is missing

Errors are one line on stderr, "keyward: ...". Plaintexts, data keys and
PINs never appear in an error.`

// envSocket names the daemon's socket when --socket is not given.
const envSocket = "KEYWARD_SOCKET"

// envDaemonUID names the user keywardd runs as when --daemon-uid is not given.
const envDaemonUID = "KEYWARD_DAEMON_UID"

// localOnly marks commands that do not talk to the daemon: their help does
// not list --socket and --timeout.
var localOnly = map[string]string{"local": "true"}

// usageError is a bad command line: exit status 2.
type usageError struct {
	cmd string // "key create", "policy explain", or "" for the top level
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

// errInvalid: verify or verify-mac found the signature or MAC invalid. The
// command has said so on stdout; nothing goes to stderr.
var errInvalid = errors.New("invalid")

// app is one invocation: its streams and global flags.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer

	socket    string
	timeout   time.Duration
	daemonUID string // --daemon-uid as given

	// started: cobra accepted the command line and a command's own code
	// runs. An error before that is a usage error whatever its text.
	started bool
}

// run executes one command line and returns the exit status. Normal output
// goes to stdout; an error is written to stderr as a single line.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	a := &app{stdin: stdin, stdout: stdout, stderr: stderr}
	root := a.rootCmd()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	var ue *usageError
	if !a.started && !errors.As(err, &ue) {
		err = &usageError{cmd: cmdName(cmd), msg: err.Error()}
	}
	if !errors.Is(err, errInvalid) {
		fmt.Fprintln(stderr, "keyward: "+oneLine(err.Error()))
	}
	return exitCode(err)
}

// cmdName is a command's path without "keyward": "key destroy".
func cmdName(c *cobra.Command) string {
	if c == nil {
		return ""
	}
	return strings.TrimPrefix(strings.TrimPrefix(c.CommandPath(), "keyward"), " ")
}

const rootLong = `keyward: use and manage keys that never leave a hardware device (a PKCS#11
token or a TPM 2.0), through the keyward daemon, keywardd.

Secrets travel only on stdin and stdout, never on the command line:
plaintexts and messages are read from stdin (at most 64 KiB), plaintexts and
data keys are written to stdout. Blobs, signatures and MACs are one base64
line (--binary for raw blobs). The daemon decides from the kernel's view of
this process (uid, gid, groups, systemd unit) what it may do; "keyward
status" shows how it sees you.

Commands that talk to the daemon dial --socket (default $KEYWARD_SOCKET, else
/run/keyward/keyward.sock) and give up after --timeout. Before sending
anything they check that the socket is served by root, by this user, by
--daemon-uid ($KEYWARD_DAEMON_UID), or by the packaged daemon's user
keywardd; who owns the socket file proves nothing. Every command takes
-h for its help, with an example.`

const rootExample = `  keyward key create payments/db-password --type aes-256-gcm
  printf %s "$DB_PASSWORD" | keyward wrap --key payments/db-password --context app=billing > db-password.kw
  keyward unwrap --context app=billing < db-password.kw
  keyward key rotate payments/db-password
  keyward rewrap --context app=billing < db-password.kw > db-password.kw.new
  keyward status
  keyward policy explain --uid 1000 --op unwrap --key payments/db-password --context app=billing
  keyward completion bash > /etc/bash_completion.d/keyward
  keywardd demo --dev-dir .dev/softhsm    # no daemon: a SoftHSM2 token directly (keywardd doctor, define-counter too)`

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "keyward [--socket PATH] [--timeout DURATION] COMMAND",
		Short:         "use and manage hardware-backed keys through keywardd",
		Long:          rootLong,
		Example:       rootExample,
		SilenceErrors: true,
		SilenceUsage:  true,
		Version:       version.String(),
		// Args stays nil: cobra then reports an unknown command.
		RunE: func(*cobra.Command, []string) error {
			return usagef("", "no command given")
		},
		PersistentPreRunE: func(c *cobra.Command, _ []string) error {
			if a.timeout < 0 {
				return usagef(cmdName(c), "--timeout %v is negative", a.timeout)
			}
			if a.daemonUID != "" {
				if _, err := lookupUID(a.daemonUID); err != nil {
					return usagef(cmdName(c), "--daemon-uid: %v", err)
				}
			}
			a.started = true
			return nil
		},
	}
	socket := os.Getenv(envSocket)
	if socket == "" {
		socket = client.DefaultSocket
	}
	pf := root.PersistentFlags()
	pf.StringVar(&a.socket, "socket", socket, "keywardd's Unix socket `PATH` ($"+envSocket+" when set)")
	pf.DurationVar(&a.timeout, "timeout", 10*time.Second, "give up on the daemon after `DURATION` (0: never)")
	pf.StringVar(&a.daemonUID, "daemon-uid", os.Getenv(envDaemonUID), "the `USER` (name or uid) keywardd runs as: a socket served by another uid, root apart, is refused before anything is sent "+
		"($"+envDaemonUID+" when set; root, this user and the packaged user keywardd are always trusted)")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return &usageError{cmd: cmdName(c), msg: err.Error()}
	})
	root.SetVersionTemplate(version.Line("keyward") + "\n")
	root.InitDefaultVersionFlag()
	root.Flags().Lookup("version").Usage = "print the version and exit"
	root.SetHelpFunc(a.help)
	root.SetHelpCommand(a.helpCmd())
	a.addCommands(root)
	completionCmds(root)
	walk(root, func(c *cobra.Command) { c.DisableFlagsInUseLine = true })
	return root
}

// addCommands adds every command to root, in its help group.
func (a *app) addCommands(root *cobra.Command) {
	// Help lists the commands by group, in this order.
	cobra.EnableCommandSorting = false
	for _, g := range []*cobra.Group{
		{ID: "data", Title: "Data commands (secrets only on stdin and stdout):"},
		{ID: "keys", Title: "Key commands:"},
		{ID: "daemon", Title: "The daemon:"},
		{ID: "local", Title: "Without the daemon:"},
		{ID: "other", Title: "Other commands:"},
	} {
		root.AddGroup(g)
	}
	add := func(group string, cmds ...*cobra.Command) {
		for _, c := range cmds {
			c.GroupID = group
			root.AddCommand(c)
		}
	}
	add("data", a.wrapCmd(), a.unwrapCmd(), a.rewrapCmd(), a.datakeyCmd(),
		a.signCmd(), a.verifyCmd(), a.macCmd(), a.verifyMacCmd(), a.pubkeyCmd())
	add("keys", a.keyCmd())
	add("keys", a.credentialCmd())
	add("keys", a.breakglassCmd())
	add("daemon", a.statusCmd())
	add("daemon", a.benchCmd())
	add("local", a.policyCmd(), a.auditCmd())
	root.SetHelpCommandGroupID("other")
	root.SetCompletionCommandGroupID("other")
}

// completionCmds adds the completion commands, with examples, and marks
// them local (no daemon needed).
func completionCmds(root *cobra.Command) {
	root.InitDefaultCompletionCmd()
	if comp, _, err := root.Find([]string{"completion"}); err == nil && comp != root {
		comp.Example = "  keyward completion bash > /etc/bash_completion.d/keyward\n  source <(keyward completion zsh)\n  keyward completion fish > ~/.config/fish/completions/keyward.fish"
		comp.Annotations = localOnly
		for _, sh := range comp.Commands() {
			sh.Annotations = localOnly
			switch sh.Name() {
			case "powershell":
				sh.Example = "  keyward completion powershell | Out-String | Invoke-Expression"
			default:
				sh.Example = "  keyward completion " + sh.Name() + " > keyward." + sh.Name()
			}
		}
	}
}

func walk(c *cobra.Command, fn func(*cobra.Command)) {
	fn(c)
	for _, sub := range c.Commands() {
		walk(sub, fn)
	}
}

// groupCmd is a command that only holds subcommands ("key", "policy"): run
// alone or with an unknown subcommand it is a usage error.
func groupCmd(name, short, example string, subs ...*cobra.Command) *cobra.Command {
	var names []string
	for _, s := range subs {
		names = append(names, s.Name())
	}
	c := &cobra.Command{
		Use:     name + " COMMAND",
		Short:   short,
		Example: example,
		Args:    cobra.ArbitraryArgs,
		RunE: func(c *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef(name, "missing subcommand (%s)", strings.Join(names, ", "))
			}
			return usagef(name, "unknown subcommand %q (want %s)", args[0], strings.Join(names, ", "))
		},
	}
	c.AddCommand(subs...)
	return c
}

func (a *app) helpCmd() *cobra.Command {
	return &cobra.Command{
		Use:                   "help [COMMAND]",
		DisableFlagsInUseLine: true,
		Short:                 `show this text, or a command's ("keyward help key destroy")`,
		Example:               "  keyward help\n  keyward help key destroy",
		Args:                  cobra.ArbitraryArgs,
		ValidArgsFunction: func(c *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
			target, _, err := c.Root().Find(args)
			if err != nil {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			var out []cobra.Completion
			for _, sub := range target.Commands() {
				if sub.IsAvailableCommand() && strings.HasPrefix(sub.Name(), toComplete) {
					out = append(out, cobra.CompletionWithDesc(sub.Name(), sub.Short))
				}
			}
			return out, cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(c *cobra.Command, args []string) error {
			target, rest, err := c.Root().Find(args)
			if err != nil || len(rest) > 0 || target == nil {
				return usagef("", "no help for %q", strings.Join(args, " "))
			}
			return target.Help()
		},
	}
}

// help writes a command's help: what it does, its synopsis (for a group,
// every command under it), flags, example and the exit statuses.
func (a *app) help(c *cobra.Command, _ []string) {
	w := c.OutOrStdout()
	var b strings.Builder
	text := c.Long
	if text == "" {
		text = c.Short
	}
	b.WriteString(strings.TrimSpace(text) + "\n\n")

	fmt.Fprintf(&b, "Usage:\n  %s\n", c.UseLine())
	switch {
	case !c.HasParent():
		for _, g := range c.Groups() {
			b.WriteString("\n" + g.Title + "\n")
			for _, sub := range c.Commands() {
				if sub.GroupID == g.ID && (sub.IsAvailableCommand() || sub.Name() == "help") {
					writeSynopses(&b, sub)
				}
			}
		}
	case c.HasAvailableSubCommands():
		b.WriteString("\nCommands:\n")
		for _, sub := range c.Commands() {
			if sub.IsAvailableCommand() {
				writeSynopses(&b, sub)
			}
		}
	}
	if fl := flagUsages(c.LocalNonPersistentFlags()); fl != "" {
		b.WriteString("\nFlags:\n" + fl)
	}
	if c.Annotations["local"] == "" {
		if !c.HasParent() {
			b.WriteString("\nGlobal flags:\n" + flagUsages(c.PersistentFlags()))
		} else if fl := flagUsages(c.InheritedFlags()); fl != "" {
			b.WriteString("\nGlobal flags:\n" + fl)
		}
	}
	if c.Example != "" {
		heading := "Example:"
		if !c.HasParent() {
			heading = "Examples:"
		}
		b.WriteString("\n" + heading + "\n" + strings.TrimRight(c.Example, "\n") + "\n")
	}
	b.WriteString("\n" + exitStatusText + "\n")
	io.WriteString(w, b.String())
}

// writeSynopses writes the usage line and summary of c, or of every
// command under it.
func writeSynopses(b *strings.Builder, c *cobra.Command) {
	switch {
	case c.Name() == "completion":
		var shells []string
		for _, sh := range c.Commands() {
			shells = append(shells, sh.Name())
		}
		fmt.Fprintf(b, "  %s %s\n      %s\n", c.CommandPath(), strings.Join(shells, "|"), "print the shell completion script (cobra's)")
	case c.HasAvailableSubCommands():
		for _, sub := range c.Commands() {
			if sub.IsAvailableCommand() {
				writeSynopses(b, sub)
			}
		}
	default:
		fmt.Fprintf(b, "  %s\n      %s\n", c.UseLine(), c.Short)
	}
}

// flagUsages renders a flag set without cobra's -h/--help.
func flagUsages(fs *pflag.FlagSet) string {
	out := pflag.NewFlagSet("", pflag.ContinueOnError)
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Name != "help" && !f.Hidden {
			out.AddFlag(f)
		}
	})
	return out.FlagUsagesWrapped(80)
}

// noArgs refuses positional arguments.
func noArgs(c *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef(cmdName(c), "unexpected argument %q", args[0])
	}
	return nil
}

// oneName takes exactly one positional argument, a key name.
func oneName(c *cobra.Command, args []string) error {
	switch {
	case len(args) == 0:
		return usagef(cmdName(c), "missing the key NAME")
	case len(args) > 1:
		return usagef(cmdName(c), "unexpected argument %q", args[1])
	}
	if err := keys.ValidateName(args[0]); err != nil {
		return usagef(cmdName(c), "%v", err)
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
	case errors.As(err, &ue), errors.Is(err, errConfigFile):
		return exitUsage
	case errors.Is(err, client.ErrPermissionDenied):
		return exitPermission
	case errors.Is(err, client.ErrUnavailable), errors.Is(err, client.ErrResourceExhausted):
		// Before the file checks: a missing socket is an absent daemon.
		return exitUnavailable
	case errors.Is(err, client.ErrNotFound):
		return exitNotFound
	case errors.Is(err, client.ErrInvalidName), errors.Is(err, client.ErrInvalidArgument):
		// The daemon refused the request as malformed: what the command
		// line gave (a name, a type, a length, a context) is wrong.
		return exitUsage
	case errors.Is(err, fs.ErrPermission):
		return exitPermission
	case errors.Is(err, keys.ErrUnavailable):
		return exitUnavailable
	case errors.Is(err, keys.ErrKeyNotFound), errors.Is(err, fs.ErrNotExist):
		return exitNotFound
	case errors.Is(err, keys.ErrInvalidName):
		// A key name outside the grammar, from the command line.
		return exitUsage
	}
	var ce *childError
	if errors.As(err, &ce) {
		return ce.code // keywardd bench-baseline's, with keyward's meanings
	}
	return exitFailed
}

// dial connects to the daemon with --daemon-uid's check (completion,
// which runs no hook, reaches here with the flag unchecked).
func (a *app) dial(ctx context.Context, opts ...client.Option) (*client.Client, error) {
	if a.daemonUID != "" {
		uid, err := lookupUID(a.daemonUID)
		if err != nil {
			return nil, usagef("", "--daemon-uid: %v", err)
		}
		opts = append(opts, client.WithDaemonUID(uid))
	}
	return client.Dial(ctx, a.socket, opts...)
}

// lookupUID resolves a user given by name or number.
func lookupUID(s string) (uint32, error) {
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		return uint32(n), nil
	}
	u, err := user.Lookup(s)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("user %q has uid %q: %w", s, u.Uid, err)
	}
	return uint32(n), nil
}

// oneLine keeps an error on one stderr line whatever a module put in it.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
