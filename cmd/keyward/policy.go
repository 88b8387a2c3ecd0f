package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/policy"
)

// The policy commands read keywardd's config file and answer from its
// compiled policy, exactly as the daemon would, without the daemon or the
// device: they are for writing rules and reviewing access, offline.

// errDenied: policy explain found the request denied. The command has said
// so on stdout; like verify's "invalid", it is exit status 1 with nothing on
// stderr.
var errDenied = fmt.Errorf("denied: %w", errInvalid)

// errConfigFile marks a config file that keywardd would refuse: exit status 2,
// like any other input the command line got wrong. Kept apart from 1 so that a
// script expecting "denied" (1) does not pass on a broken file.
var errConfigFile = errors.New("invalid config file")

// configError is a config file error on one line: config.CheckConfig joins
// every problem of every rule with newlines.
type configError struct {
	cmd string
	err error
}

func (e *configError) Error() string {
	return e.cmd + ": " + strings.ReplaceAll(e.err.Error(), "\n", "; ")
}

func (e *configError) Unwrap() []error { return []error{e.err, errConfigFile} }

// loadPolicy reads and compiles the config as keywardd --check-config does.
// A file that does not exist or may not be read keeps its error (4, 3);
// anything else, a file keywardd would refuse or a path that is no file, is
// errConfigFile (2). So policy explain exits 1 for "denied" and nothing else.
// The Reserved returned is what the daemon withholds under this config.
func loadPolicy(cmd, path string) (*policy.Policy, policy.Reserved, error) {
	cfg, pol, err := loadConfig(cmd, path)
	if err != nil {
		return nil, policy.Reserved{}, err
	}
	return pol, policy.Reserved{CheckpointKey: cfg.AuditCheckpointKey}, nil
}

// loadConfig is loadPolicy's reading, returning the config itself (audit
// report takes the log's path from it).
func loadConfig(cmd, path string) (config.Config, *policy.Policy, error) {
	cfg, pol, err := config.CheckConfig(path)
	switch {
	case err == nil:
		return cfg, pol, nil
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, fs.ErrPermission):
		return cfg, nil, fmt.Errorf("%s: %w", cmd, err)
	}
	return cfg, nil, &configError{cmd: cmd, err: err}
}

const policyGroupExample = `  keyward policy explain --config /etc/keyward/keyward.toml --uid 1000 --op unwrap --key payments/db-password --context app=billing
  keyward policy report --config /etc/keyward/keyward.toml`

func (a *app) policyCmd() *cobra.Command {
	c := groupCmd("policy", "check what keywardd's policy allows, from its config file (no daemon needed)",
		policyGroupExample, a.policyExplainCmd(), a.policyReportCmd())
	c.Annotations = localOnly
	return c
}

// configFlag adds --config FILE, keywardd's default when not given.
func configFlag(c *cobra.Command, path *string) {
	c.Flags().StringVar(path, "config", config.DefaultConfigPath, "keywardd's configuration `FILE`")
}

const explainLong = `Answers "may this caller do this?" from keywardd's configuration file, as the
daemon would, and says why for every rule. The file is checked as
"keywardd --check-config" checks it (strict keys, values, every rule, user
and group names resolved on this host); no daemon, socket or device is used.

The caller is given as the daemon would see it from the kernel: --uid, --gid
(default: the uid's primary group, when the uid is in the user database;
required otherwise), --groups for supplementary groups, names or numbers,
comma-separated or repeated (none unless given: "id -G USER" lists a user's),
and --unit for its systemd unit. The daemon knows a caller's unit only on
Linux >= 6.5 (SO_PEERPIDFD); elsewhere rules naming units match nobody.

Output: the decision, "allowed by rule "NAME"" or "denied"; the identity
evaluated; then one line per rule, in config order (the first rule that
allows decides): "allows", or every condition that rule fails; then, apart,
each break-glass path: "could get OP on KEY with approval from ..." (the
caller may request it; nothing is allowed until someone approves).

Exit status 0 when allowed; 1 when denied, and only then (nothing on
stderr); 2 for a bad command line or a config file keywardd would refuse; 3
when the file may not be read; 4 when it does not exist.`

const explainExample = `  keyward policy explain --config /etc/keyward/keyward.toml \
      --uid 1000 --op unwrap --key payments/db-password --context app=billing
  keyward policy explain --uid 990 --groups keyward-ops --op unwrap --key payments/db-password
  keyward policy explain --uid 0 --gid 0 --unit payments.service --op wrap --key payments/x`

type explainOptions struct {
	config string
	uid    uint32
	gid    uint32
	groups []string
	unit   string
	op     string
	key    string
	ctx    contextFlag
}

func (a *app) policyExplainCmd() *cobra.Command {
	var o explainOptions
	c := &cobra.Command{
		Use:         "explain [--config FILE] --uid N [--gid N] [--groups G,...] [--unit UNIT] --op OP --key NAME [--context k=v]...",
		Short:       "say whether the policy allows a caller an operation on a key, and why, rule by rule",
		Long:        explainLong,
		Example:     explainExample,
		Annotations: localOnly,
		Args:        noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cmd := cmdName(c)
			id, req, err := o.request(c)
			if err != nil {
				return err
			}
			pol, res, err := loadPolicy(cmd, o.config)
			if err != nil {
				return err
			}
			return printExplain(a.stdout, pol, res, id, req)
		},
	}
	f := c.Flags()
	configFlag(c, &o.config)
	f.Uint32Var(&o.uid, "uid", 0, "the caller's uid `N` (required)")
	f.Uint32Var(&o.gid, "gid", 0, "the caller's primary gid `N` (default: the uid's primary group)")
	f.StringSliceVar(&o.groups, "groups", nil, "the caller's supplementary `GROUPS`: names or gids, comma-separated")
	f.StringVar(&o.unit, "unit", "", "the caller's systemd `UNIT` (\"payments.service\")")
	f.StringVar(&o.op, "op", "", "the operation `OP`: "+opNames())
	f.StringVar(&o.key, "key", "", "the key `NAME`")
	f.Var(&o.ctx, "context", "a context pair of the request; repeat for more")
	c.RegisterFlagCompletionFunc("op", func(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
		var out []cobra.Completion
		for _, op := range allOperations() {
			out = append(out, string(op))
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	})
	return c
}

func allOperations() []policy.Operation {
	return slices.Concat(policy.DataOperations, policy.AdminOperations)
}

func opNames() string {
	var s []string
	for _, op := range allOperations() {
		s = append(s, string(op))
	}
	return strings.Join(s, ", ")
}

// request turns the flags into the identity and request to decide.
func (o *explainOptions) request(c *cobra.Command) (policy.Identity, policy.Request, error) {
	cmd := cmdName(c)
	var id policy.Identity
	var req policy.Request
	if !c.Flags().Changed("uid") {
		return id, req, usagef(cmd, "--uid is required")
	}
	if o.uid == ^uint32(0) {
		return id, req, usagef(cmd, "--uid %d is (uid_t)-1, which is no user", o.uid)
	}
	id.UID = o.uid
	if c.Flags().Changed("gid") {
		if o.gid == ^uint32(0) {
			return id, req, usagef(cmd, "--gid %d is (gid_t)-1, which is no group", o.gid)
		}
		id.GID = o.gid
	} else {
		u, err := user.LookupId(strconv.FormatUint(uint64(o.uid), 10))
		if err != nil {
			return id, req, usagef(cmd, "--gid is required: uid %d is not in the user database", o.uid)
		}
		gid, err := strconv.ParseUint(u.Gid, 10, 32)
		if err != nil {
			return id, req, usagef(cmd, "--gid is required: user %s has primary gid %q, not a number", u.Username, u.Gid)
		}
		id.GID = uint32(gid)
	}
	for _, g := range o.groups {
		gid, err := parseGroup(strings.TrimSpace(g))
		if err != nil {
			return id, req, usagef(cmd, "--groups: %v", err)
		}
		if !slices.Contains(id.Groups, gid) {
			id.Groups = append(id.Groups, gid)
		}
	}
	if o.unit != "" {
		if err := policy.PeerUnit(o.unit); err != nil {
			return id, req, usagef(cmd, "--unit: %s", strings.TrimSuffix(err.Error(), ": "+policy.ErrInvalidPolicy.Error()))
		}
		id.Unit = o.unit
	}
	if o.op == "" {
		return id, req, usagef(cmd, "--op is required (%s)", opNames())
	}
	op, err := policy.ParseOperation(o.op)
	if err != nil {
		return id, req, usagef(cmd, "--op: %v", err)
	}
	if err := checkKey(c, o.key); err != nil {
		return id, req, err
	}
	pairs, err := o.ctx.pairs(cmd)
	if err != nil {
		return id, req, err
	}
	return id, policy.Request{Op: op, Key: o.key, Context: pairs}, nil
}

// parseGroup reads a gid or resolves a group name on this host.
func parseGroup(s string) (uint32, error) {
	if s == "" {
		return 0, fmt.Errorf("empty group")
	}
	if strings.Trim(s, "0123456789") == "" {
		n, err := strconv.ParseUint(s, 10, 32)
		if err != nil || uint32(n) == ^uint32(0) {
			return 0, fmt.Errorf("gid %s is not a valid 32-bit id", s)
		}
		return uint32(n), nil
	}
	g, err := user.LookupGroup(s)
	if err != nil {
		return 0, fmt.Errorf("unknown group %q", s)
	}
	n, err := strconv.ParseUint(g.Gid, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("group %q has gid %q, not a number", s, g.Gid)
	}
	return uint32(n), nil
}

// printExplain prints the decision, the identity and every rule's verdict,
// and returns errDenied when the request is denied.
func printExplain(w io.Writer, pol *policy.Policy, res policy.Reserved, id policy.Identity, req policy.Request) error {
	d, verdicts := pol.Explain(id, req, res)
	var b strings.Builder
	if d.Allowed {
		b.WriteString(d.Reason + "\n")
	} else {
		b.WriteString("denied\n")
	}
	fmt.Fprintf(&b, "identity: %s\n", id)
	if len(verdicts) == 0 {
		b.WriteString("  no rules: the policy denies everything\n")
	}
	for _, v := range verdicts {
		fmt.Fprintf(&b, "  rule %s: %s\n", strconv.Quote(v.Rule), v.Why)
	}
	writeBreakglassPaths(&b, pol, id, req)
	if _, err := io.WriteString(w, b.String()); err != nil {
		return err
	}
	if !d.Allowed {
		return errDenied
	}
	return nil
}

const reportLong = `Lists every subject the policy names (users and uids, groups and gids, systemd
units) and what each may do: the operations, the key patterns, the context
pairs a request must carry, and the rule that grants it; one line per
subject and rule. This is the access review a security team runs: anything
not listed is denied. Users by uid, then groups by gid, then units by name.

The file is checked as "keywardd --check-config" checks it (names resolved
on this host); no daemon, socket or device is used. With --json:
{"rules": N, "grants": [{"subject", "operations", "never", "keys", "context", "rule"}],
"breakglass": [{"policy", "requesters", "approvers", "operations", "keys",
"max_duration", "approvals", "request_ttl"}]}.

Break-glass policies ([[breakglass]]) are listed apart, after the grants:
who could get which operations on which keys with whose approval, for how
long at most. Nothing in them is allowed until someone approves.

Exit status 0; 2 for a bad command line or a config file keywardd would
refuse; 3 when the file may not be read; 4 when it does not exist.`

// grantJSON is one line of policy report --json.
type grantJSON struct {
	Subject    string            `json:"subject"`
	Operations []string          `json:"operations"`
	Never      []string          `json:"never,omitempty"` // listed by the rule, never usable by this subject
	Keys       []string          `json:"keys"`
	Context    map[string]string `json:"context"`
	Rule       string            `json:"rule"`
}

type reportJSON struct {
	Rules  int         `json:"rules"`
	Grants []grantJSON `json:"grants"`
	// Breakglass are the paths to access with approval, apart from the
	// grants: nothing in them is allowed until someone approves.
	Breakglass []breakglassJSON `json:"breakglass"`
}

func (a *app) policyReportCmd() *cobra.Command {
	var path string
	var asJSON bool
	c := &cobra.Command{
		Use:   "report [--config FILE] [--json]",
		Short: "list every subject the policy names and what it may do",
		Long:  reportLong,
		Example: `  keyward policy report --config /etc/keyward/keyward.toml
  keyward policy report --json | jq -r '.grants[] | select(.operations | index("unwrap")) | .subject'`,
		Annotations: localOnly,
		Args:        noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			pol, _, err := loadPolicy(cmdName(c), path)
			if err != nil {
				return err
			}
			grants := pol.Report()
			if asJSON {
				out := reportJSON{Rules: pol.Rules(), Grants: []grantJSON{}}
				for _, g := range grants {
					gj := grantJSON{Subject: g.Subject, Keys: g.Keys, Context: g.Context, Rule: g.Rule}
					gj.Operations = []string{}
					for _, op := range g.Operations {
						gj.Operations = append(gj.Operations, string(op))
					}
					for _, op := range g.Never {
						gj.Never = append(gj.Never, string(op))
					}
					if gj.Context == nil {
						gj.Context = map[string]string{}
					}
					out.Grants = append(out.Grants, gj)
				}
				out.Breakglass = breakglassReport(pol)
				return writeJSON(a.stdout, out)
			}
			if err := printGrants(a.stdout, grants); err != nil {
				return err
			}
			return printBreakglass(a.stdout, pol)
		},
	}
	configFlag(c, &path)
	c.Flags().BoolVar(&asJSON, "json", false, "print the grants as JSON")
	return c
}

func printGrants(w io.Writer, grants []policy.Grant) error {
	if len(grants) == 0 {
		_, err := fmt.Fprintln(w, "no rules: the policy denies everything")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SUBJECT\tOPERATIONS\tKEYS\tCONTEXT\tRULE")
	for _, g := range grants {
		var ops []string
		for _, op := range g.Operations {
			ops = append(ops, string(op))
		}
		for _, op := range g.Never {
			ops = append(ops, string(op)+"(never:units-only)")
		}
		ctx := "-"
		if len(g.Context) > 0 {
			var pairs []string
			for _, k := range slices.Sorted(maps.Keys(g.Context)) {
				pairs = append(pairs, cell(k)+"="+cell(g.Context[k]))
			}
			ctx = strings.Join(pairs, ",")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", g.Subject, strings.Join(ops, ","), strings.Join(g.Keys, ","), ctx, g.Rule)
	}
	return tw.Flush()
}

// cell renders a config-supplied context key or value for a table cell:
// bare when that is unambiguous, Go-quoted otherwise.
func cell(s string) string {
	if s == "" || strings.ContainsAny(s, " \t,=\"") || strconv.Quote(s) != `"`+s+`"` {
		return strconv.Quote(s)
	}
	return s
}
