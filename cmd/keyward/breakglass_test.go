package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/daemon"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/keys/keystest"
	"github.com/keyward/keyward/policy"
)

// Break-glass parties of the CLI test, each run as its own uid.
const (
	bgSocketGID    = 4646
	bgRequesterUID = 13011
	bgApproverUID  = 13012
	bgOtherUID     = 13013
)

const bgCLIConfig = `
[backend]
token = "unused: the test passes its own backend"

[[rule]]
name = "root sets up"
uids = [0]
keys = ["db/**"]
operations = ["wrap", "key.create"]

[[breakglass]]
name = "db-emergency"
requesters = { uids = [%d] }
approvers = { uids = [%d, %d] }
keys = ["db/*"]
operations = ["unwrap"]
max_duration = "1h"
`

// bgCLIDaemon runs keywardd's daemon in this process on the in-memory
// backend (whose grant store the device backends share the interface of),
// with the break-glass clock now, and returns its socket.
func bgCLIDaemon(t *testing.T, now func() time.Time) string {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root, to run keyward as other uids")
	}
	dir, err := os.MkdirTemp("", "kwbg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	cfg, err := config.ParseConfig("test.toml", fmt.Appendf(nil, bgCLIConfig, bgRequesterUID, bgRequesterUID, bgApproverUID))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Socket, cfg.SocketGroup = filepath.Join(dir, "k.sock"), fmt.Sprint(bgSocketGID)
	cfg.AuditLog = filepath.Join(dir, "audit.log")
	cfg.BreakglassState = filepath.Join(dir, "breakglass-seen.json")
	pol, err := config.CompilePolicy(cfg, policy.SystemResolver())
	if err != nil {
		t.Fatal(err)
	}
	be := keystest.NewMem()
	if _, err := be.CreateKey(t.Context(), "db/master", keys.AES256GCM); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready, done := make(chan struct{}), make(chan error, 1)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	go func() {
		done <- daemon.Run(ctx, cfg, pol, be, daemon.Options{Logger: log, BreakglassClock: now, Ready: func(string) { close(ready) }})
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatal(err)
	case <-time.After(30 * time.Second): // ends a hang only
		t.Fatal("daemon not ready")
	}
	t.Cleanup(func() { cancel(); <-done })
	return cfg.Socket
}

func bgCred(uid uint32) *syscall.Credential {
	return &syscall.Credential{Uid: uid, Gid: bgSocketGID}
}

// TestBreakglassCLI: the break-glass commands end to end, each party a
// keyward process of its own uid: request prints an id; the requester
// cannot approve it (exit 3, with why); another approver can; unwrap works
// only while the grant is active; list shows who, what, until and why;
// revoke ends it at once; bad command lines are exit 2 before anything is
// sent.
func TestBreakglassCLI(t *testing.T) {
	sock := bgCLIDaemon(t, time.Now)
	blob := kw(t, sock, []byte("db password"), "wrap", "--key", "db/master", "--context", "app=db")
	if blob.code != exitOK {
		t.Fatalf("wrap: %d %s", blob.code, blob.stderr)
	}
	req, appr, other := bgCred(bgRequesterUID), bgCred(bgApproverUID), bgCred(bgOtherUID)
	unwrap := func() result { return kwAs(t, req, sock, []byte(blob.stdout), "unwrap", "--context", "app=db") }
	if r := unwrap(); r.code != exitPermission {
		t.Fatalf("unwrap before any grant: %d %s", r.code, r.stderr)
	}
	r := kwAs(t, req, sock, nil, "breakglass", "request", "--policy", "db-emergency", "--key", "db/master", "--op", "unwrap",
		"--for", "30m", "--reason", "INC-123 restore")
	id := strings.TrimSpace(r.stdout)
	if r.code != exitOK || keys.ValidGrantID(id) != nil || !strings.Contains(r.stderr, "keyward breakglass approve "+id) {
		t.Fatalf("request: %d %q %q", r.code, r.stdout, r.stderr)
	}
	if r := kwAs(t, req, sock, nil, "breakglass", "approve", id); r.code != exitPermission || !strings.Contains(r.stderr, "never approves their own request") {
		t.Errorf("self-approval: %d %s", r.code, r.stderr)
	}
	if r := kwAs(t, other, sock, nil, "breakglass", "approve", id); r.code != exitPermission {
		t.Errorf("approval by someone no policy names: %d %s", r.code, r.stderr)
	}
	if r := unwrap(); r.code != exitPermission {
		t.Errorf("unwrap while pending: %d %s", r.code, r.stderr)
	}
	if r := kwAs(t, appr, sock, nil, "breakglass", "approve", id); r.code != exitOK || !strings.HasPrefix(r.stdout, id+" active until ") {
		t.Fatalf("approve: %d %q %s", r.code, r.stdout, r.stderr)
	}
	if r := unwrap(); r.code != exitOK || r.stdout != "db password" {
		t.Errorf("unwrap while active: %d %q %s", r.code, r.stdout, r.stderr)
	}
	checkList(t, req, sock, id, "active")
	if r := kwAs(t, other, sock, nil, "breakglass", "list"); r.code != exitOK || strings.Contains(r.stdout, id) {
		t.Errorf("list by a non-party shows the grant: %d %q", r.code, r.stdout)
	}
	if r := kwAs(t, req, sock, nil, "breakglass", "revoke", id); r.code != exitOK || r.stdout != id+" revoked\n" {
		t.Errorf("revoke: %d %q %s", r.code, r.stdout, r.stderr)
	}
	if r := unwrap(); r.code != exitPermission {
		t.Errorf("unwrap after revoke: %d %s", r.code, r.stderr)
	}
	checkList(t, appr, sock, id, "revoked")
	for _, args := range [][]string{
		{"request", "--policy", "db-emergency", "--key", "db/master", "--op", "key.destroy", "--for", "30m", "--reason", "x"},
		{"request", "--policy", "db-emergency", "--key", "db/master", "--op", "unwrap", "--for", "30s", "--reason", "x"},
		{"request", "--policy", "db-emergency", "--key", "db/master", "--op", "unwrap", "--for", "30m"},
		{"request", "--policy", "db-emergency", "--key", "db/master", "--op", "unwrap", "--for", "2h", "--reason", "x"}, // over max_duration: the daemon says
		{"approve", "NOT-AN-ID"},
		{"approve"},
	} {
		if r := kwAs(t, req, sock, nil, append([]string{"breakglass"}, args...)...); r.code != exitUsage {
			t.Errorf("%v: exit %d, want %d: %s", args, r.code, exitUsage, r.stderr)
		}
	}
}

// checkList: list --json as cred shows grant id in state, with its parts.
func checkList(t *testing.T, cred *syscall.Credential, sock, id, state string) {
	t.Helper()
	r := kwAs(t, cred, sock, nil, "breakglass", "list", "--json")
	var gs []bgJSON
	if err := json.Unmarshal([]byte(r.stdout), &gs); r.code != exitOK || err != nil {
		t.Fatalf("list --json: %d %v %s", r.code, err, r.stderr)
	}
	if len(gs) != 1 || gs[0].ID != id || gs[0].State != state || gs[0].RequesterUID != bgRequesterUID || gs[0].Key != "db/master" ||
		gs[0].Operation != "unwrap" || gs[0].Reason != "INC-123 restore" || gs[0].Duration != "30m0s" {
		t.Errorf("list --json: %+v", gs)
	}
	if mid, _ := os.ReadFile("/etc/machine-id"); len(gs) == 1 && (gs[0].Host != strings.TrimSpace(string(mid)) || gs[0].OtherHost) {
		t.Errorf("list --json: host %q (another: %v), want this host's machine id", gs[0].Host, gs[0].OtherHost)
	}
	if r := kwAs(t, cred, sock, nil, "breakglass", "list"); !strings.Contains(r.stdout, id+"  "+state) || !strings.Contains(r.stdout, "INC-123 restore") {
		t.Errorf("list:\n%s", r.stdout)
	}
}

// TestBreakglassCLIQuota: a requester past their quota gets exit 1 and the
// daemon's reason, not a bare "invalid request"; a policy name the caller
// may not ask under is exit 3, whether it exists or not.
func TestBreakglassCLIQuota(t *testing.T) {
	sock := bgCLIDaemon(t, time.Now)
	req := bgCred(bgRequesterUID)
	request := func(cred *syscall.Credential, pol string) result {
		return kwAs(t, cred, sock, nil, "breakglass", "request", "--policy", pol, "--key", "db/master", "--op", "unwrap",
			"--for", "30m", "--reason", "INC-124")
	}
	for range 8 {
		if r := request(req, "db-emergency"); r.code != exitOK {
			t.Fatalf("request: %d %s", r.code, r.stderr)
		}
	}
	r := request(req, "db-emergency")
	if r.code != exitFailed || !strings.Contains(r.stderr, "quota reached: you have 8 break-glass requests waiting for approval") ||
		!strings.Contains(r.stderr, "QUOTA_EXCEEDED") {
		t.Errorf("9th pending request: exit %d, stderr %q", r.code, r.stderr)
	}
	known, unknown := request(bgCred(bgOtherUID), "db-emergency"), request(bgCred(bgOtherUID), "no-such-policy")
	if known.code != exitPermission || known.code != unknown.code || known.stderr != unknown.stderr {
		t.Errorf("a stranger tells policies apart: %d %q and %d %q", known.code, known.stderr, unknown.code, unknown.stderr)
	}
}
