package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keyward/keyward/audit"
)

// reviewPolicy is the policy of TestAuditReport's daemon: an admin (this
// process, root), an application, a reader, and a rule nobody uses. A
// caller denied more than twice a minute is rate limited, so the trail
// holds refusal summaries too.
const reviewPolicy = `
[[rule]]
name = "admin"
uids = [0]
keys = ["**"]
operations = ["key.create"]

[[rule]]
name = "app"
uids = [12346]
keys = ["rev/app"]
operations = ["wrap", "unwrap"]

[[rule]]
name = "reader"
uids = [12347]
keys = ["rev/*"]
operations = ["key.read"]

[[rule]]
name = "unused"
uids = [12348]
keys = ["rev/**"]
operations = ["sign"]

[limits]
max_denied_per_minute = 2
`

// reviewDaemon runs keywardd --dev on a fresh token under dir with
// reviewPolicy and returns its socket, its audit directory and a function
// that stops it (refusal summaries are written at the latest then).
func reviewDaemon(t *testing.T, dir string) (socket, auditDir string, stop func()) {
	t.Helper()
	pol := filepath.Join(dir, "policy.toml")
	if err := os.WriteFile(pol, []byte(reviewPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	socket, auditDir = filepath.Join(dir, "k.sock"), filepath.Join(dir, "dev")
	d := exec.Command(filepath.Join(binDir, "keywardd"), "--dev", "--dev-dir", auditDir, "--config", pol, "--socket", socket)
	d.Env = testEnv(nil)
	d.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	var log bytes.Buffer
	d.Stderr = &log
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			d.Process.Signal(syscall.SIGTERM)
			if err := d.Wait(); err != nil {
				t.Errorf("keywardd did not stop cleanly: %v\n%s", err, log.String())
			}
		}
	}
	t.Cleanup(stop)
	if r := kw(t, socket, nil, "status", "--wait"); r.code != 0 {
		t.Fatalf("status --wait: exit %d %s\n%s", r.code, r.stderr, log.String())
	}
	return socket, auditDir, stop
}

// TestAuditReport: calls from distinct uids through a real keywardd, some
// allowed, some denied by the policy, some refused by the rate limit
// (summarised); the report's counts equal a count made here from the
// records themselves, the unused rule is listed, and a tampered log is
// reported broken with exit 1.
func TestAuditReport(t *testing.T) {
	startDaemon(t) // builds keywardd into binDir
	if os.Getuid() != 0 {
		t.Skip("needs root, to call keywardd as other uids")
	}
	dir, err := os.MkdirTemp("", "kwr-") // short: a socket path has at most 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	socket, auditDir, stop := reviewDaemon(t, dir)
	reviewCalls(t, socket)
	stop()

	cfg := filepath.Join(dir, "keyward.toml")
	full := "[backend]\nkind = \"pkcs11\"\nmodule = \"/nonexistent/module.so\"\ntoken = \"t\"\n" + reviewPolicy
	if err := os.WriteFile(cfg, []byte(full), 0o600); err != nil {
		t.Fatal(err)
	}
	// The dev directory holds the token too: name the log's files.
	files, _, err := audit.Chain(filepath.Join(auditDir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	report := func(args ...string) result {
		return keyward(t, nil, append(append([]string{"audit", "report"}, args...), files...)...)
	}
	checkReviewJSON(t, report("--config", cfg, "--json"), auditDir)

	text := report("--config", cfg)
	if text.code != 0 || !regexp.MustCompile(`(?m)^rule\s+unused\s+uid 12348\s+rev/\*\*\s+sign\s+-$`).MatchString(text.stdout) ||
		!regexp.MustCompile(`(?m)^12346\s+-\s+-\s+rev/app\s+wrap\s+3\s+0\s+0\s`).MatchString(text.stdout) {
		t.Errorf("text report: exit %d\n%s", text.code, text.stdout)
	}

	// Past --max-rows, later keys fold into their subject and operation's
	// "(other keys)" row, counts kept.
	capped := report("--max-rows", "2")
	if capped.code != 0 || !regexp.MustCompile(`(?m)^note: more rows than --max-rows: \d+ calls`).MatchString(capped.stdout) ||
		!regexp.MustCompile(`(?m)^\d+\s+\S+\s+-\s+\(other keys\)\s+\S+\s+\d+`).MatchString(capped.stdout) {
		t.Errorf("--max-rows 2: exit %d\n%s", capped.code, capped.stdout)
	}

	// A byte changed in a record: exit 1, the break named on stdout.
	last := files[len(files)-1]
	b, err := os.ReadFile(last)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, []byte(`"rev/app"`))
	b[i+5] = 'b'
	if err := os.WriteFile(last, b, 0o600); err != nil {
		t.Fatal(err)
	}
	broken := report()
	if broken.code != exitFailed || broken.stderr != "" || !strings.HasPrefix(broken.stdout, "broken: "+last+":") {
		t.Errorf("tampered log: exit %d, stderr %q\n%s", broken.code, broken.stderr, broken.stdout)
	}
}

// reviewCalls makes TestAuditReport's calls, as root (the admin) and as
// two other uids: allowed, denied by the policy, refused by the rate limit.
func reviewCalls(t *testing.T, socket string) {
	app := &syscall.Credential{Uid: 12346, Gid: uint32(os.Getgid())}
	reader := &syscall.Credential{Uid: 12347, Gid: uint32(os.Getgid())}
	ok(t, socket, nil, "key", "create", "rev/app", "--type", "aes-256-gcm")
	for range 3 {
		if r := kwAs(t, app, socket, []byte("s3cret"), "wrap", "--key", "rev/app"); r.code != 0 {
			t.Fatalf("wrap as the app: exit %d %s", r.code, r.stderr)
		}
	}
	if r := kwAs(t, reader, socket, nil, "key", "show", "rev/app"); r.code != 0 {
		t.Fatalf("key show as the reader: exit %d %s", r.code, r.stderr)
	}
	for range 5 { // denied until past the limit of 2, then rate limited
		if r := kwAs(t, reader, socket, []byte("x"), "wrap", "--key", "rev/app"); r.code == 0 {
			t.Fatal("the reader could wrap")
		}
	}
}

// checkReviewJSON checks audit report --json's output r against a count
// made from the log in auditDir, what reviewCalls made, and the rules
// used.
func checkReviewJSON(t *testing.T, r result, auditDir string) {
	t.Helper()
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("audit report: exit %d, %s", r.code, r.stderr)
	}
	var rep reviewJSON
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	got := map[string][3]uint64{}
	for _, row := range rep.Rows {
		got[rowName(*row.UID, row.Unit, row.Key, row.Op)] = [3]uint64{row.Allowed, row.Denied, row.Failed}
	}
	want := handCountDir(t, auditDir)
	if !mapsEqual(got, want) {
		t.Errorf("report %v\nhand count %v", got, want)
	}
	// What the calls made, as the test knows it.
	for name, c := range map[string][3]uint64{
		rowName(12346, "", "rev/app", "wrap"):     {3, 0, 0},
		rowName(12347, "", "rev/app", "key.read"): {1, 0, 0},
		rowName(12347, "", "rev/app", "wrap"):     {0, 3, 0},
		rowName(12347, "", "", "wrap"):            {0, 2, 0}, // the summary's
	} {
		if got[name] != c {
			t.Errorf("%s: %v, want %v", name, got[name], c)
		}
	}
	if !rep.Chain.OK || rep.Chain.Records == 0 {
		t.Errorf("chain %+v", rep.Chain)
	}
	used := map[string]bool{}
	for _, g := range rep.Grants {
		used[g.Name] = g.Used
	}
	if !mapsEqual(used, map[string]bool{"admin": true, "app": true, "reader": true, "unused": false}) {
		t.Errorf("grants used: %v", used)
	}

}

func rowName(uid uint32, unit, key, op string) string {
	return strconv.FormatUint(uint64(uid), 10) + " " + unit + " " + key + " " + op
}

func mapsEqual[K comparable, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

var summaryCountRE = regexp.MustCompile(`count=\d+ ops=(\S+) `)

// handCountDir counts the records of the log in dir from their JSON, apart
// from the report's code: allowed OK and INVALID, denied PERMISSION_DENIED
// and the refusal summaries' counts (no key), failed the rest; intent
// records not at all.
func handCountDir(t *testing.T, dir string) map[string][3]uint64 {
	t.Helper()
	files, _, err := audit.Chain(filepath.Join(dir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][3]uint64{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range bytes.Split(bytes.TrimRight(b, "\x00"), []byte("\n")) {
			if len(line) == 0 {
				continue
			}
			var r struct {
				Peer struct {
					UID  uint32
					Unit string
				}
				Op, Key, Result, Reason string
			}
			if err := json.Unmarshal(line, &r); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			name := rowName(r.Peer.UID, r.Peer.Unit, r.Key, r.Op)
			c := out[name]
			switch {
			case r.Result == "STARTED":
				continue
			case r.Op == "refused":
				m := summaryCountRE.FindStringSubmatch(r.Reason)
				if m == nil {
					t.Fatalf("summary %q", r.Reason)
				}
				for _, item := range strings.Split(m[1], ",") {
					op, num, _ := strings.Cut(item, ":")
					n, _ := strconv.ParseUint(num, 10, 64)
					sn := rowName(r.Peer.UID, r.Peer.Unit, "", op)
					sc := out[sn]
					sc[1] += n
					out[sn] = sc
				}
				continue
			case r.Result == "OK" || r.Result == "INVALID":
				c[0]++
			case r.Result == "PERMISSION_DENIED":
				c[1]++
			default:
				c[2]++
			}
			out[name] = c
		}
	}
	return out
}

// TestAuditReportCommandLine: audit report's exit statuses and output on
// logs written by the audit package (records timed now): --since, a log
// with a rotated file missing, an empty one, missing and ambiguous
// directories, bad flags.
func TestAuditReportCommandLine(t *testing.T) {
	rotated := t.TempDir()
	cur, _ := auditLog(t, rotated, 42, 2048)
	chain, _, err := audit.Chain(cur)
	if err != nil || len(chain) < 3 {
		t.Fatalf("Chain: %v, %v", chain, err)
	}
	twoLogs := t.TempDir()
	auditLog(t, twoLogs, 1, 0)
	os.WriteFile(filepath.Join(twoLogs, "other.log"), nil, 0o600)
	emptyLog := filepath.Join(t.TempDir(), "audit.log")
	if err := os.WriteFile(emptyLog, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	withTorn := t.TempDir()
	tornPath, _ := auditLog(t, withTorn, 3, 0)
	os.WriteFile(tornPath+".torn-20250101T000000.000000000Z", []byte("{\"seq\":4"), 0o600)
	badConfig := filepath.Join(t.TempDir(), "keyward.toml")
	os.WriteFile(badConfig, []byte("no_such_key = 1\n"), 0o600)
	noRules := filepath.Join(t.TempDir(), "keyward.toml")
	os.WriteFile(noRules, []byte("[backend]\nkind = \"pkcs11\"\nmodule = \"/nonexistent.so\"\ntoken = \"t\"\n"), 0o600)
	row := `(?m)^1000\s+\S+\s+-\s+payments/db\s+unwrap\s+%d\s+0\s+0\s`
	tests := []struct {
		name   string
		args   []string
		code   int
		stdout []string // regexps stdout must match
		stderr string   // substring of the one stderr line; "" for none
		absent string   // a substring stdout must not hold
	}{
		{name: "dir", args: []string{"--dir", rotated}, stdout: []string{`^ok: 42 records verified`, `window: all records: 42 records`, fmt.Sprintf(row, 42)}},
		{name: "since a period", args: []string{"--dir", rotated, "--since", "30d"}, stdout: []string{`window: since \S+: 42 records`, fmt.Sprintf(row, 42)}},
		{name: "since a later time", args: []string{"--dir", rotated, "--since", "2100-01-01T00:00:00Z"},
			stdout: []string{`^ok: 42 records verified`, `window: since 2100-01-01T00:00:00Z: 0 records`, `no calls in the window`}},
		{name: "rotated file missing", args: append([]string{chain[0]}, chain[2:]...), code: exitFailed,
			stdout: []string{`^broken: ` + regexp.QuoteMeta(chain[2]) + `:1 \(seq \d+\): seq \d+ follows`, `the counts below cover only the \d+ records before it`}},
		{name: "empty log", args: []string{emptyLog}, code: exitFailed, stdout: []string{`^broken: no records`}},
		{name: "empty log, allowed", args: []string{"--allow-empty", emptyLog}, stdout: []string{`no calls in the window`}},
		{name: "json", args: []string{"--dir", rotated, "--json"}, stdout: []string{`"ok": true`, `"broken": null`, `"since": null`, `"allowed": 42`}},
		{name: "dir with a torn tail", args: []string{"--dir", withTorn}, stdout: []string{`^ok: 3 records`, `^note: ` + regexp.QuoteMeta(tornPath) + `\.torn-\S+ holds a torn tail`}},
		{name: "json without --config", args: []string{"--dir", rotated, "--json"}, stdout: []string{`^\}`}, absent: `"grants"`},
		{name: "json, a config without rules", args: []string{"--dir", rotated, "--json", "--config", noRules}, stdout: []string{`"grants": \[\]`}},
		{name: "a config without rules", args: []string{"--dir", rotated, "--config", noRules}, stdout: []string{`^grants used in the window: 0 of 0$`}},
		{name: "max rows 0", args: []string{"--dir", rotated, "--max-rows", "0"}, code: exitUsage, stderr: "--max-rows"},
		{name: "since malformed", args: []string{"--dir", rotated, "--since", "yesterday"}, code: exitUsage, stderr: "--since"},
		{name: "dir missing", args: []string{"--dir", filepath.Join(rotated, "nope")}, code: exitNotFound, stderr: "nope"},
		{name: "dir with two logs", args: []string{"--dir", twoLogs}, code: exitUsage, stderr: "several logs"},
		{name: "config missing", args: []string{"--dir", rotated, "--config", filepath.Join(rotated, "nope.toml")}, code: exitNotFound, stderr: "nope.toml"},
		{name: "config refused", args: []string{"--dir", rotated, "--config", badConfig}, code: exitUsage, stderr: "no_such_key"},
		{name: "from-seq alone", args: []string{"--dir", rotated, "--from-seq", "3"}, code: exitUsage, stderr: "together"},
		{name: "dir and files", args: []string{"--dir", rotated, cur}, code: exitUsage, stderr: "not both"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := keyward(t, nil, append([]string{"audit", "report"}, tc.args...)...)
			if r.code != tc.code {
				t.Fatalf("exit %d, want %d; stdout:\n%s\nstderr: %s", r.code, tc.code, r.stdout, r.stderr)
			}
			for _, re := range tc.stdout {
				if !regexp.MustCompile("(?m)" + re).MatchString(r.stdout) {
					t.Errorf("stdout does not match %q:\n%s", re, r.stdout)
				}
			}
			if tc.absent != "" && strings.Contains(r.stdout, tc.absent) {
				t.Errorf("stdout holds %q:\n%s", tc.absent, r.stdout)
			}
			if tc.stderr == "" && r.stderr != "" {
				t.Errorf("stderr %q, want nothing", r.stderr)
			} else if tc.stderr != "" {
				checkErrLine(t, r, tc.stderr)
			}
		})
	}
}

// TestParseSince: a period counts back from now; a time is taken as it is.
func TestParseSince(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Time
		bad  bool
	}{
		{in: "", want: time.Time{}},
		{in: "0", want: time.Time{}},
		{in: "30d", want: now.Add(-30 * 24 * time.Hour)},
		{in: "12h", want: now.Add(-12 * time.Hour)},
		{in: "90m", want: now.Add(-90 * time.Minute)},
		{in: "2026-11-01T00:00:00Z", want: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)},
		{in: "30", bad: true},
		{in: "-1d", bad: true},
		{in: "2026-11-01", bad: true},
	} {
		got, err := parseSince("audit report", tc.in, now)
		if tc.bad != (err != nil) || !got.Equal(tc.want) {
			t.Errorf("parseSince(%q) = %v, %v", tc.in, got, err)
		}
	}
}
