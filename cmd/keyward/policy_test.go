package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/keyward/keyward/policy"
)

// policyConfig is a keywardd config with rules of every kind: uids and a
// unit with a context condition, a group by name ("root") and by number
// holding only admin operations, a deep glob, and a unit alone.
const policyConfig = `socket = "/run/keyward/keyward.sock"

[backend]
token = "keyward"
pin_file = "/etc/keyward/pin"

[[rule]]
name = "payments service"
uids = [1000]
units = ["payments.service"]
keys = ["payments/*"]
operations = ["wrap", "unwrap", "rewrap", "datakey"]
context = { app = "billing" }

[[rule]]
name = "key admins"
groups = ["root"]
gids = [990]
keys = ["**"]
operations = ["key.create", "key.rotate", "key.disable", "key.enable", "key.destroy", "key.read", "key.set-min-version"]

[[rule]]
name = "release signing"
uids = [1001]
keys = ["release/**"]
operations = ["sign", "verify", "public-key"]

[[rule]]
units = ["batch-nightly.service"]
keys = ["batch/job-?"]
operations = ["mac", "verify-mac"]
`

// writeConfig writes body to keyward.toml in a fresh temp dir.
func writeConfig(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "keyward.toml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// normLines splits output into lines with runs of spaces folded, so that
// table columns compare whatever their widths.
func normLines(s string) []string {
	var out []string
	for _, l := range strings.Split(strings.TrimSuffix(s, "\n"), "\n") {
		lead := ""
		if strings.HasPrefix(l, "  ") {
			lead = "  "
		}
		out = append(out, lead+strings.Join(strings.Fields(l), " "))
	}
	return out
}

func TestPolicyExplain(t *testing.T) {
	cfg := writeConfig(t, policyConfig)
	tests := []struct {
		name string
		args []string
		code int
		want []string // lines of stdout, in this order (others may come between)
		not  []string // substrings stdout must not contain
	}{
		{
			name: "payments service by uid",
			args: []string{"--uid", "1000", "--gid", "1000", "--op", "unwrap", "--key", "payments/db-password", "--context", "app=billing"},
			want: []string{
				`allowed by rule "payments service"`,
				`identity: uid=1000 gid=1000 groups=[] unit=""`,
				`  rule "payments service": allows`,
				`  rule "key admins": identity does not match (gid 1000 and groups [] not in groups [root=0 990]); operation unwrap not granted`,
				`  rule "release signing": identity does not match (uid 1000 not in users [1001]); operation unwrap not granted; key payments/db-password not matched by [release/**]`,
				`  rule "rule #4": identity does not match (unit "" not in units [batch-nightly.service]); operation unwrap not granted; key payments/db-password not matched by [batch/job-?]`,
			},
		},
		{
			name: "payments service by unit",
			args: []string{"--uid", "4242", "--gid", "4242", "--unit", "payments.service", "--op", "datakey", "--key", "payments/db", "--context", "app=billing", "--context", "extra=ok"},
			want: []string{`allowed by rule "payments service"`, `identity: uid=4242 gid=4242 groups=[] unit="payments.service"`},
		},
		{
			name: "context missing",
			args: []string{"--uid", "1000", "--gid", "1000", "--op", "wrap", "--key", "payments/db"},
			code: exitFailed,
			want: []string{"denied", `  rule "payments service": context app=billing required (app missing)`},
		},
		{
			name: "context differs, value not echoed",
			args: []string{"--uid", "1000", "--gid", "1000", "--op", "wrap", "--key", "payments/db", "--context", "app=s3cret-elsewhere"},
			code: exitFailed,
			want: []string{"denied", `  rule "payments service": context app=billing required (app differs)`},
			not:  []string{"s3cret-elsewhere"},
		},
		{
			name: "star stays within a segment",
			args: []string{"--uid", "1000", "--gid", "1000", "--op", "wrap", "--key", "payments/db/old", "--context", "app=billing"},
			code: exitFailed,
			want: []string{"denied", `  rule "payments service": key payments/db/old not matched by [payments/*]`},
		},
		{
			name: "other unit",
			args: []string{"--uid", "4242", "--gid", "4242", "--unit", "billing.service", "--op", "wrap", "--key", "payments/db", "--context", "app=billing"},
			code: exitFailed,
			want: []string{"denied", `  rule "payments service": identity does not match (uid 4242 not in users [1000], unit "billing.service" not in units [payments.service])`},
		},
		{
			name: "key admins cannot unwrap",
			args: []string{"--uid", "4242", "--gid", "990", "--op", "unwrap", "--key", "payments/db-password", "--context", "app=billing"},
			code: exitFailed,
			want: []string{"denied", `identity: uid=4242 gid=990 groups=[] unit=""`, `  rule "key admins": operation unwrap not granted`},
			not:  []string{"allows"},
		},
		{
			name: "key admins cannot wrap, group by name",
			args: []string{"--uid", "4242", "--gid", "4242", "--groups", "root", "--op", "wrap", "--key", "payments/db", "--context", "app=billing"},
			code: exitFailed,
			want: []string{"denied", `identity: uid=4242 gid=4242 groups=[0] unit=""`, `  rule "key admins": operation wrap not granted`},
		},
		{
			name: "key admins rotate, supplementary gid",
			args: []string{"--uid", "4242", "--gid", "4242", "--groups", "7,990", "--op", "key.rotate", "--key", "payments/db-password"},
			want: []string{`allowed by rule "key admins"`, `identity: uid=4242 gid=4242 groups=[7 990] unit=""`, `  rule "key admins": allows`},
		},
		{
			name: "key admins, primary group by name resolved from passwd",
			args: []string{"--uid", "0", "--op", "key.read", "--key", "anything/at/all"},
			want: []string{`allowed by rule "key admins"`, `identity: uid=0 gid=0 groups=[] unit=""`},
		},
		{
			name: "adopt is not granted to key admins",
			args: []string{"--uid", "4242", "--gid", "990", "--op", "key.adopt", "--key", "payments/db"},
			code: exitFailed,
			want: []string{"denied", `  rule "key admins": operation key.adopt not granted`},
		},
		{
			name: "deep glob",
			args: []string{"--uid", "1001", "--gid", "1001", "--op", "sign", "--key", "release/app/v2/linux"},
			want: []string{`allowed by rule "release signing"`},
		},
		{
			name: "deep glob needs a segment below",
			args: []string{"--uid", "1001", "--gid", "1001", "--op", "sign", "--key", "release"},
			code: exitFailed,
			want: []string{"denied", `  rule "release signing": key release not matched by [release/**]`},
		},
		{
			name: "signer cannot unwrap",
			args: []string{"--uid", "1001", "--gid", "1001", "--op", "unwrap", "--key", "release/a"},
			code: exitFailed,
			want: []string{"denied", `  rule "release signing": operation unwrap not granted`},
		},
		{
			name: "unnamed rule, unit and question mark",
			args: []string{"--uid", "4242", "--gid", "4242", "--unit", "batch-nightly.service", "--op", "mac", "--key", "batch/job-7"},
			want: []string{`allowed by rule "rule #4"`},
		},
		{
			name: "unit names match exactly",
			args: []string{"--uid", "4242", "--gid", "4242", "--unit", "batch-nightly.scope", "--op", "mac", "--key", "batch/job-7"},
			code: exitFailed,
			want: []string{"denied", `  rule "rule #4": identity does not match (unit "batch-nightly.scope" not in units [batch-nightly.service])`},
		},
		{
			name: "question mark is one character",
			args: []string{"--uid", "4242", "--gid", "4242", "--unit", "batch-nightly.service", "--op", "verify-mac", "--key", "batch/job-17"},
			code: exitFailed,
			want: []string{"denied", `  rule "rule #4": key batch/job-17 not matched by [batch/job-?]`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := keyward(t, nil, append([]string{"policy", "explain", "--config", cfg}, tt.args...)...)
			if r.code != tt.code || r.stderr != "" {
				t.Errorf("exit %d, stderr %q; want %d and nothing", r.code, r.stderr, tt.code)
			}
			lines := normLines(r.stdout)
			if len(lines) != 6 {
				t.Errorf("%d lines, want 6 (decision, identity, 4 rules):\n%s", len(lines), r.stdout)
			}
			at := 0
			for _, w := range tt.want {
				i := slices.Index(lines[at:], w)
				if i < 0 {
					t.Errorf("no line %q (in order) in:\n%s", w, r.stdout)
					continue
				}
				at += i + 1
			}
			for _, n := range tt.not {
				if strings.Contains(r.stdout, n) {
					t.Errorf("stdout contains %q:\n%s", n, r.stdout)
				}
			}
		})
	}
}

func TestPolicyExplainNoRules(t *testing.T) {
	cfg := writeConfig(t, "[backend]\ntoken = \"keyward\"\n")
	r := keyward(t, nil, "policy", "explain", "--config", cfg, "--uid", "0", "--op", "wrap", "--key", "a")
	want := "denied\nidentity: uid=0 gid=0 groups=[] unit=\"\"\n  no rules: the policy denies everything\n"
	if r.code != exitFailed || r.stdout != want || r.stderr != "" {
		t.Errorf("exit %d, stdout %q, stderr %q; want 1, %q", r.code, r.stdout, r.stderr, want)
	}
	r = keyward(t, nil, "policy", "report", "--config", cfg)
	if r.code != 0 || r.stdout != "no rules: the policy denies everything\n" {
		t.Errorf("report: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestPolicyUsageErrors(t *testing.T) {
	cfg := writeConfig(t, policyConfig)
	base := []string{"policy", "explain", "--config", cfg}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{name: "no subcommand", args: []string{"policy"}, want: "missing subcommand (explain, report)"},
		{name: "unknown subcommand", args: []string{"policy", "check"}, want: `unknown subcommand "check"`},
		{name: "no uid", args: append(base, "--op", "wrap", "--key", "a"), want: "--uid is required"},
		{name: "uid not a number", args: append(base, "--uid", "root", "--op", "wrap", "--key", "a"), want: "--uid"},
		{name: "uid -1", args: append(base, "--uid", "4294967295", "--gid", "0", "--op", "wrap", "--key", "a"), want: "(uid_t)-1"},
		{name: "unknown uid needs gid", args: append(base, "--uid", "4242424", "--op", "wrap", "--key", "a"), want: "--gid is required: uid 4242424 is not in the user database"},
		{name: "no op", args: append(base, "--uid", "0", "--key", "a"), want: "--op is required"},
		{name: "unknown op", args: append(base, "--uid", "0", "--op", "encrypt", "--key", "a"), want: `operation "encrypt"`},
		{name: "op wildcard", args: append(base, "--uid", "0", "--op", "key.*", "--key", "a"), want: "no wildcards"},
		{name: "no key", args: append(base, "--uid", "0", "--op", "wrap"), want: "--key is required"},
		{name: "key glob", args: append(base, "--uid", "0", "--op", "wrap", "--key", "payments/*"), want: "invalid key name"},
		{name: "unknown group", args: append(base, "--uid", "0", "--groups", "no-such-group-kw", "--op", "wrap", "--key", "a"), want: `unknown group "no-such-group-kw"`},
		{name: "group -1", args: append(base, "--uid", "0", "--groups", "4294967295", "--op", "wrap", "--key", "a"), want: "not a valid 32-bit id"},
		{name: "unit without type", args: append(base, "--uid", "0", "--unit", "payments", "--op", "wrap", "--key", "a"), want: "type suffix"},
		{name: "unit no caller runs in", args: append(base, "--uid", "0", "--unit", "backup.timer", "--op", "wrap", "--key", "a"), want: "never in a .timer unit"},
		{name: "bad context", args: append(base, "--uid", "0", "--op", "wrap", "--key", "a", "--context", "app"), want: "want key=value"},
		{name: "argument", args: append(base, "--uid", "0", "--op", "wrap", "--key", "a", "now"), want: `unexpected argument "now"`},
		{name: "report argument", args: []string{"policy", "report", "--config", cfg, "now"}, want: `unexpected argument "now"`},
		{name: "report unknown flag", args: []string{"policy", "report", "--yaml"}, want: "--yaml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := keyward(t, nil, tt.args...)
			if r.code != exitUsage {
				t.Errorf("exit %d, want %d (stderr %q)", r.code, exitUsage, r.stderr)
			}
			if r.stdout != "" {
				t.Errorf("stdout on a usage error: %q", r.stdout)
			}
			checkErrLine(t, r, tt.want)
		})
	}
}

// TestPolicyConfigErrors: a file keywardd would refuse is exit 2 for both
// commands, never 1, which explain keeps for "denied".
func TestPolicyConfigErrors(t *testing.T) {
	backend := "[backend]\ntoken = \"keyward\"\n"
	rule := "[[rule]]\nname = \"r\"\nuids = [1]\n"
	all := "keys = [\"**\"]\n"
	tests := []struct {
		name string
		body string // "" for no file at all
		path string // instead of a file with body
		code int
		want []string
	}{
		{name: "unknown key", body: "sockett = \"/x\"\n" + backend, code: exitUsage, want: []string{`keyward.toml:1: unknown key "sockett"`}},
		{name: "unknown rule key", body: backend + rule + all + "operations = [\"wrap\"]\nuser = [\"root\"]\n", code: exitUsage, want: []string{`unknown key "rule.user"`}},
		{name: "bad value", body: "log_level = \"loud\"\n" + backend, code: exitUsage, want: []string{"log_level"}},
		{name: "no backend token", body: "", code: exitUsage, want: []string{"set exactly one of token and uri"}},
		{name: "operation wildcard", body: backend + rule + all + "operations = [\"key.*\"]\n", code: exitUsage, want: []string{`rule "r": operation "key.*": there are no wildcards`, "invalid policy"}},
		{name: "unknown user", body: backend + rule + all + "operations = [\"wrap\"]\nusers = [\"no-such-user-kw\"]\n", code: exitUsage, want: []string{`unknown user "no-such-user-kw"`}},
		{name: "every problem on one line", body: backend + rule + all + "operations = [\"wrap\", \"key.*\"]\nusers = [\"no-such-user-kw\"]\n[[rule]]\nkeys = [\"**\"]\noperations = [\"wrap\"]\n",
			code: exitUsage, want: []string{`unknown user "no-such-user-kw"`, "no wildcards", "rule #2: no users, groups"}},
		{name: "bad glob", body: backend + rule + "operations = [\"wrap\"]\nkeys = [\"a/**/b\"]\n", code: exitUsage, want: []string{`key pattern "a/**/b"`, "only as the whole last segment"}},
		{name: "unit with a wildcard", body: backend + "[[rule]]\nunits = [\"batch-?.timer\"]\nkeys = [\"**\"]\noperations = [\"mac\"]\n", code: exitUsage, want: []string{`rule #1: unit "batch-?.timer"`}},
		{name: "timer unit", body: backend + "[[rule]]\nunits = [\"backup.timer\"]\nkeys = [\"**\"]\noperations = [\"mac\"]\n", code: exitUsage, want: []string{`rule #1: unit "backup.timer": callers run in service, scope or socket units`}},
		{name: "context on sign", body: backend + rule + all + "operations = [\"wrap\", \"sign\"]\ncontext = { app = \"x\" }\n", code: exitUsage, want: []string{`rule "r": context pairs, but sign requests carry no context`}},
		{name: "sign on the checkpoint key", body: "audit_checkpoint_key = \"audit/ckpt\"\n" + backend + rule + "keys = [\"audit/ckpt\"]\noperations = [\"sign\"]\n", code: exitUsage,
			want: []string{`rule[1].keys: grants sign on "audit/ckpt", which is audit_checkpoint_key`}},
		{name: "uri with a PIN", body: "[backend]\nuri = \"pkcs11:token=k?pin-value=1234\"\n", code: exitUsage, want: []string{"backend.uri: carries pin-value"}},
		{name: "no such file", path: "absent.toml", code: exitNotFound, want: []string{"no such file"}},
		{name: "a directory", path: ".", code: exitUsage, want: []string{"is a directory"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := tt.path
			if path == "" {
				path = writeConfig(t, tt.body)
			} else {
				path = filepath.Join(t.TempDir(), path)
			}
			for _, args := range [][]string{
				{"policy", "report", "--config", path},
				{"policy", "explain", "--config", path, "--uid", "1", "--gid", "1", "--op", "wrap", "--key", "a"},
			} {
				r := keyward(t, nil, args...)
				if r.code != tt.code {
					t.Errorf("%s: exit %d, want %d (stderr %q)", args[1], r.code, tt.code, r.stderr)
				}
				if r.stdout != "" {
					t.Errorf("%s: stdout %q", args[1], r.stdout)
				}
				for _, w := range tt.want {
					checkErrLine(t, r, w)
				}
			}
		})
	}
}

func TestPolicyReport(t *testing.T) {
	cfg := writeConfig(t, policyConfig)
	r := keyward(t, nil, "policy", "report", "--config", cfg)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	admin := "key.create,key.rotate,key.disable,key.enable,key.destroy,key.read,key.set-min-version"
	want := []string{
		"SUBJECT OPERATIONS KEYS CONTEXT RULE",
		"uid 1000 wrap,unwrap,rewrap,datakey payments/* app=billing payments service",
		"uid 1001 sign,verify,public-key release/** - release signing",
		"group root (gid 0) " + admin + " ** - key admins",
		"gid 990 " + admin + " ** - key admins",
		"unit batch-nightly.service mac,verify-mac batch/job-? - rule #4",
		"unit payments.service wrap,unwrap,rewrap,datakey payments/* app=billing payments service",
	}
	if got := normLines(r.stdout); !slices.Equal(got, want) {
		t.Errorf("report:\n%s\nwant (spaces folded):\n%s", r.stdout, strings.Join(want, "\n"))
	}

	r = keyward(t, nil, "policy", "report", "--config", cfg, "--json")
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("--json: exit %d, stderr %q", r.code, r.stderr)
	}
	var rep struct {
		Rules  int
		Grants []struct {
			Subject    string
			Operations []string
			Keys       []string
			Context    map[string]string
			Rule       string
		}
		Breakglass []breakglassJSON
	}
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rep); err != nil {
		t.Fatalf("--json: %v\n%s", err, r.stdout)
	}
	if rep.Rules != 4 || len(rep.Grants) != 6 {
		t.Fatalf("--json: %d rules, %d grants; want 4, 6", rep.Rules, len(rep.Grants))
	}
	g := rep.Grants[2]
	if g.Subject != "group root (gid 0)" || g.Rule != "key admins" || slices.Contains(g.Operations, "unwrap") || len(g.Operations) != 7 ||
		!slices.Equal(g.Keys, []string{"**"}) || g.Context == nil || len(g.Context) != 0 {
		t.Errorf("--json grant 2: %+v", g)
	}
	if g := rep.Grants[0]; g.Subject != "uid 1000" || g.Context["app"] != "billing" {
		t.Errorf("--json grant 0: %+v", g)
	}
	if !strings.Contains(r.stdout, `"context": {}`) {
		t.Errorf("--json: a grant without context lacks \"context\": {}:\n%s", r.stdout)
	}
}

// TestPolicyReportSubjects: user and group names resolve at load and show
// with their ids; context values that would break a table cell are quoted.
func TestPolicyReportSubjects(t *testing.T) {
	cfg := writeConfig(t, `[backend]
token = "keyward"

[[rule]]
name = "by name"
users = ["root"]
groups = ["root", "0"]
keys = ["a/b", "c/**"]
operations = ["unwrap", "wrap"]
context = { "team" = "blue green", "env" = "prod" }
`)
	r := keyward(t, nil, "policy", "report", "--config", cfg)
	want := []string{
		"SUBJECT OPERATIONS KEYS CONTEXT RULE",
		`user root (uid 0) wrap,unwrap a/b,c/** env=prod,team="blue green" by name`,
		`group root (gid 0) wrap,unwrap a/b,c/** env=prod,team="blue green" by name`,
	}
	if got := normLines(r.stdout); r.code != 0 || !slices.Equal(got, want) {
		t.Errorf("exit %d, stderr %q, report:\n%s\nwant (spaces folded):\n%s", r.code, r.stderr, r.stdout, strings.Join(want, "\n"))
	}
}

// TestPolicyExitCodes: denied is 1 with nothing on stderr, a refused file 2,
// an unreadable one 3; the config error keeps every problem on one line.
func TestPolicyExitCodes(t *testing.T) {
	if got := exitCode(errDenied); got != exitFailed {
		t.Errorf("exitCode(errDenied) = %d, want %d", got, exitFailed)
	}
	cfgErr := &configError{cmd: "policy report", err: fmt.Errorf("f: %w", errors.Join(
		fmt.Errorf("rule #1: a: %w", policy.ErrInvalidPolicy), fmt.Errorf("rule #2: b: %w", policy.ErrInvalidPolicy)))}
	if got := exitCode(cfgErr); got != exitUsage {
		t.Errorf("exitCode(configError) = %d, want %d", got, exitUsage)
	}
	if want := "policy report: f: rule #1: a: invalid policy; rule #2: b: invalid policy"; cfgErr.Error() != want {
		t.Errorf("configError = %q, want %q", cfgErr.Error(), want)
	}
	if !errors.Is(cfgErr, policy.ErrInvalidPolicy) {
		t.Error("configError does not wrap its cause")
	}
	if os.Geteuid() == 0 {
		t.Log("running as root: skipping the unreadable-file case")
		return
	}
	path := writeConfig(t, "[backend]\ntoken = \"keyward\"\n")
	if err := os.Chmod(path, 0); err != nil {
		t.Fatal(err)
	}
	_, _, err := loadPolicy("policy report", path)
	if got := exitCode(err); got != exitPermission {
		t.Errorf("unreadable file: exit %d (%v), want %d", got, err, exitPermission)
	}
}
