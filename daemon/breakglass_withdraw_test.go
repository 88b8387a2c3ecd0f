package daemon_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/keys/keystest"
)

// TestBreakglassWithdrawQuota: asking and withdrawing again and again is
// throttled: 32 withdrawals of one requester still remembered, then
// QUOTA_EXCEEDED (another requester is not
// affected); the ids of withdrawn requests leave the high-water file once
// their request expiry is 25 hours past, and the requester may ask again.
func TestBreakglassWithdrawQuota(t *testing.T) {
	clock := &testClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	be := keystest.NewMem()
	signKey(t, be)
	dir := bgDir(t)
	d := startRulesIn(t, dir, be, clock, hostA, rulesTable{}) // request_ttl 30m
	req, req2, a := as(t, d.sock, rqUID), as(t, d.sock, rq2UID), as(t, d.sock, apA)
	const args = "db db/sign sign 600 INC-50"
	var ids []string
	for i := range 32 {
		id := requestGrant(t, req, args)
		if i%4 == 3 {
			expect(t, a, "bg-deny "+id, "OK denied")
		} else {
			expect(t, req, "bg-revoke "+id, "OK revoked")
		}
		ids = append(ids, id)
	}
	expect(t, req, "bg-request "+args, "ResourceExhausted QUOTA_EXCEEDED")
	if got := req.do("bg-why " + args); !strings.Contains(got, "you have withdrawn 32 break-glass requests") {
		t.Errorf("message: %q", got)
	}
	expect(t, req2, "bg-revoke "+requestGrant(t, req2, args), "OK revoked")
	seenPath := filepath.Join(dir, "state", "breakglass-seen.json")
	seen := func() string {
		b, err := os.ReadFile(seenPath)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if body := seen(); !strings.Contains(body, ids[0]) || !strings.Contains(body, ids[31]) {
		t.Fatalf("withdrawn ids not kept in the high-water file: %s", body)
	}

	// Kept until the request expiry plus the longest max_duration and an
	// hour: a rollback could bring back a copy approved elsewhere.
	clock.Add(29*time.Minute + 25*time.Hour) // request expiry + 24h59m: still kept
	expect(t, req, "bg-request "+args, "ResourceExhausted QUOTA_EXCEEDED")
	clock.Add(2 * time.Minute)
	expect(t, req, "bg-revoke "+requestGrant(t, req, args), "OK revoked")
	body := seen()
	for _, id := range ids {
		if strings.Contains(body, id) {
			t.Fatalf("withdrawn id %s still in the high-water file past its request expiry + 25h", id)
		}
	}
	if n := strings.Count(body, `"until"`); n != 1 {
		t.Errorf("%d withdrawn ids kept, want 1 (the latest): %s", n, body)
	}
}

// TestBreakglassSeenFileTooBig: a high-water file larger than keywardd
// reads does not stop it: it starts and serves every other call, while
// break-glass is off (no request stored, no grant honoured) with an ERROR
// line, until the file is removed.
func TestBreakglassSeenFileTooBig(t *testing.T) {
	clock := &testClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	be := keystest.NewMem()
	signKey(t, be)
	dir := bgDir(t)
	if err := os.MkdirAll(filepath.Join(dir, "state"), 0o700); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 16<<20+1)
	for i := range big {
		big[i] = ' '
	}
	if err := os.WriteFile(filepath.Join(dir, "state", "breakglass-seen.json"), big, 0o600); err != nil {
		t.Fatal(err)
	}
	d := startRulesIn(t, dir, be, clock, hostA, rulesTable{})
	expect(t, as(t, d.sock, 0), "create db/other aes-256-gcm", "OK")
	if got := as(t, d.sock, rqUID).do("bg-request db db/sign sign 600 INC-51"); strings.HasPrefix(got, "OK") {
		t.Errorf("request stored with break-glass off: %q", got)
	}
	if !strings.Contains(d.logs.String(), "break-glass is off: the high-water file is too large") {
		t.Errorf("no ERROR line:\n%s", d.logs.String())
	}
}

// TestBreakglassSeenFileRefused: a high-water file keywardd may not trust
// (readable by others, another user's, a symlink) is a configuration
// error (exit 3, not restarted), naming the file; garbage in a file of
// the right owner and mode is an integrity failure (exit 5).
func TestBreakglassSeenFileRefused(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, path string)
		want  error
	}{
		{"readable by others", func(t *testing.T, path string) { writeSeen(t, path, "{}", 0o644, 0) }, config.ErrConfig},
		{"another user's", func(t *testing.T, path string) { writeSeen(t, path, "{}", 0o600, rqUID) }, config.ErrConfig},
		{"symlink", func(t *testing.T, path string) {
			writeSeen(t, path+".real", "{}", 0o600, 0)
			if err := os.Symlink(path+".real", path); err != nil {
				t.Fatal(err)
			}
		}, config.ErrConfig},
		{"not keywardd's", func(t *testing.T, path string) { writeSeen(t, path, "garbage", 0o600, 0) }, keys.ErrIntegrity},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := bgDir(t)
			path := filepath.Join(dir, "state", "breakglass-seen.json")
			tc.setup(t, path)
			_, err := startBG(t, dir, keystest.NewMem(), &testClock{now: time.Now()}, 1)
			if !errors.Is(err, tc.want) || !strings.Contains(fmt.Sprint(err), path) && tc.want == config.ErrConfig {
				t.Fatalf("start: %v, want %v naming %s", err, tc.want, path)
			}
			if tc.want == config.ErrConfig && errors.Is(err, keys.ErrIntegrity) {
				t.Errorf("start: %v is also an integrity failure", err)
			}
		})
	}
}

func writeSeen(t *testing.T, path, body string, mode os.FileMode, uid int) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(body), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, uid, uid); err != nil {
		t.Fatal(err)
	}
}

// TestBreakglassWithdrawnElsewhere: a request another daemon withdrew,
// seen pending here first, is remembered here until its request expiry
// plus the longest max_duration and an hour (it may have been active in a
// generation this daemon never saw), then forgotten.
func TestBreakglassWithdrawnElsewhere(t *testing.T) {
	clock := &testClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	be := keystest.NewMem()
	signKey(t, be)
	dirB := bgDir(t)
	a, b := startRules(t, be, clock, hostA, rulesTable{}), startRulesIn(t, dirB, be, clock, hostB, rulesTable{})
	req := as(t, a.sock, rqUID)
	id := requestGrant(t, req, "db db/sign sign 600 INC-52")
	expect(t, as(t, b.sock, apA), "bg-list", "OK "+id+":pending")
	expect(t, req, "bg-revoke "+id, "OK revoked")
	seenB := filepath.Join(dirB, "state", "breakglass-seen.json")
	// Kept with its requester, whose withdrawal quota it counts towards.
	want := fmt.Sprintf(`%q:{"until":%q,"uid":%d,"host":%q}`, id, clock.Now().Add(30*time.Minute+25*time.Hour).Format(time.RFC3339Nano), rqUID, hostA)
	waitSeen := func(what string, has bool) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			body, _ := os.ReadFile(seenB)
			if strings.Contains(string(body), what) == has {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("high-water file of host B, want %q present=%v: %s", what, has, body)
			}
		}
	}
	waitSeen(want, true)
	clock.Add(30*time.Minute + 25*time.Hour - time.Minute)
	expect(t, as(t, b.sock, apA), "bg-list", "OK")
	waitSeen(want, true)
	clock.Add(2 * time.Minute)
	waitSeen(id, false)
}

// TestBreakglassSeenSaveFails: when the high-water file cannot be saved
// after this daemon's own change, no grant is honoured from the next call
// on (not after the view ages), until a read saves it again.
func TestBreakglassSeenSaveFails(t *testing.T) {
	clock := &testClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	be := keystest.NewMem()
	signKey(t, be)
	dir := bgDir(t)
	d := startRulesIn(t, dir, be, clock, hostA, rulesTable{})
	req := as(t, d.sock, rqUID)
	id := requestGrant(t, req, "db db/sign sign 600 INC-53")
	expect(t, as(t, d.sock, apA), "bg-approve "+id, "OK active")
	expect(t, req, "sign db/sign", "OK signed(1)")
	state := filepath.Join(dir, "state")
	if err := os.Chmod(state, 0o777); err != nil { // others may write: keywardd writes nothing there
		t.Fatal(err)
	}
	requestGrant(t, as(t, d.sock, rq2UID), "db db/sign sign 600 INC-54") // stored; its mark is not saved
	expect(t, req, "sign db/sign", "PermissionDenied PERMISSION_DENIED")
	if !strings.Contains(d.logs.String(), "high-water file cannot be written: no grant is honoured") {
		t.Errorf("no ERROR line:\n%s", d.logs.String())
	}
	if err := os.Chmod(state, 0o700); err != nil {
		t.Fatal(err)
	}
	waitAnswer(t, req, "sign db/sign", "OK signed(1)")
}

// TestBreakglassWithdrawnElsewhereCounts: requests withdrawn on another
// host count towards the requester's withdrawal quota here too, so asking
// on one host and revoking on another cannot grow this host's high-water
// file without bound.
func TestBreakglassWithdrawnElsewhereCounts(t *testing.T) {
	clock := &testClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	be := keystest.NewMem()
	signKey(t, be)
	a, b := startRules(t, be, clock, hostA, rulesTable{}), startRules(t, be, clock, hostB, rulesTable{})
	req, revoker := as(t, a.sock, rqUID), as(t, b.sock, apA)
	const args = "db db/sign sign 600 INC-53"
	for range 32 {
		id := requestGrant(t, req, args)
		expect(t, revoker, "bg-revoke "+id, "OK revoked")
		expect(t, req, "bg-list", "OK") // A reads the store afresh: the request is gone
	}
	expect(t, req, "bg-request "+args, "ResourceExhausted QUOTA_EXCEEDED")
}
