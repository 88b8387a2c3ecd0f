package systemd_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyward/keyward/audit"
	"github.com/keyward/keyward/internal/systemdtest"
)

// startsEnv sets how many unit starts TestRealManager times (the README's
// figures are from 200); make test does 20.
const startsEnv = "KEYWARD_CREDENTIAL_STARTS"

var (
	cliOnce sync.Once
	cliPath string
	cliErr  error
)

// keywardCLI builds cmd/keyward once.
func keywardCLI(t *testing.T) string {
	cliOnce.Do(func() {
		cliPath = filepath.Join(filepath.Dir(keywardd), "keyward")
		if out, err := exec.Command("go", "build", "-o", cliPath, "../cmd/keyward").CombinedOutput(); err != nil {
			cliErr = fmt.Errorf("build keyward: %v\n%s", err, out)
		}
	})
	if cliErr != nil {
		t.Fatal(cliErr)
	}
	return cliPath
}

// testDropIn points the shipped keyward.service at the fresh build, a
// SoftHSM2 token in the state directory with a plain PIN file, and a short
// watchdog; everything else (the sandbox) is the shipped unit's.
const testDropIn = `[Unit]
StartLimitIntervalSec=0

[Service]
ExecStart=
ExecStart=/usr/local/bin/keywardd --config /etc/keyward/keyward.toml
LoadCredentialEncrypted=
Environment=SOFTHSM2_CONF=/var/lib/keyward/softhsm/softhsm2.conf
WatchdogSec=3s
RestartSec=1s
`

const testConfig = `audit_log = "/var/log/keyward/audit.log"

[backend]
kind = "pkcs11"
module = "/usr/lib/softhsm/libsofthsm2.so"
token = "keyward"
pin_file = "/var/lib/keyward/softhsm/pin"

[[rule]]
name = "root administers"
uids = [0]
keys = ["**"]
operations = ["key.create", "key.rotate", "key.read", "credential.put"]

[[rule]]
name = "payments"
units = ["payments.service", "credbench.service", "copycat.service"]
keys = ["payments/**"]
operations = ["credential", "wrap"]
`

// unit is a test unit that may start again and again.
func unit(service string) systemdtest.File {
	return systemdtest.File{Data: []byte("[Unit]\nStartLimitIntervalSec=0\n\n[Service]\n" + service)}
}

// readmeRecipe returns the three lines of the README's credential recipe:
// the put command, the unit's LoadCredential= line and what the service runs.
func readmeRecipe(t *testing.T) (put, load, app string) {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(b), "\n## Secrets for systemd services")
	_, block, ok2 := strings.Cut(sec, "```sh\n")
	block, _, ok3 := strings.Cut(block, "```")
	lines := strings.Split(strings.TrimSpace(block), "\n")
	if !ok || !ok2 || !ok3 || len(lines) != 3 {
		t.Fatalf("README: no three-line recipe under \"## Secrets for systemd services\"")
	}
	strip := func(s string) string {
		if i := strings.Index(s, "  #"); i >= 0 {
			s = s[:i]
		}
		return strings.TrimSpace(s)
	}
	return strip(lines[0]), strip(lines[1]), strip(lines[2])
}

// bootKeyward boots a guest with keyward installed from this tree: the
// shipped units, sysusers.d and tmpfiles.d, the fresh binaries, test units.
func bootKeyward(t *testing.T, load, app string) *systemdtest.Guest {
	t.Helper()
	files := map[string]systemdtest.File{
		"/etc/systemd/system/keyward.service.d/test.conf": {Data: []byte(testDropIn)},
		"/etc/keyward/keyward.toml":                       {Data: []byte(testConfig), Mode: 0o640},
		"/usr/local/bin/payments-app":                     {Data: []byte("#!/bin/sh\n" + app + "\n"), Mode: 0o755},
		"/etc/systemd/system/payments.service": unit("Type=oneshot\nRemainAfterExit=yes\nUser=nobody\nSupplementaryGroups=keyward\n" +
			load + "\nExecStart=/usr/local/bin/payments-app\n" +
			"ExecStart=/bin/sh -c 'printf x | keyward wrap --key payments/api >/dev/null && echo wrap allowed'\n"),
		"/etc/systemd/system/other.service": unit("Type=oneshot\nUser=nobody\nSupplementaryGroups=keyward\n" +
			"ExecStart=/bin/sh -c 'printf x | keyward wrap --key payments/api'\n"),
		"/etc/systemd/system/thief.service":     unit("Type=oneshot\nUser=nobody\n" + load + "\nExecStart=/bin/true\n"),
		"/etc/systemd/system/copycat.service":   unit("Type=oneshot\nUser=nobody\n" + load + "\nExecStart=/bin/true\n"),
		"/etc/systemd/system/credbench.service": unit("Type=oneshot\nUser=nobody\n" + load + "\nExecStart=/bin/true\n"),
	}
	for src, dst := range map[string]string{
		"keyward.service": "/etc/systemd/system/keyward.service", "keyward.socket": "/etc/systemd/system/keyward.socket",
		"keyward-credentials.socket": "/etc/systemd/system/keyward-credentials.socket",
		"sysusers.d/keyward.conf":    "/etc/sysusers.d/keyward.conf", "tmpfiles.d/keyward.conf": "/etc/tmpfiles.d/keyward.conf",
		keywardd: "/usr/local/bin/keywardd", keywardCLI(t): "/usr/local/bin/keyward",
		"../softhsm-test/provision-token.sh": "/usr/local/sbin/keyward-provision-softhsm2-token",
	} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		files[dst] = systemdtest.File{Data: b, Mode: map[bool]os.FileMode{true: 0o755, false: 0o644}[strings.HasPrefix(dst, "/usr/")]}
	}
	g := systemdtest.Boot(t, systemdtest.Options{Files: files, Mask: systemdtest.HostServices()})
	// The host's files show through the overlay: start from nothing. The
	// token is provisioned as the daemon's user, in its state directory.
	g.Sh(t, `rm -rf /var/lib/keyward /var/log/keyward /etc/keyward/credstore
systemd-sysusers /etc/sysusers.d/keyward.conf
systemd-tmpfiles --create /etc/tmpfiles.d/keyward.conf
runuser -u keywardd -- /usr/local/sbin/keyward-provision-softhsm2-token --dir /var/lib/keyward/softhsm --label keyward >/dev/null
systemctl daemon-reload
systemctl start keyward.socket keyward-credentials.socket`)
	return g
}

// show returns systemctl show's value of property for unit.
func show(g *systemdtest.Guest, unit, property string) string {
	out, _ := g.Run(nil, "systemctl", "show", "-P", property, unit)
	return strings.TrimSpace(out)
}

// waitFor polls cond every 50 ms for up to 30 s (only to end a hang).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRealManager runs the shipped units under systemd as PID 1: activation
// by the first connection, Type=notify, STATUS=, the sandbox in force, unit
// identity of real callers, LoadCredential= end to end (the README's recipe
// verbatim), activation by a credential request, the audit trail, a clean
// stop, and the watchdog restarting a daemon whose token went away.
func TestRealManager(t *testing.T) {
	put, load, app := readmeRecipe(t)
	g := bootKeyward(t, load, app)
	t.Run("activation", func(t *testing.T) { activation(t, g) })
	t.Run("sandbox", func(t *testing.T) { sandbox(t, g) })
	secret := "pw-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	t.Run("credentials", func(t *testing.T) { credentials(t, g, put, secret) })
	t.Run("unit identity", func(t *testing.T) { unitIdentity(t, g) })
	t.Run("activation by a credential request", func(t *testing.T) {
		g.Sh(t, "systemctl stop keyward.service")
		if got := show(g, "keyward.service", "ActiveState"); got != "inactive" {
			t.Fatalf("keyward.service %s after stop", got)
		}
		g.Sh(t, "systemctl restart payments.service")
		if got := show(g, "keyward.service", "ActiveState"); got != "active" {
			t.Fatalf("keyward.service %s after a credential request", got)
		}
	})
	t.Run("forged requests", func(t *testing.T) { forged(t, g, secret) })
	t.Run("audit trail", func(t *testing.T) { auditTrail(t, g) })
	t.Run("timing", func(t *testing.T) { timing(t, g) })
	t.Run("clean stop", func(t *testing.T) { cleanStop(t, g) })
	t.Run("watchdog", func(t *testing.T) { watchdog(t, g) })
}

func activation(t *testing.T, g *systemdtest.Guest) {
	if got := show(g, "keyward.service", "ActiveState"); got != "inactive" {
		t.Fatalf("keyward.service is %s before any connection", got)
	}
	out := g.Sh(t, "keyward status")
	if !strings.Contains(out, "pkcs11") {
		t.Fatalf("status: %s", out)
	}
	if got := show(g, "keyward.service", "ActiveState"); got != "active" {
		t.Fatalf("keyward.service is %s after the first connection (Type=notify: active only after READY=1)", got)
	}
	if st := show(g, "keyward.service", "StatusText"); st == "" {
		t.Fatal("no STATUS= from keywardd")
	}
}

// sandbox checks the running daemon's process: the shipped sandbox is in
// force, not an approximation of it.
func sandbox(t *testing.T, g *systemdtest.Guest) {
	pid := show(g, "keyward.service", "MainPID")
	out := g.Sh(t, `p=`+pid+`
grep -E '^(Uid|NoNewPrivs|Seccomp|Seccomp_filters|CapEff|CapBnd|CapAmb):' /proc/$p/status
echo "ipc $(readlink /proc/$p/ns/ipc) $(readlink /proc/1/ns/ipc)"
awk '$5 == "/home" {print "home", $6}' /proc/$p/mountinfo
awk '$5 == "/proc" {print "proc", $NF}' /proc/$p/mountinfo
echo "net $(readlink /proc/$p/ns/net) $(readlink /proc/1/ns/net)"
awk '$5 == "/" {print "root", $6}' /proc/$p/mountinfo
awk '$5 == "/var/lib/keyward" {print "state", $6}' /proc/$p/mountinfo
awk '$5 == "/tmp" {print "tmp", $6}' /proc/$p/mountinfo
id -u keywardd`)
	f := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	var uid string
	for sc.Scan() {
		w := strings.Fields(sc.Text())
		switch len(w) {
		case 0:
		case 1:
			uid = w[0]
		default:
			f[strings.TrimSuffix(w[0], ":")] = strings.Join(w[1:], " ")
		}
	}
	net, ipc := strings.Fields(f["net"]), strings.Fields(f["ipc"])
	for _, c := range []struct {
		what string
		ok   bool
	}{
		{"runs as keywardd, not root", strings.HasPrefix(f["Uid"]+" ", uid+" ") && uid != "0"},
		{"NoNewPrivileges=yes", f["NoNewPrivs"] == "1"},
		{"SystemCallFilter= (seccomp filter mode)", f["Seccomp"] == "2"},
		{"CapabilityBoundingSet= empty", f["CapBnd"] == "0000000000000000" && f["CapEff"] == "0000000000000000"},
		{"PrivateNetwork=yes", len(net) == 2 && net[0] != net[1]},
		{"ProtectSystem=strict: / read-only", strings.HasPrefix(f["root"], "ro")},
		{"ReadWritePaths=/var/lib/keyward", strings.HasPrefix(f["state"], "rw")},
		{"PrivateTmp=yes", f["tmp"] != ""},
		{"PrivateIPC=yes", len(ipc) == 2 && ipc[0] != ipc[1]},
		{"ProtectHome=yes", f["home"] != ""},
		{"ProcSubset=pid, ProtectProc=default", strings.Contains(f["proc"], "subset=pid") && !strings.Contains(f["proc"], "hidepid")},
		// SystemCallFilter= (two lines), MemoryDenyWriteExecute=, RestrictNamespaces=,
		// RestrictRealtime=, LockPersonality=... each add a filter.
		{"seccomp filters stacked", seccompFilters(f["Seccomp_filters"]) >= 3},
	} {
		if !c.ok {
			t.Errorf("%s: not in force\n%s", c.what, out)
		}
	}
}

// credentials: the README's recipe run verbatim; the unit (User=nobody)
// reads its secret; other units get nothing and fail to start.
func credentials(t *testing.T, g *systemdtest.Guest, put, secret string) {
	g.Sh(t, "keyward key create payments/creds --type aes-256-gcm && keyward key create payments/api --type aes-256-gcm")
	if out, err := g.Run(nil, "/usr/bin/env", "DB_PASSWORD="+secret, "/bin/sh", "-ec", put); err != nil {
		t.Fatalf("the README's put: %v\n%s", err, out)
	}
	g.Sh(t, `printf %s x | keyward credential put --unit credbench.service --id db-password --key payments/creds
mkdir -m 0700 /etc/keyward/credstore/copycat.service
cp -p /etc/keyward/credstore/payments.service/db-password /etc/keyward/credstore/copycat.service/
chown -R keywardd:keywardd /etc/keyward/credstore/copycat.service
systemctl start payments.service`)
	journalHas(t, g, "payments.service", secret)
	ls := g.Sh(t, `keyward credential list`)
	if !regexp.MustCompile(`payments\.service +db-password +payments/creds +v1 `).MatchString(ls) || strings.Contains(ls, secret) {
		t.Fatalf("credential list:\n%s", ls)
	}
	for _, u := range []string{"thief.service", "copycat.service"} {
		if out, err := g.Run(nil, "systemctl", "start", u); err == nil {
			t.Errorf("%s started without a credential of its own: %s", u, out)
		}
		if r := show(g, u, "Result"); r == "success" {
			t.Errorf("%s: result %s", u, r)
		}
		journalHas(t, g, u, "status=243/CREDENTIALS") // systemd failed it at the credentials step
		if strings.Contains(g.Sh(t, "journalctl -o cat -u "+u), secret) {
			t.Errorf("%s got the secret", u)
		}
	}
}

// unitIdentity: keywardd sees a real caller's unit; the rule naming
// payments.service grants it, other.service is denied.
func unitIdentity(t *testing.T, g *systemdtest.Guest) {
	journalHas(t, g, "payments.service", "wrap allowed")
	if out, err := g.Run(nil, "systemctl", "start", "other.service"); err == nil {
		t.Errorf("other.service was allowed to wrap: %s", out)
	}
	journalHas(t, g, "other.service", "not allowed")
}

type record struct {
	Peer struct {
		UID  uint32 `json:"uid"`
		Unit string `json:"unit"`
	} `json:"peer"`
	Op     string `json:"op"`
	Key    string `json:"key"`
	Result string `json:"result"`
	Reason string `json:"reason"`
}

func auditRecords(t *testing.T, g *systemdtest.Guest) []record {
	t.Helper()
	lines, err := audit.FileLines(g.Path("/var/log/keyward/audit.log")) // complete records: never the free space
	if err != nil {
		t.Fatal(err)
	}
	var out []record
	for _, l := range lines {
		var r record
		if err := json.Unmarshal(l, &r); err != nil {
			t.Fatalf("audit line %q: %v", l, err)
		}
		out = append(out, r)
	}
	return out
}

// auditTrail: each request is in the audit log with its unit.
func auditTrail(t *testing.T, g *systemdtest.Guest) {
	want := map[string]string{ // unit -> result of its credential request
		"payments.service": "OK", "thief.service": "NOT_FOUND", "copycat.service": "DECRYPTION_FAILED",
	}
	seen := map[string]bool{}
	for _, r := range auditRecords(t, g) {
		switch {
		case r.Op == "credential" && want[r.Peer.Unit] == r.Result:
			seen[r.Peer.Unit] = true
		case r.Op == "wrap" && r.Peer.Unit == "other.service" && r.Result == "PERMISSION_DENIED":
			seen["other wrap"] = true
		case r.Op == "wrap" && r.Peer.Unit == "payments.service" && r.Result == "OK":
			seen["payments wrap"] = true
		}
	}
	for _, k := range []string{"payments.service", "thief.service", "copycat.service", "other wrap", "payments wrap"} {
		if !seen[k] {
			t.Errorf("no audit record for %s", k)
		}
	}
}

var tookRE = regexp.MustCompile(`"TOOK_US"\s*:\s*"(\d+)"`)

// timing starts credbench.service N times and reports keywardd's time from
// accepting systemd's connection to the credential written (its TOOK_US).
func timing(t *testing.T, g *systemdtest.Guest) {
	n := 20
	if s := os.Getenv(startsEnv); s != "" {
		n, _ = strconv.Atoi(s)
	}
	g.Sh(t, fmt.Sprintf("for i in $(seq %d); do systemctl restart credbench.service; done", n))
	var us []int
	// journald may not have stored the last lines yet: wait for them.
	waitFor(t, fmt.Sprintf("keywardd's log of %d credentials served", n), func() bool {
		out := g.Sh(t, "journalctl -u keyward.service -o json --output-fields=MESSAGE,TOOK_US,KEYWARD_UNIT KEYWARD_UNIT=credbench.service")
		us = us[:0]
		for _, m := range tookRE.FindAllStringSubmatch(out, -1) {
			v, _ := strconv.Atoi(m[1])
			us = append(us, v)
		}
		return len(us) >= n
	})
	slices.Sort(us)
	p := func(q float64) time.Duration {
		return time.Duration(us[min(len(us)-1, int(q*float64(len(us))))]) * time.Microsecond
	}
	t.Logf("connect to credential written, %d unit starts on SoftHSM2: p50 %v, p99 %v (%s=N for more)", len(us), p(0.50), p(0.99), startsEnv)
}

func cleanStop(t *testing.T, g *systemdtest.Guest) {
	g.Sh(t, "systemctl stop keyward.service")
	if r, s := show(g, "keyward.service", "Result"), show(g, "keyward.service", "ExecMainStatus"); r != "success" || s != "0" {
		t.Fatalf("stop: result %s, exit status %s", r, s)
	}
}

// watchdog: with the token gone, the health probe fails, keywardd stops
// pinging and systemd restarts it; with the token back it serves again.
func watchdog(t *testing.T, g *systemdtest.Guest) {
	g.Sh(t, "keyward status >/dev/null") // started again by its socket
	before := show(g, "keyward.service", "NRestarts")
	// Only a timeout logged from here on counts: on a loaded machine an
	// earlier step may have had one of its own.
	out, err := g.Run(nil, "journalctl", "-u", "keyward.service", "-n", "1", "--show-cursor")
	_, cursor, ok := strings.Cut(out, "-- cursor: ")
	if err != nil || !ok {
		t.Fatalf("journal cursor: %v: %q", err, out)
	}
	cursor = strings.TrimSpace(cursor)
	g.Sh(t, "mv /var/lib/keyward/softhsm/tokens /var/lib/keyward/softhsm/tokens.away")
	waitFor(t, "a watchdog restart", func() bool {
		out, _ := g.Run(nil, "journalctl", "-u", "keyward.service", "-o", "cat", "--after-cursor", cursor, "--grep", "Watchdog timeout")
		return strings.Contains(out, "Watchdog timeout")
	})
	g.Sh(t, "mv /var/lib/keyward/softhsm/tokens.away /var/lib/keyward/softhsm/tokens")
	waitFor(t, "keyward.service active again", func() bool {
		return show(g, "keyward.service", "ActiveState") == "active" && show(g, "keyward.service", "NRestarts") != before
	})
	g.Sh(t, "keyward status >/dev/null")
}

// forgedRequest binds an abstract address ($1, "" for none), connects to
// the credential socket and prints how many bytes came back and whether the
// answer is all zeros; python3 is on the host and so in the guest.
const forgedRequest = `import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
if sys.argv[1]:
    s.bind("\0" + sys.argv[1])
try:
    s.connect("/run/keyward/credentials.sock")
except OSError as e:
    print("connect:", e.strerror); sys.exit(0)
b = b""
while True:
    c = s.recv(65536)
    if not c: break
    b += c
print(len(b), "zeros" if b.count(0) == len(b) else "data:" + b.hex())
`

// forged: requests that are not systemd's for the unit they name get no
// secret from the real, sandboxed keywardd, and leave a PERMISSION_DENIED
// record: root outside the unit's cgroup with systemd's address, an address
// not in systemd's form, and a non-root process (which the socket's mode
// already keeps out).
func forged(t *testing.T, g *systemdtest.Guest, secret string) {
	before := len(auditRecords(t, g))
	for _, c := range []struct {
		name string
		argv []string
		want string
	}{
		{"root outside the unit", []string{"python3", "-c", forgedRequest, "1f2e3d/unit/payments.service/db-password"}, "1048577 zeros"},
		{"address not in systemd's form", []string{"python3", "-c", forgedRequest, "payments.service/db-password"}, "1048577 zeros"},
		{"no address", []string{"python3", "-c", forgedRequest, ""}, "1048577 zeros"},
		{"non-root", []string{"setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "python3", "-c", forgedRequest, "1f2e3d/unit/payments.service/db-password"}, "connect: Permission denied"},
	} {
		out, err := g.Run(nil, c.argv...)
		if err != nil || strings.TrimSpace(out) != c.want || strings.Contains(out, fmt.Sprintf("%x", secret)) {
			t.Errorf("%s: %v %q, want %q", c.name, err, out, c.want)
		}
	}
	var denied int
	for _, r := range auditRecords(t, g)[before:] {
		if r.Op == "credential" && r.Result == "PERMISSION_DENIED" && r.Peer.UID == 0 {
			denied++
		}
	}
	if denied != 3 {
		t.Errorf("%d PERMISSION_DENIED credential records for 3 forged requests", denied)
	}
}

func seccompFilters(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

// journalHas waits until unit's journal holds text (journald stores what a
// unit wrote a little after the unit is done).
func journalHas(t *testing.T, g *systemdtest.Guest, unit, text string) {
	t.Helper()
	var out string
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out, text) {
		if time.Now().After(deadline) {
			t.Fatalf("%s's journal never said %q:\n%s", unit, text, out)
		}
		time.Sleep(20 * time.Millisecond)
		out, _ = g.Run(nil, "journalctl", "-o", "cat", "-u", unit)
	}
}
