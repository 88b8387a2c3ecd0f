package daemon_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/status"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/audit"
	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/daemon"
	"github.com/keyward/keyward/internal/testutil"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/keys/keystest"
	"github.com/keyward/keyward/policy"
)

// Break-glass identities: the requester is an approver too (a requester
// never approves their own request, even then).
const (
	bgRequesterUID = 12011
	bgApproverUID  = 12012
	bgApprover2UID = 12013
)

// breakglassChild runs one break-glass line of childClient:
// "bg-request POLICY KEY OP SECONDS REASON [k=v,..]", "bg-approve ID",
// "bg-deny ID", "bg-revoke ID", "bg-list" (id:state pairs); "bg-why" and
// a request's words answers the refusal's message.
func breakglassChild(ctx context.Context, c pb.KeywardClient, f []string) (string, error) {
	switch f[0] {
	case "bg-why":
		_, err := breakglassChild(ctx, c, append([]string{"bg-request"}, f[1:]...))
		st, _ := status.FromError(err)
		return st.Message(), err
	case "bg-request":
		secs, _ := strconv.ParseUint(f[4], 10, 64)
		req := &pb.BreakglassRequestRequest{Policy: f[1], Key: f[2], Operation: f[3], DurationSeconds: secs, Reason: f[5]}
		if len(f) > 6 {
			req.Context = map[string]string{}
			for _, kv := range strings.Split(f[6], ",") {
				k, v, _ := strings.Cut(kv, "=")
				req.Context[k] = v
			}
		}
		g, err := c.BreakglassRequest(ctx, req)
		return g.GetId(), err
	case "sign":
		r, err := c.Sign(ctx, &pb.SignRequest{Key: f[1], Message: []byte("release")})
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("signed(%d)", r.GetVersion()), nil
	case "bg-approve":
		g, err := c.BreakglassApprove(ctx, &pb.BreakglassGrantRequest{Id: f[1]})
		return g.GetState(), err
	case "bg-deny":
		g, err := c.BreakglassDeny(ctx, &pb.BreakglassGrantRequest{Id: f[1]})
		return g.GetState(), err
	case "bg-revoke":
		g, err := c.BreakglassRevoke(ctx, &pb.BreakglassGrantRequest{Id: f[1]})
		return g.GetState(), err
	}
	r, err := c.BreakglassList(ctx, &pb.BreakglassListRequest{})
	var out []string
	for _, g := range r.GetGrants() {
		out = append(out, g.Id+":"+g.State)
	}
	return strings.Join(out, " "), err
}

// testClock is an injected clock the test moves.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

const bgConfig = `
[backend]
token = "unused: the test passes its own backend"
[[rule]]
name = "root wraps"
uids = [0]
keys = ["db/**"]
operations = ["wrap", "key.disable"]

[[breakglass]]
name = "db-emergency"
requesters = { uids = [%d] }
approvers = { uids = [%d, %d, %d] }
keys = ["db/*"]
operations = ["unwrap", "sign"]
max_duration = "1h"
request_ttl = "30m"
approvals = %d
`

// bgDaemon is keywardd (daemon.Run) in this process on be, serving a
// socket other uids may reach, with the break-glass clock clock and its
// log in logs.
type bgDaemon struct {
	sock, auditLog string
	logs           *testutil.SyncBuffer
	stop           func() error
}

func startBG(t *testing.T, dir string, be keys.Backend, clock *testClock, approvals int) (*bgDaemon, error) {
	t.Helper()
	cfg := config.Defaults()
	cfg.Socket = filepath.Join(dir, "run", "keyward.sock")
	cfg.SocketGroup = fmt.Sprint(socketGID)
	cfg.AuditLog = filepath.Join(dir, "audit", "audit.log")
	cfg.BreakglassState = filepath.Join(dir, "state", "breakglass-seen.json")
	body := fmt.Sprintf(bgConfig, bgRequesterUID, bgRequesterUID, bgApproverUID, bgApprover2UID, approvals)
	parsed, err := config.ParseConfig("test.toml", []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Rules, cfg.Breakglass = parsed.Rules, parsed.Breakglass
	pol, err := config.CompilePolicy(cfg, policy.SystemResolver())
	if err != nil {
		t.Fatal(err)
	}
	d := &bgDaemon{sock: cfg.Socket, auditLog: cfg.AuditLog, logs: &testutil.SyncBuffer{}}
	log := slog.New(slog.NewTextHandler(d.logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, cancel := context.WithCancel(context.Background())
	ready, done := make(chan struct{}), make(chan error, 1)
	go func() {
		done <- daemon.Run(ctx, cfg, pol, be, daemon.Options{Logger: log, BreakglassClock: clock.Now, BreakglassSweepEvery: 10 * time.Millisecond, Ready: func(string) { close(ready) }})
	}()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		return nil, err
	case <-time.After(30 * time.Second): // ends a hang only
		t.Fatal("daemon not ready")
	}
	var once sync.Once
	var stopErr error
	d.stop = func() error {
		once.Do(func() { cancel(); stopErr = <-done })
		return stopErr
	}
	t.Cleanup(func() { d.stop() })
	return d, nil
}

// bgDir is a directory other uids may pass through (t.TempDir's parent is 0700).
func bgDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "keyward-bg-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	return dir
}

// TestBreakglassThroughSocket: the whole workflow through the real socket,
// each party a process of its own uid: a requester may not approve their
// own request (though an approver), nor may someone no policy names; the
// call is allowed only while the grant is active; expiry (by the injected
// clock) and revocation take effect on the next call; every use is audited
// with the grant's id, and so is every change.
func TestBreakglassThroughSocket(t *testing.T) {
	clock := &testClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	be := keystest.NewMem()
	if _, err := be.CreateKey(t.Context(), "db/master", keys.AES256GCM); err != nil {
		t.Fatal(err)
	}
	d, err := startBG(t, bgDir(t), be, clock, 1)
	if err != nil {
		t.Fatal(err)
	}
	root := dial(t, d.sock)
	w, err := root.Wrap(t.Context(), &pb.WrapRequest{Key: "db/master", Plaintext: []byte("db password"), Context: map[string]string{"app": "db"}})
	if err != nil {
		t.Fatal(err)
	}
	blob := fmt.Sprintf("%x", w.Ciphertext)
	req, appr, outsider := as(t, d.sock, bgRequesterUID), as(t, d.sock, bgApproverUID), as(t, d.sock, outsideUID)
	unwrap := "unwrap " + blob + " app=db"
	expect(t, req, unwrap, "PermissionDenied PERMISSION_DENIED")

	id := requestGrant(t, req, "db-emergency db/master unwrap 1800 INC-1")
	expect(t, req, unwrap, "PermissionDenied PERMISSION_DENIED") // pending
	expect(t, req, "bg-approve "+id, "PermissionDenied PERMISSION_DENIED")
	expect(t, outsider, "bg-approve "+id, "PermissionDenied PERMISSION_DENIED")
	expect(t, outsider, "bg-list", "OK")
	expect(t, appr, "bg-approve "+id, "OK active")
	expect(t, req, unwrap, "OK db password")
	expect(t, req, "wrap db/master app=db", "PermissionDenied PERMISSION_DENIED") // not the operation granted
	clock.Add(30*time.Minute + time.Second)
	expect(t, req, unwrap, "PermissionDenied PERMISSION_DENIED") // expired: the next call
	expect(t, req, "bg-list", "OK "+id+":expired")
	waitFor(t, func() bool { return strings.Contains(d.logs.String(), "MESSAGE_ID=5f0b6c1e9a3d4e2b8c7f1a6d3e9b2c46") }, "the sweeper to record the expiry")

	id2 := requestGrant(t, req, "db-emergency db/master unwrap 600 INC-2")
	expect(t, appr, "bg-approve "+id2, "OK active")
	expect(t, req, unwrap, "OK db password")
	expect(t, appr, "bg-revoke "+id2, "OK revoked")
	expect(t, req, unwrap, "PermissionDenied PERMISSION_DENIED") // revoked: the next call
	expect(t, appr, "bg-approve "+id2, "InvalidArgument INVALID_REQUEST")

	id3 := requestGrant(t, req, "db-emergency db/master unwrap 600 INC-3")
	expect(t, appr, "bg-deny "+id3, "OK denied")
	expect(t, req, unwrap, "PermissionDenied PERMISSION_DENIED")
	if err := d.stop(); err != nil {
		t.Fatal(err)
	}
	checkGrantRecords(t, d.auditLog, id, id2, id3)
	for _, mid := range []string{"MESSAGE_ID=5f0b6c1e9a3d4e2b8c7f1a6d3e9b2c40", "MESSAGE_ID=5f0b6c1e9a3d4e2b8c7f1a6d3e9b2c42",
		"MESSAGE_ID=5f0b6c1e9a3d4e2b8c7f1a6d3e9b2c44", "MESSAGE_ID=5f0b6c1e9a3d4e2b8c7f1a6d3e9b2c45", "MESSAGE_ID=5f0b6c1e9a3d4e2b8c7f1a6d3e9b2c46"} {
		if !strings.Contains(d.logs.String(), mid) {
			t.Errorf("no log line with %s", mid)
		}
	}
}

// requestGrant asks for a grant as c and returns its id.
func requestGrant(t *testing.T, c *client, args string) string {
	t.Helper()
	out := c.do("bg-request " + args)
	id, ok := strings.CutPrefix(out, "OK ")
	if !ok || keys.ValidGrantID(id) != nil || len(id) != 32 {
		t.Fatalf("bg-request %s: %q", args, out)
	}
	return id
}

func expect(t *testing.T, c *client, line, want string) {
	t.Helper()
	if got := c.do(line); got != want {
		t.Errorf("%.60s: got %q, want %q", line, got, want)
	}
}

// checkGrantRecords: the trail verifies, every allowed unwrap was allowed
// by a grant and says which, and each grant's request, approval, denial,
// revocation and expiry are records carrying its id.
func checkGrantRecords(t *testing.T, path, expired, revoked, denied string) {
	t.Helper()
	if res, err := audit.Verify(path); err != nil || res.Broken != nil {
		t.Fatalf("audit verify: %+v %v", res, err)
	}
	recs, err := audit.ReadRecords(path)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	uses := 0
	for _, r := range recs {
		if r.Op == "unwrap" && r.Result == "OK" {
			uses++
			if r.Grant != expired && r.Grant != revoked || r.Peer.UID != bgRequesterUID {
				t.Errorf("unwrap allowed without its grant: %+v", r)
			}
		}
		if r.Result != daemon.ResultStarted && r.Grant != "" {
			seen[r.Op+" "+r.Grant+" "+r.Result] = true
		}
	}
	if uses != 2 {
		t.Errorf("%d allowed unwraps recorded, want 2", uses)
	}
	for _, want := range []string{
		"breakglass.request " + expired + " OK", "breakglass.approve " + expired + " OK", "breakglass.expire " + expired + " OK",
		"breakglass.approve " + expired + " PERMISSION_DENIED",
		"breakglass.revoke " + revoked + " OK", "breakglass.deny " + denied + " OK",
	} {
		if !seen[want] {
			t.Errorf("no record %q in %v", want, seen)
		}
	}
}

// TestBreakglassApprovals: a grant needing two approvals becomes active
// only with two different approvers; one approver approving twice does not
// count twice.
func TestBreakglassApprovals(t *testing.T) {
	clock := &testClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	be := keystest.NewMem()
	if _, err := be.CreateKey(t.Context(), "db/sign", keys.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	d, err := startBG(t, bgDir(t), be, clock, 2)
	if err != nil {
		t.Fatal(err)
	}
	req, a1, a2 := as(t, d.sock, bgRequesterUID), as(t, d.sock, bgApproverUID), as(t, d.sock, bgApprover2UID)
	id := requestGrant(t, req, "db-emergency db/sign sign 600 INC-4")
	clock.Add(time.Minute)
	expect(t, a1, "bg-approve "+id, "OK pending")
	expect(t, a1, "bg-approve "+id, "InvalidArgument INVALID_REQUEST")
	expect(t, req, "bg-approve "+id, "PermissionDenied PERMISSION_DENIED")
	expect(t, a2, "bg-approve "+id, "OK active")
	// a request past its request_ttl expires unapproved
	id2 := requestGrant(t, req, "db-emergency db/sign sign 600 INC-5")
	clock.Add(31 * time.Minute)
	expect(t, a1, "bg-approve "+id2, "InvalidArgument INVALID_REQUEST")
	expect(t, req, "bg-list", "OK "+id2+":expired "+id+":expired")
}

// TestBreakglassSurvivesRestart: a grant is the device's record, not the
// daemon's memory: a new daemon on the same device honours it, and honours
// its revocation.
func TestBreakglassSurvivesRestart(t *testing.T) {
	clock := &testClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	be := keystest.NewMem()
	if _, err := be.CreateKey(t.Context(), "db/sign", keys.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	dir := bgDir(t)
	d, err := startBG(t, dir, be, clock, 1)
	if err != nil {
		t.Fatal(err)
	}
	id := requestGrant(t, as(t, d.sock, bgRequesterUID), "db-emergency db/sign sign 600 INC-6")
	expect(t, as(t, d.sock, bgApproverUID), "bg-approve "+id, "OK active")
	if err := d.stop(); err != nil {
		t.Fatal(err)
	}
	d2, err := startBG(t, dir, be, clock, 1)
	if err != nil {
		t.Fatal(err)
	}
	req := as(t, d2.sock, bgRequesterUID)
	expect(t, req, "sign db/sign", "OK signed(1)")
	expect(t, req, "bg-revoke "+id, "OK revoked")
	expect(t, req, "sign db/sign", "PermissionDenied PERMISSION_DENIED")
}

// tamperedStore is the in-memory backend whose grant store fails its
// integrity check, as a device's does when a record was altered.
type tamperedStore struct{ *keystest.Mem }

func (tamperedStore) Grants(context.Context) ([]keys.GrantRecord, error) {
	return nil, fmt.Errorf("grant record MAC mismatch: %w", keys.ErrIntegrity)
}

// noGrants is a backend that keeps no grants.
type noGrants struct{ keys.Backend }

// TestBreakglassRefusedAtStart: keywardd does not start with break-glass
// configured on a grant store that fails its integrity check (a tampered
// store may hide a revocation or hold a forged approval), nor on a backend
// that keeps no grants.
func TestBreakglassRefusedAtStart(t *testing.T) {
	clock := &testClock{now: time.Now()}
	for _, tc := range []struct {
		name string
		be   keys.Backend
		want error
	}{
		{"tampered", tamperedStore{keystest.NewMem()}, keys.ErrIntegrity},
		{"no grant store", noGrants{keystest.NewMem()}, daemon.ErrBreakglassStore},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := startBG(t, bgDir(t), tc.be, clock, 1)
			if !errors.Is(err, tc.want) || !errors.Is(err, daemon.ErrBreakglassStore) {
				t.Fatalf("start: %v, want %v", err, tc.want)
			}
		})
	}
}

// TestBreakglassNameLookupFails: while the user database does not answer
// for a caller's uid (sssd or LDAP down), a request or an approval is
// refused as unavailable, and recorded so: without the name, the check
// against the same person under another uid on another host would not
// apply. Once it answers again, both go through.
func TestBreakglassNameLookupFails(t *testing.T) {
	clock := &testClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	be := keystest.NewMem()
	if _, err := be.CreateKey(t.Context(), "db/sign", keys.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	d, err := startBG(t, bgDir(t), be, clock, 1)
	if err != nil {
		t.Fatal(err)
	}
	var down atomic.Bool
	daemon.SetUserLookup(t, func(uid string) (*user.User, error) {
		if down.Load() {
			return nil, errors.New("connection to the user database refused")
		}
		return user.LookupId(uid)
	})
	req, appr := as(t, d.sock, bgRequesterUID), as(t, d.sock, bgApproverUID)
	down.Store(true)
	expect(t, req, "bg-request db-emergency db/sign sign 600 INC-6", "Unavailable BACKEND_UNAVAILABLE")
	expect(t, req, "bg-list", "OK")
	down.Store(false)
	id := requestGrant(t, req, "db-emergency db/sign sign 600 INC-6")
	down.Store(true)
	expect(t, appr, "bg-approve "+id, "Unavailable BACKEND_UNAVAILABLE")
	expect(t, req, "bg-list", "OK "+id+":pending")
	down.Store(false)
	expect(t, appr, "bg-approve "+id, "OK active")
	if err := d.stop(); err != nil {
		t.Fatal(err)
	}
	if l := d.logs.String(); !strings.Contains(l, "could not be looked up") || strings.Contains(l, `msg="key backend unavailable`) {
		t.Errorf("want a log line that names the failed lookup, and no backend outage:\n%s", l)
	}
	recs, err := audit.ReadRecords(d.auditLog)
	if err != nil {
		t.Fatal(err)
	}
	refused := map[string]int{}
	for _, r := range recs {
		if r.Result == "BACKEND_UNAVAILABLE" {
			refused[r.Op]++
		}
	}
	if refused["breakglass.request"] != 1 || refused["breakglass.approve"] != 1 {
		t.Errorf("refusals recorded: %v, want one request and one approval", refused)
	}
}
