package hsm_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyward/keyward/hsm"
	"github.com/keyward/keyward/internal/testutil"
	"github.com/keyward/keyward/keys"
)

// TestRecordClaims: on an HSM shared by daemons on several hosts, where
// nothing serialises their key changes, a record being published is seen
// by no reader and built on by no other writer until its writer's check
// has passed. Daemon B acts while daemon A is between the steps of a
// rotation: B's wrap uses the published version, B's changes back off, and
// A's new version, once published, is the one both use; every blob
// unwraps. (Before claims, B wrapped under A's unchecked version and B's
// change built on A's record; had A then lost a race, it withdrew the
// version those depended on.)
func TestRecordClaims(t *testing.T) {
	ctx := context.Background()
	fresh := func(c *hsm.Config) { c.MetadataMaxAge = -1 }
	a, b := open(t, fresh), open(t, fresh)
	a.ActAsSharedHSM(t)
	b.ActAsSharedHSM(t)
	name := fmt.Sprintf("claims%d/k", time.Now().UnixNano()%1e9)
	if _, err := a.CreateKey(ctx, name, keys.AES256GCM); err != nil {
		t.Fatal(err)
	}
	defer a.SetClaimHook(nil)
	var blobs [][]byte
	for _, stage := range []string{"claimed", "checked"} {
		t.Run(stage, func(t *testing.T) {
			ki0, err := a.DescribeKey(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			published := uint32(len(ki0.Versions))
			fired := false
			var blob []byte
			var wrapErr, rotErr, stateErr error
			a.SetClaimHook(func(st, n string) {
				if st != stage || n != name || fired {
					return
				}
				fired = true
				blob, wrapErr = b.Wrap(ctx, name, []byte("from b"), nil)
				_, rotErr = b.RotateKey(ctx, name)
				_, stateErr = b.SetVersionState(ctx, name, 1, keys.Disabled)
			})
			ki, err := a.RotateKey(ctx, name)
			a.SetClaimHook(nil)
			if err != nil || uint32(len(ki.Versions)) != published+1 {
				t.Fatalf("A's rotation = %+v, %v", ki, err)
			}
			if !fired {
				t.Fatal("the hook never ran")
			}
			if wrapErr != nil {
				t.Fatalf("B's wrap during A's rotation: %v", wrapErr)
			}
			if u, err := a.Unwrap(ctx, blob, nil); err != nil || u.Version != published {
				t.Fatalf("B wrapped under %+v (%v), want the published v%d", u, err, published)
			}
			for what, err := range map[string]error{"rotation": rotErr, "state change": stateErr} {
				if !errors.Is(err, keys.ErrUnavailable) {
					t.Errorf("B's %s during A's rotation: %v, want ErrUnavailable", what, err)
				}
			}
			blobs = append(blobs, blob)
			for _, tk := range []*hsm.Token{a, b} {
				ki, err := tk.DescribeKey(ctx, name)
				if err != nil || uint32(len(ki.Versions)) != published+1 || ki.Versions[0].State != keys.Enabled {
					t.Fatalf("after: %+v, %v", ki, err)
				}
				bl, err := tk.Wrap(ctx, name, []byte("after"), nil)
				if err != nil {
					t.Fatal(err)
				}
				if u, err := tk.Unwrap(ctx, bl, nil); err != nil || u.Version != published+1 {
					t.Fatalf("wrap after A's rotation used %+v, %v", u, err)
				}
				blobs = append(blobs, bl)
			}
		})
	}
	for i, bl := range blobs {
		for _, tk := range []*hsm.Token{a, b} {
			if _, err := tk.Unwrap(ctx, bl, nil); err != nil {
				t.Fatalf("blob %d lost: %v", i, err)
			}
		}
	}
}

// TestStaleClaim: a claim left by a writer that stopped between claiming
// and publishing blocks changes to that key (never reads) until this writer
// has seen it for staleClaim (2 minutes) on its own clock, whatever time the
// claim says; then the next change removes it, with a warning. A writer that
// took more than half of that between claiming and publishing does not
// publish. Doctor lists claims as housekeeping. The claim rules read a clock
// the test moves by hand: how fast the token's disk is does not matter.
func TestStaleClaim(t *testing.T) {
	ctx := context.Background()
	var logs testutil.SyncBuffer
	a := open(t, func(c *hsm.Config) {
		c.MetadataMaxAge = -1
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	clock := &manualClock{now: time.Now().Round(0)}
	a.SetClaimClock(t, clock.Now)
	stale := hsm.StaleClaim()
	prefix := fmt.Sprintf("stale%d", time.Now().UnixNano()%1e9)
	old, recent := prefix+"/old", prefix+"/recent"
	for _, n := range []string{old, recent} {
		if _, err := a.CreateKey(ctx, n, keys.HMACSHA256); err != nil {
			t.Fatal(err)
		}
	}
	// Another host's claims: one that says it is an hour old (its clock
	// is ahead, or it is), one that says it is new.
	if err := a.PlantClaim(ctx, old, clock.Now().Add(-time.Hour), "other-host/1"); err != nil {
		t.Fatal(err)
	}
	if err := a.PlantClaim(ctx, recent, clock.Now(), "other-host/1"); err != nil {
		t.Fatal(err)
	}
	rep, err := a.Doctor(ctx)
	if err != nil {
		t.Fatal(err)
	}
	claims := 0
	for _, f := range rep.Findings {
		if strings.HasPrefix(f.Label, "keyward:meta-pending:"+prefix) {
			claims++
			if f.Weak || !strings.Contains(f.Problem, "claim on record generation 2") {
				t.Errorf("doctor: %+v", f)
			}
		}
	}
	if claims != 2 {
		t.Errorf("doctor lists %d claims, want 2: %+v", claims, rep.Findings)
	}

	// Reads are not affected.
	mac, err := a.MAC(ctx, recent, []byte("m"))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.VerifyMAC(ctx, recent, mac.Version, []byte("m"), mac.Bytes); err != nil {
		t.Fatalf("VerifyMAC: %v", err)
	}
	// First seen now, whatever time they say: both block, and say why;
	// still just before staleClaim has passed.
	blocked := func(when string) {
		t.Helper()
		for _, n := range []string{old, recent} {
			_, err = a.RotateKey(ctx, n)
			if !errors.Is(err, keys.ErrUnavailable) || !strings.Contains(err.Error(), "another writer (other-host/1) claimed generation 2") {
				t.Fatalf("RotateKey(%s) past a claim %s: %v", n, when, err)
			}
		}
	}
	blocked("seen for the first time")
	clock.Add(stale - time.Second)
	blocked("seen for just under staleClaim")
	clock.Add(time.Second)
	ki, err := a.RotateKey(ctx, old)
	if err != nil || len(ki.Versions) != 2 {
		t.Fatalf("RotateKey past a claim seen for staleClaim = %+v, %v", ki, err)
	}
	if !strings.Contains(logs.String(), "removing a stale claim") {
		t.Errorf("no warning for the stale claim:\n%s", logs.String())
	}
	rep, err = a.Doctor(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range rep.Findings {
		if f.Label == "keyward:meta-pending:"+old {
			t.Errorf("the stale claim is still there: %+v", f)
		}
	}

	// A writer that takes half of staleClaim between claim and record
	// publishes; one slower than that does not.
	defer a.SetClaimHook(nil)
	slowWriter := func(took time.Duration) error {
		a.SetClaimHook(func(stage, n string) {
			if stage == "checked" && n == old {
				clock.Add(took)
			}
		})
		defer a.SetClaimHook(nil)
		_, err := a.SetVersionState(ctx, old, 1, keys.Disabled)
		return err
	}
	if err := slowWriter(stale / 2); err != nil {
		t.Fatalf("a change that took half of staleClaim: %v", err)
	}
	if _, err := a.SetVersionState(ctx, old, 1, keys.Enabled); err != nil {
		t.Fatal(err)
	}
	err = slowWriter(stale/2 + time.Millisecond)
	if !errors.Is(err, keys.ErrUnavailable) || !strings.Contains(err.Error(), "passed between claiming and publishing") {
		t.Fatalf("a change slower than half of staleClaim: %v", err)
	}
	if ki, err := a.DescribeKey(ctx, old); err != nil || ki.Versions[0].State != keys.Enabled {
		t.Fatalf("after the slow change: %+v, %v", ki, err)
	}
}

// manualClock is a clock that moves only when told to.
type manualClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *manualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *manualClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// TestClaimOfDeadProcess: a claim left by a process of this host (same boot
// and pid namespace) that is gone, or whose pid now belongs to another
// process, or by this very Token (a claim whose destroy failed), is removed
// by the next change at once; a live process's waits like any other.
func TestClaimOfDeadProcess(t *testing.T) {
	ctx := context.Background()
	a := open(t, func(c *hsm.Config) { c.MetadataMaxAge = -1 })
	if _, err := os.Stat("/proc/self/ns/pid"); err != nil {
		t.Skip("no /proc")
	}
	prefix := fmt.Sprintf("dead%d", time.Now().UnixNano()%1e9)
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, claimant string
		gone           bool
	}{
		{"live process of this host", hsm.ClaimantOf(os.Getppid(), ""), false},
		{"process gone", hsm.ClaimantOf(cmd.Process.Pid, "12345"), true},
		{"pid reused by another process", hsm.ClaimantOf(os.Getppid(), "1"), true},
		{"this token", a.Claimant(), true},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			name := fmt.Sprintf("%s/k%d", prefix, i)
			if _, err := a.CreateKey(ctx, name, keys.AES256GCM); err != nil {
				t.Fatal(err)
			}
			if err := a.PlantClaim(ctx, name, time.Now(), tc.claimant); err != nil {
				t.Fatal(err)
			}
			ki, err := a.RotateKey(ctx, name)
			switch {
			case tc.gone && (err != nil || len(ki.Versions) != 2):
				t.Fatalf("RotateKey past the claim of a %s = %+v, %v", tc.name, ki, err)
			case !tc.gone && !errors.Is(err, keys.ErrUnavailable):
				t.Fatalf("RotateKey past the claim of a %s: %v, want ErrUnavailable", tc.name, err)
			}
		})
	}
}

// TestLostRecordResponse: a record create that takes effect but fails (a
// lost response, a device error) makes the token re-initialise and the
// change run again; the rerun finds the change published and returns it,
// instead of withdrawing the version the published record names (whose
// blobs would be lost) and rotating once more.
func TestLostRecordResponse(t *testing.T) {
	ctx := context.Background()
	a := open(t, func(c *hsm.Config) { c.MetadataMaxAge = -1 })
	name := fmt.Sprintf("lost%d/k", time.Now().UnixNano()%1e9)
	a.LoseRecordResponse(t, 1)
	ki, err := a.CreateKey(ctx, name, keys.AES256GCM)
	if err != nil || len(ki.Versions) != 1 {
		t.Fatalf("CreateKey with its record's response lost = %+v, %v", ki, err)
	}
	a.LoseRecordResponse(t, 1)
	ki, err = a.RotateKey(ctx, name)
	if err != nil || len(ki.Versions) != 2 {
		t.Fatalf("RotateKey with its record's response lost = %+v, %v", ki, err)
	}
	for v := uint32(1); v <= 2; v++ {
		blob, err := a.Wrap(ctx, name, []byte("x"), nil)
		if err != nil {
			t.Fatalf("wrap: %v", err)
		}
		if u, err := a.Unwrap(ctx, blob, nil); err != nil || u.Version != 2 {
			t.Fatalf("unwrap = %+v, %v", u, err)
		}
	}
	rep, err := a.Doctor(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range rep.Findings {
		if f.Key == name {
			t.Errorf("doctor: %+v", f)
		}
	}
}

// TestLeftoverVersionObject: an object of the next version that a killed
// writer generated but never published does not block rotations (it used
// to make every one fail as "another process is changing the key"); doctor
// lists it as housekeeping.
func TestLeftoverVersionObject(t *testing.T) {
	ctx := context.Background()
	a := open(t, func(c *hsm.Config) { c.MetadataMaxAge = -1 })
	name := fmt.Sprintf("leftover%d/k", time.Now().UnixNano()%1e9)
	if _, err := a.CreateKey(ctx, name, keys.AES256GCM); err != nil {
		t.Fatal(err)
	}
	if err := a.PlantVersionObject(ctx, name, 2); err != nil {
		t.Fatal(err)
	}
	ki, err := a.RotateKey(ctx, name)
	if err != nil || len(ki.Versions) != 2 {
		t.Fatalf("RotateKey past a leftover v2 object = %+v, %v", ki, err)
	}
	blob, err := a.Wrap(ctx, name, []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if u, err := a.Unwrap(ctx, blob, nil); err != nil || u.Version != 2 {
		t.Fatalf("unwrap = %+v, %v", u, err)
	}
	rep, err := a.Doctor(ctx)
	if err != nil {
		t.Fatal(err)
	}
	leftovers := 0
	for _, f := range rep.Findings {
		if f.Key == "" && strings.Contains(f.Label, name) {
			if f.Weak || !strings.Contains(f.Problem, "no key record references") {
				t.Errorf("doctor: %+v", f)
			}
			leftovers++
		}
	}
	if leftovers != 1 {
		t.Errorf("doctor lists %d leftovers, want 1: %+v", leftovers, rep.Findings)
	}
}

// TestLostRecordResponseOnDestroy: a destroy whose record create took
// effect but failed is done once (the rerun finds it published) and its
// objects go; destroying it again says it is destroyed, and removes
// objects a failure left.
func TestLostRecordResponseOnDestroy(t *testing.T) {
	ctx := context.Background()
	a := open(t, func(c *hsm.Config) { c.MetadataMaxAge = -1 })
	name := fmt.Sprintf("lostdestroy%d/k", time.Now().UnixNano()%1e9)
	if _, err := a.CreateKey(ctx, name, keys.AES256GCM); err != nil {
		t.Fatal(err)
	}
	if _, err := a.RotateKey(ctx, name); err != nil {
		t.Fatal(err)
	}
	a.LoseRecordResponse(t, 1)
	ki, err := a.DestroyVersion(ctx, name, 1)
	if err != nil || ki.Versions[0].State != keys.Destroyed {
		t.Fatalf("DestroyVersion with its record's response lost = %+v, %v", ki, err)
	}
	if _, err := a.DestroyVersion(ctx, name, 1); !errors.Is(err, keys.ErrVersionDestroyed) {
		t.Fatalf("DestroyVersion again: %v", err)
	}
	rep, err := a.Doctor(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range rep.Findings {
		if strings.Contains(f.Label, name) {
			t.Errorf("doctor: %+v (the destroyed version's objects are gone)", f)
		}
	}
}
