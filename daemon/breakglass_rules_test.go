package daemon_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keyward/keyward/audit"
	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/daemon"
	"github.com/keyward/keyward/internal/testutil"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/keys/keystest"
)

// The people of these tests: each a uid of its own, run as a process of
// that uid against the real socket.
const (
	rqUID   = 12021 // requester
	rq2UID  = 12022 // another requester
	apA     = 12023 // approvers
	apB     = 12024
	apC     = 12025
	apGroup = 12030 // a group of approvers
	hostA   = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	hostB   = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

// rulesTable is a [[breakglass]] table "db" on db/*, sign only; its
// fields are the text of its approvers, approvals, max_duration and
// requesters.
type rulesTable struct {
	requesters, approvers, maxDuration, requestTTL string
	approvals                                      int
}

func (rt rulesTable) toml() string {
	if rt.requesters == "" {
		rt.requesters = fmt.Sprintf("uids = [%d, %d]", rqUID, rq2UID)
	}
	if rt.approvers == "" {
		rt.approvers = fmt.Sprintf("uids = [%d, %d, %d]", apA, apB, apC)
	}
	if rt.maxDuration == "" {
		rt.maxDuration = "1h"
	}
	if rt.requestTTL == "" {
		rt.requestTTL = "30m"
	}
	return fmt.Sprintf("[[breakglass]]\nname = \"db\"\nrequesters = { %s }\napprovers = { %s }\nkeys = [\"db/*\"]\noperations = [\"sign\"]\nmax_duration = %q\nrequest_ttl = %q\napprovals = %d\n",
		rt.requesters, rt.approvers, rt.maxDuration, rt.requestTTL, max(rt.approvals, 1))
}

// rulesDaemon is keywardd (daemon.Run) in this process on be, as host,
// with its config in a file that SIGHUP reloads.
type rulesDaemon struct {
	*bgDaemon
	cfgPath, head string
}

func startRules(t *testing.T, be keys.Backend, clock *testClock, host string, rt rulesTable) *rulesDaemon {
	t.Helper()
	return startRulesIn(t, bgDir(t), be, clock, host, rt)
}

// startRulesIn is startRules in dir (its high-water file is
// dir/state/breakglass-seen.json).
func startRulesIn(t *testing.T, dir string, be keys.Backend, clock *testClock, host string, rt rulesTable) *rulesDaemon {
	t.Helper()
	d := &rulesDaemon{cfgPath: filepath.Join(dir, "keyward.toml")}
	sock, auditLog := filepath.Join(dir, "run", "keyward.sock"), filepath.Join(dir, "audit", "audit.log")
	d.head = fmt.Sprintf("socket = %q\nsocket_group = \"%d\"\naudit_log = %q\nbreakglass_state = %q\n[backend]\ntoken = \"unused: the test passes its own backend\"\n",
		sock, socketGID, auditLog, filepath.Join(dir, "state", "breakglass-seen.json"))
	d.write(t, rt)
	cfg, pol, err := config.CheckConfig(d.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	d.bgDaemon = &bgDaemon{sock: sock, auditLog: auditLog, logs: &testutil.SyncBuffer{}}
	log := slog.New(slog.NewTextHandler(d.logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, cancel := context.WithCancel(context.Background())
	ready, done := make(chan struct{}), make(chan error, 1)
	go func() {
		done <- daemon.Run(ctx, cfg, pol, be, daemon.Options{Logger: log, ConfigPath: d.cfgPath, BreakglassClock: clock.Now,
			BreakglassHost: host, BreakglassSweepEvery: 10 * time.Millisecond, Ready: func(string) { close(ready) }})
	}()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		t.Fatal(err)
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
	return d
}

func (d *rulesDaemon) write(t *testing.T, rt rulesTable) {
	t.Helper()
	body := d.head + "[[rule]]\nname = \"root sets up\"\nuids = [0]\nkeys = [\"db/**\"]\noperations = [\"key.create\"]\n" + rt.toml()
	if err := os.WriteFile(d.cfgPath, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

// reload writes rt and sends SIGHUP, and waits for this daemon to say it
// reloaded (other daemons of this process reload their unchanged files).
func (d *rulesDaemon) reload(t *testing.T, rt rulesTable) {
	t.Helper()
	d.write(t, rt)
	n := strings.Count(d.logs.String(), "reloaded the rules")
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	for deadline := time.Now().Add(30 * time.Second); strings.Count(d.logs.String(), "reloaded the rules") == n; time.Sleep(10 * time.Millisecond) {
		if strings.Contains(d.logs.String(), "reload failed") || time.Now().After(deadline) {
			t.Fatalf("no reload:\n%s", d.logs.String())
		}
	}
}

func signKey(t *testing.T, be keys.Backend) {
	t.Helper()
	if _, err := be.CreateKey(t.Context(), "db/sign", keys.ECDSAP256); err != nil {
		t.Fatal(err)
	}
}

// storedGrant is a grant record's body as stored, for checks.
type storedGrant struct {
	State     string    `json:"state"`
	Host      string    `json:"host"`
	Needed    int       `json:"approvals_needed"`
	Activated time.Time `json:"activated"`
	Expires   time.Time `json:"expires"`
}

func grantRecord(t *testing.T, be keys.GrantStore, id string) (storedGrant, bool) {
	t.Helper()
	recs, err := be.Grants(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if r.ID == id {
			var g storedGrant
			if err := json.Unmarshal(r.Body, &g); err != nil {
				t.Fatal(err)
			}
			return g, true
		}
	}
	return storedGrant{}, false
}

// TestBreakglassNarrowingReload: a reload that narrows the table narrows
// the grants made under it: a requester it no longer names uses nothing;
// a shorter max_duration ends an active grant earlier; more approvals
// are needed of a pending request; approvals by people no longer
// approvers do not count; a grant activated after the reload is cut to the
// new max_duration.
func TestBreakglassNarrowingReload(t *testing.T) {
	clock := &testClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	be := keystest.NewMem()
	signKey(t, be)
	wide := rulesTable{}
	d := startRules(t, be, clock, hostA, wide)
	req, a, b, c := as(t, d.sock, rqUID), as(t, d.sock, apA), as(t, d.sock, apB), as(t, d.sock, apC)

	// A shorter max_duration ends an active grant; a requester no longer
	// named uses nothing.
	id := requestGrant(t, req, "db db/sign sign 3000 INC-20")
	expect(t, a, "bg-approve "+id, "OK active")
	expect(t, req, "sign db/sign", "OK signed(1)")
	d.reload(t, rulesTable{maxDuration: "10m"})
	clock.Add(9 * time.Minute)
	expect(t, req, "sign db/sign", "OK signed(1)")
	clock.Add(2 * time.Minute)
	expect(t, req, "sign db/sign", "PermissionDenied PERMISSION_DENIED")
	d.reload(t, wide)
	expect(t, req, "sign db/sign", "OK signed(1)")
	d.reload(t, rulesTable{requesters: fmt.Sprintf("uids = [%d]", rq2UID)})
	expect(t, req, "sign db/sign", "PermissionDenied PERMISSION_DENIED")
	expect(t, req, "bg-revoke "+id, "OK revoked")

	// More approvals needed after the request; a removed approver's
	// approval no longer counts.
	d.reload(t, wide)
	id2 := requestGrant(t, req, "db db/sign sign 3000 INC-21")
	d.reload(t, rulesTable{approvals: 2})
	expect(t, a, "bg-approve "+id2, "OK pending")
	d.reload(t, rulesTable{approvals: 2, approvers: fmt.Sprintf("uids = [%d, %d]", apB, apC)})
	expect(t, b, "bg-approve "+id2, "OK pending") // a's approval no longer counts
	expect(t, a, "bg-approve "+id2, "PermissionDenied PERMISSION_DENIED")
	// activated under max_duration 10m: cut to it
	d.reload(t, rulesTable{approvals: 2, approvers: fmt.Sprintf("uids = [%d, %d]", apB, apC), maxDuration: "10m"})
	expect(t, c, "bg-approve "+id2, "OK active")
	g, _ := grantRecord(t, be, id2)
	if g.Needed != 2 || g.Expires.Sub(g.Activated) != 10*time.Minute {
		t.Errorf("grant needs %d approvals, active %s, want 2 and 10m", g.Needed, g.Expires.Sub(g.Activated))
	}
}

// TestBreakglassQuotas: one requester cannot fill the grant store. Eight
// pending requests at most; withdrawn requests are removed at once (and
// recorded), so withdrawing frees room; every record of a requester counts
// toward 32; parallel requests do not pass the limits; another requester
// is not affected; new requests stop 64 records short of the store's
// limit. Each refusal is QUOTA_EXCEEDED with a message saying which.
func TestBreakglassQuotas(t *testing.T) {
	clock := &testClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	be := keystest.NewMem()
	signKey(t, be)
	d := startRules(t, be, clock, hostA, rulesTable{})
	req, req2, a := as(t, d.sock, rqUID), as(t, d.sock, rq2UID), as(t, d.sock, apA)
	const args = "db db/sign sign 600 INC-30"
	var pending []string
	for range 8 {
		pending = append(pending, requestGrant(t, req, args))
	}
	expect(t, req, "bg-request "+args, "ResourceExhausted QUOTA_EXCEEDED")
	if got := req.do("bg-why " + args); !strings.Contains(got, "8 break-glass requests waiting") {
		t.Errorf("message: %q", got)
	}
	for i, id := range pending {
		if i%2 == 0 {
			expect(t, req, "bg-revoke "+id, "OK revoked")
		} else {
			expect(t, a, "bg-deny "+id, "OK denied")
		}
		if _, ok := grantRecord(t, be, id); ok {
			t.Errorf("withdrawn request %s still stored", id)
		}
	}
	// 32 records of any state; the 33rd is refused.
	for range 32 {
		id := requestGrant(t, req, args)
		expect(t, a, "bg-approve "+id, "OK active")
		expect(t, req, "bg-revoke "+id, "OK revoked")
	}
	if got := req.do("bg-why " + args); !strings.HasSuffix(got, "QUOTA_EXCEEDED quota reached: you have 32 break-glass records (waiting, active, or ended less than 30 days ago), at most 32: ended ones are removed 30 days after they end") {
		t.Errorf("33rd record: %q", got)
	}
	// Parallel requests by one uid: exactly 8 get through.
	var wg sync.WaitGroup
	results := make(chan string, 12)
	clients := make([]*client, 12)
	for i := range clients {
		clients[i] = as(t, d.sock, rq2UID)
	}
	for _, cl := range clients {
		wg.Go(func() { results <- cl.do("bg-request " + args) })
	}
	wg.Wait()
	close(results)
	ok := 0
	for r := range results {
		switch {
		case strings.HasPrefix(r, "OK "):
			ok++
		case r != "ResourceExhausted QUOTA_EXCEEDED":
			t.Errorf("parallel request: %q", r)
		}
	}
	if ok != 8 {
		t.Errorf("%d of 12 parallel requests stored, want 8", ok)
	}
	// The store's room: fill it (as other requesters' ended grants) to
	// 64 short of keys.MaxGrants; nobody may ask then.
	recs, _ := be.Grants(t.Context())
	for i := len(recs); i < keys.MaxGrants-64; i++ {
		body := fmt.Sprintf(`{"v":1,"policy":"db","state":"revoked","requester_uid":%d,"key":"db/sign","op":"sign","duration_s":600,"reason":"x","requested":%q,"request_expires":%q,"approvals_needed":1,"ended":%q,"host":%q}`,
			20000+i, clock.Now().Format(time.RFC3339), clock.Now().Add(time.Hour).Format(time.RFC3339), clock.Now().Format(time.RFC3339), hostA)
		if err := be.PutGrant(t.Context(), fmt.Sprintf("%032x", i), 1, []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	// A read the sweeper started while the store was filled may still be
	// under way, and a request joins it: wait for one that saw it full.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		got := req2.do("bg-why " + args)
		if strings.Contains(got, "new requests stop at 960") {
			break
		}
		if time.Now().After(deadline) || !strings.Contains(got, "QUOTA_EXCEEDED") {
			t.Fatalf("full store: %q", got)
		}
	}
	if err := d.stop(); err != nil {
		t.Fatal(err)
	}
	removed := 0
	for _, r := range readTrail(t, d.auditLog) {
		if r.Op == "breakglass.remove" && r.Result == "OK" && strings.Contains(r.Reason, "withdrawn") {
			removed++
		}
	}
	if removed != 8 {
		t.Errorf("%d withdrawn requests recorded as removed, want 8", removed)
	}
}

func readTrail(t *testing.T, path string) []audit.Record {
	t.Helper()
	if res, err := audit.Verify(path); err != nil || res.Broken != nil {
		t.Fatalf("audit verify: %+v %v", res, err)
	}
	recs, err := audit.ReadRecords(path)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// TestBreakglassHosts: daemons of two hosts on one store. A grant is used
// only on the host that asked for it; another host with the same table
// may approve it, one with another table may not approve or list
// it; a requester's uid on another host is nobody there; and a user name
// never approves its own request from another host (uid 2 is "bin" on both);
// an approver under another table may still revoke it (that only narrows).
func TestBreakglassHosts(t *testing.T) {
	if userName := lookupName(2); userName == "" {
		t.Skip("no user with uid 2 on this machine")
	}
	clock := &testClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	be := keystest.NewMem()
	signKey(t, be)
	rt := rulesTable{requesters: fmt.Sprintf("uids = [%d, 2]", rqUID), approvers: fmt.Sprintf("uids = [%d, %d, 2]", apA, apB)}
	a, b := startRules(t, be, clock, hostA, rt), startRules(t, be, clock, hostB, rt)
	other := rt
	other.maxDuration = "2h"
	c := startRules(t, be, clock, "cccccccccccccccccccccccccccccccc", other)

	id := requestGrant(t, as(t, a.sock, rqUID), "db db/sign sign 600 INC-40")
	expect(t, as(t, c.sock, apA), "bg-approve "+id, "PermissionDenied PERMISSION_DENIED")  // another table
	expect(t, as(t, c.sock, rqUID), "bg-revoke "+id, "PermissionDenied PERMISSION_DENIED") // nobody there
	expect(t, as(t, c.sock, apA), "bg-list", "OK")
	expect(t, as(t, b.sock, apA), "bg-approve "+id, "OK active") // the same table
	expect(t, as(t, b.sock, rqUID), "sign db/sign", "PermissionDenied PERMISSION_DENIED")
	expect(t, as(t, b.sock, rqUID), "bg-list", "OK") // uid 12021 there is someone else
	expect(t, as(t, b.sock, rqUID), "bg-revoke "+id, "PermissionDenied PERMISSION_DENIED")
	req := as(t, a.sock, rqUID)
	expect(t, req, "bg-list", "OK "+id+":active") // reads the store afresh
	expect(t, req, "sign db/sign", "OK signed(1)")

	id2 := requestGrant(t, as(t, a.sock, 2), "db db/sign sign 600 INC-41")
	expect(t, as(t, a.sock, 2), "bg-approve "+id2, "PermissionDenied PERMISSION_DENIED")
	expect(t, as(t, b.sock, 2), "bg-approve "+id2, "PermissionDenied PERMISSION_DENIED") // the same user name
	expect(t, as(t, b.sock, apB), "bg-approve "+id2, "OK active")
	if g, _ := grantRecord(t, be, id2); g.Host != hostA {
		t.Errorf("grant recorded host %q, want %q", g.Host, hostA)
	}
	// Revoking only narrows access: an approver under another table may
	// (host A sees it within grantMaxAge).
	expect(t, as(t, c.sock, apA), "bg-revoke "+id, "OK revoked")
	waitAnswer(t, req, "sign db/sign", "PermissionDenied PERMISSION_DENIED")
	expect(t, as(t, a.sock, 2), "sign db/sign", "OK signed(1)") // id2 is still active
	expect(t, as(t, c.sock, apB), "bg-revoke "+id2, "OK revoked")
	waitAnswer(t, as(t, a.sock, 2), "sign db/sign", "PermissionDenied PERMISSION_DENIED")
	// An ended grant, to a revoker under another table, looks like one
	// that does not exist: no state is told.
	expect(t, as(t, c.sock, apA), "bg-revoke "+id, "PermissionDenied PERMISSION_DENIED")
	expect(t, as(t, c.sock, apA), "bg-revoke "+strings.Repeat("9", 32), "PermissionDenied PERMISSION_DENIED")
}

// waitAnswer runs line as c until it answers want (bounded only to end a hang).
func waitAnswer(t *testing.T, c *client, line, want string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		got := c.do(line)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: got %q, want %q", line, got, want)
		}
	}
}

func lookupName(uid uint32) string {
	u, err := user.LookupId(fmt.Sprint(uid))
	if err != nil {
		return ""
	}
	return u.Username
}

// TestBreakglassRootApprover: root in the approvers' group does not
// approve (a sudoer requester could be root with any group); root
// approves only when the table names uid 0 itself.
func TestBreakglassRootApprover(t *testing.T) {
	clock := &testClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	be := keystest.NewMem()
	signKey(t, be)
	byGroup := rulesTable{approvers: fmt.Sprintf("gids = [%d]", apGroup)}
	d := startRules(t, be, clock, hostA, byGroup)
	req, root, member := as(t, d.sock, rqUID), as(t, d.sock, 0, apGroup), as(t, d.sock, apA, apGroup)
	id := requestGrant(t, req, "db db/sign sign 600 INC-50")
	expect(t, root, "bg-approve "+id, "PermissionDenied PERMISSION_DENIED")
	expect(t, member, "bg-approve "+id, "OK active")
	d.reload(t, rulesTable{approvers: fmt.Sprintf("uids = [0], gids = [%d]", apGroup)})
	id2 := requestGrant(t, req, "db db/sign sign 600 INC-51")
	expect(t, root, "bg-approve "+id2, "OK active")
}

// TestBreakglassClockBound: a grant whose activation an approving daemon's
// clock put late (here stored as such a daemon would) is honoured only
// until its request + request_ttl + max_duration by this daemon's clock,
// under the current table.
func TestBreakglassClockBound(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	clock := &testClock{now: t0}
	be := keystest.NewMem()
	signKey(t, be)
	d := startRules(t, be, clock, hostA, rulesTable{}) // request_ttl 30m, max_duration 1h
	put := func(id string, activated time.Duration) {
		body := fmt.Sprintf(`{"v":1,"policy":"db","state":"active","requester_uid":%d,"key":"db/sign","op":"sign","duration_s":3600,"reason":"x","requested":%q,"request_expires":%q,"approvals_needed":1,"approvals":[{"uid":%d,"at":%q,"host":%q}],"activated":%q,"expires":%q,"host":%q}`,
			rqUID, t0.Format(time.RFC3339), t0.Add(30*time.Minute).Format(time.RFC3339), apA, t0.Add(activated).Format(time.RFC3339), hostA,
			t0.Add(activated).Format(time.RFC3339), t0.Add(activated+time.Hour).Format(time.RFC3339), hostA)
		if err := be.PutGrant(t.Context(), id, 1, []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	req := as(t, d.sock, rqUID)
	put(strings.Repeat("1", 32), 20*time.Minute) // ends at t0+80m, within t0+90m
	clock.Add(70 * time.Minute)
	expect(t, req, "bg-list", "OK "+strings.Repeat("1", 32)+":active") // reads the store afresh
	expect(t, req, "sign db/sign", "OK signed(1)")
	// The second ends at t0+3h by its record; at t0+2h30m it is read
	// afresh (bg-list), and refused.
	put(strings.Repeat("2", 32), 2*time.Hour)
	clock.Add(80 * time.Minute)
	if got := req.do("bg-list"); !strings.Contains(got, strings.Repeat("2", 32)+":active") {
		t.Fatalf("list: %q", got)
	}
	expect(t, req, "sign db/sign", "PermissionDenied PERMISSION_DENIED")
}

// TestBreakglassAuditGaps: an expiry is recorded STARTED before it is
// stored; removing a record 30 days after it ended is recorded; a refused
// approval of an unknown id names it; the journal gets the first use of a
// grant, not every one; and a caller who may ask under no table gets one
// answer for a name that exists and one that does not.
func TestBreakglassAuditGaps(t *testing.T) {
	clock := &testClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	be := keystest.NewMem()
	signKey(t, be)
	d := startRules(t, be, clock, hostA, rulesTable{})
	req, a, outsider := as(t, d.sock, rqUID), as(t, d.sock, apA), as(t, d.sock, outsideUID)
	id := requestGrant(t, req, "db db/sign sign 600 INC-60")
	expect(t, a, "bg-approve "+id, "OK active")
	for range 5 {
		expect(t, req, "sign db/sign", "OK signed(1)")
	}
	// The first use is a line of its own; the other 4 are counted in the
	// sweeps' summary lines (every 10ms here).
	if n := strings.Count(d.logs.String(), `msg="break-glass grant used" MESSAGE_ID=5f0b6c1e9a3d4e2b8c7f1a6d3e9b2c44`); n != 1 {
		t.Errorf("%d first-use lines for 5 uses, want 1", n)
	}
	waitFor(t, func() bool { return summedUses(d.logs.String()) == 4 }, "the summary lines to count 4 more uses")
	unknown := strings.Repeat("ab", 16)
	expect(t, a, "bg-approve "+unknown, "PermissionDenied PERMISSION_DENIED")
	probe := func(policy string) string { return outsider.do("bg-why " + policy + " db/sign sign 600 INC-61") }
	if known, unknown := probe("db"), probe("no-such-policy"); known != unknown || !strings.HasPrefix(known, "PermissionDenied") {
		t.Errorf("a stranger tells policies apart: %q and %q", known, unknown)
	}
	clock.Add(11 * time.Minute)
	waitFor(t, func() bool { g, _ := grantRecord(t, be, id); return g.State == "expired" }, "the sweep to record the expiry")
	clock.Add(31 * 24 * time.Hour)
	waitFor(t, func() bool { _, ok := grantRecord(t, be, id); return !ok }, "the sweep to remove the record")
	expect(t, req, "bg-list", "OK")
	if err := d.stop(); err != nil {
		t.Fatal(err)
	}
	var seq []string
	started := map[string]string{}
	for _, r := range readTrail(t, d.auditLog) {
		if r.Grant != id && r.Grant != unknown {
			continue
		}
		if r.Result == daemon.ResultStarted {
			started[r.RequestID] = r.Op
		} else if (r.Op == "breakglass.expire" || r.Op == "breakglass.remove") && started[r.RequestID] != r.Op {
			t.Errorf("%s %s without its STARTED record before", r.Op, r.Result)
		}
		seq = append(seq, r.Op+" "+r.Grant+" "+r.Result)
	}
	got := strings.Join(seq, "\n")
	for _, want := range []string{"breakglass.approve " + unknown + " PERMISSION_DENIED", "breakglass.expire " + id + " STARTED",
		"breakglass.expire " + id + " OK", "breakglass.remove " + id + " STARTED", "breakglass.remove " + id + " OK"} {
		if !strings.Contains(got, want) {
			t.Errorf("no record %q in\n%s", want, got)
		}
	}
}

// summedUses adds up the uses the journal's summary lines count.
func summedUses(log string) int {
	n := 0
	for _, l := range strings.Split(log, "\n") {
		if !strings.Contains(l, `msg="break-glass grant used again"`) {
			continue
		}
		_, after, _ := strings.Cut(l, " uses=")
		u, _ := strconv.Atoi(strings.Fields(after + " ")[0])
		n += u
	}
	return n
}

// TestBreakglassNarrowingOtherHost: hosts A and B share a store and a
// table needing one approval; after a request on A, A's table needs two
// and drops apA, and apA approves through B, which still runs the old
// table (the grant is active there): A does not honour it, since apA's
// approval made under another table no longer counts here.
func TestBreakglassNarrowingOtherHost(t *testing.T) {
	clock := &testClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	be := keystest.NewMem()
	signKey(t, be)
	a, b := startRules(t, be, clock, hostA, rulesTable{}), startRules(t, be, clock, hostB, rulesTable{})
	req := as(t, a.sock, rqUID)
	id := requestGrant(t, req, "db db/sign sign 600 INC-42")
	a.reload(t, rulesTable{approvals: 2, approvers: fmt.Sprintf("uids = [%d, %d]", apB, apC)})
	expect(t, as(t, b.sock, apA), "bg-approve "+id, "OK active")
	if g, _ := grantRecord(t, be, id); g.State != "active" {
		t.Fatalf("grant %s is %s in the store, want active (approved on B)", id, g.State)
	}
	// A sees the grant active (a requester's list reads the store afresh),
	// and still refuses it: under A's table one approval is not enough.
	expect(t, req, "bg-list", "OK "+id+":active")
	expect(t, req, "sign db/sign", "PermissionDenied PERMISSION_DENIED")
	// Back to the table the grant was asked under: the approval counts again.
	a.reload(t, rulesTable{})
	expect(t, req, "bg-list", "OK "+id+":active")
	expect(t, req, "sign db/sign", "OK signed(1)")
}
