package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/keys/keystest"
	"github.com/keyward/keyward/policy"
)

// replayStore is the in-memory grant store an attacker can roll back:
// after freeze, Grants returns what it returned then.
type replayStore struct {
	*keystest.Mem
	mu     sync.Mutex
	frozen []keys.GrantRecord
}

func (r *replayStore) freeze(t *testing.T) {
	recs, err := r.Mem.Grants(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	r.frozen = recs
	r.mu.Unlock()
}

func (r *replayStore) Grants(ctx context.Context) ([]keys.GrantRecord, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.frozen != nil {
		return r.frozen, nil
	}
	return r.Mem.Grants(ctx)
}

// movingClock is an injected clock a test moves.
type movingClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *movingClock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *movingClock) Add(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }
func newMovingClock() *movingClock         { return &movingClock{now: time.Now()} }
func approveAs(svc *Service, id string) error {
	_, err := svc.BreakglassApprove(asUID(bgApprUID), &pb.BreakglassGrantRequest{Id: id})
	return err
}
func revokeAs(svc *Service, id string) error {
	_, err := svc.BreakglassRevoke(asUID(bgApprUID), &pb.BreakglassGrantRequest{Id: id})
	return err
}
func storeFails(svc *Service) error {
	_, err := svc.bg.grants.current(context.Background(), true)
	return err
}
func grantedTo(svc *Service, id string) bool {
	g, err := svc.authorizeGrant(asUID(bgReqUID), policy.OpUnwrap, "db/a", nil)
	return err == nil && g == id
}

// TestGrantHighWater: what the running daemon's high-water mark refuses
// (an older generation, a live grant's records deleted, a grant it pruned
// coming back) and what it accepts (another daemon pruning an ended grant
// after the retention). A refusal fails the whole store closed, with a
// breakglass.store audit record.
func TestGrantHighWater(t *testing.T) {
	for _, tc := range []struct {
		name   string
		attack func(t *testing.T, st *replayStore, a, other *Service, clock *movingClock, id string)
		fails  bool
	}{
		{"older generation", func(t *testing.T, st *replayStore, a, _ *Service, _ *movingClock, id string) {
			st.freeze(t) // active
			if err := revokeAs(a, id); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"live grant deleted", func(t *testing.T, st *replayStore, _, _ *Service, _ *movingClock, id string) {
			st.Mem.DeleteGrant(t.Context(), id)
		}, true},
		{"ended grant deleted early", func(t *testing.T, st *replayStore, a, _ *Service, clock *movingClock, id string) {
			revokeAs(a, id)
			clock.Add(grantRetention / 2)
			st.Mem.DeleteGrant(t.Context(), id)
		}, true},
		{"pruned by another daemon", func(t *testing.T, _ *replayStore, a, other *Service, clock *movingClock, id string) {
			revokeAs(a, id)
			clock.Add(grantRetention + time.Minute)
			other.bg.sweep(t.Context(), nil)
		}, false},
		{"pruned here, then put back", func(t *testing.T, st *replayStore, a, _ *Service, clock *movingClock, id string) {
			revokeAs(a, id)
			recs, _ := st.Mem.Grants(t.Context())
			clock.Add(grantRetention + time.Minute)
			a.bg.sweep(t.Context(), nil)
			if err := storeFails(a); err != nil {
				t.Fatalf("after its own prune: %v", err)
			}
			st.Mem.PutGrant(t.Context(), id, 1, recs[0].Body)
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := newMovingClock()
			st := &replayStore{Mem: keystest.NewMem()}
			a, other := bgService(t, st, clock.Now), bgService(t, st.Mem, clock.Now)
			id := bgRequest(t, a)
			if err := approveAs(a, id); err != nil {
				t.Fatal(err)
			}
			tc.attack(t, st, a, other, clock, id)
			err := storeFails(a)
			if got := errors.Is(err, keys.ErrIntegrity); got != tc.fails {
				t.Fatalf("read after the change: %v, want an integrity failure: %v", err, tc.fails)
			}
			if !tc.fails {
				return
			}
			if grantedTo(a, id) {
				t.Error("a grant is honoured from a store that failed its check")
			}
			if rs := a.audit.(*memTrail).results(); !strings.Contains(strings.Join(rs, "\n"), auditBGStore+"  INTEGRITY") {
				t.Errorf("no %s INTEGRITY record in %q", auditBGStore, rs)
			}
		})
	}
}

// TestGrantHighWaterFile: the mark outlives the daemon in a 0600 file: a
// daemon started on the same file refuses an older generation, one
// started without it (a fresh host) cannot tell. A high-water file that is
// a symlink, that others may read or write, or that keywardd did not
// write is refused, and nothing is granted.
func TestGrantHighWaterFile(t *testing.T) {
	st := keystest.NewMem()
	path := filepath.Join(t.TempDir(), "state", "breakglass-seen.json")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	start := func(store keys.GrantStore, path string) error {
		_, err := newGrants(store, log, time.Now, path).current(t.Context(), true)
		return err
	}
	svc := bgService(t, st, time.Now)
	id := bgRequest(t, svc)
	pending := storedBody(t, st, id)
	if err := approveAs(svc, id); err != nil {
		t.Fatal(err)
	}
	if err := start(st, path); err != nil { // sees generation 2 and keeps it
		t.Fatal(err)
	}
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode() != 0o600 {
		t.Fatalf("high-water file: %v %v, want a regular file 0600", fi, err)
	}
	if dfi, _ := os.Stat(filepath.Dir(path)); dfi.Mode().Perm() != 0o700 {
		t.Errorf("its directory was created %v, want 0700", dfi.Mode().Perm())
	}
	// The device rolled back to generation 1 (pending).
	rolled := keystest.NewMem()
	if err := rolled.PutGrant(t.Context(), id, 1, pending); err != nil {
		t.Fatal(err)
	}
	if err := start(rolled, path); !errors.Is(err, keys.ErrIntegrity) || !strings.Contains(err.Error(), "generation 1 read") {
		t.Errorf("restart on a rolled-back store: %v, want ErrIntegrity naming generation 1", err)
	}
	if err := start(rolled, filepath.Join(t.TempDir(), "none.json")); err != nil {
		t.Errorf("a fresh host (no high-water file) refused the store: %v", err)
	}
	for name, edit := range map[string]func(p string) error{
		"symlink": func(p string) error {
			if err := os.Rename(p, p+".real"); err != nil {
				return err
			}
			return os.Symlink(p+".real", p)
		},
		"mode 0644":     func(p string) error { return os.Chmod(p, 0o644) },
		"not keyward's": func(p string) error { return os.WriteFile(p, []byte(`{"v":2}`), 0o600) },
	} {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "seen.json")
			if err := start(st, p); err != nil {
				t.Fatal(err)
			}
			if err := edit(p); err != nil {
				t.Fatal(err)
			}
			if err := start(st, p); err == nil {
				t.Errorf("start on a high-water file (%s): no refusal", name)
			}
		})
	}
}

// storedBody is the body of id's newest stored record.
func storedBody(t *testing.T, st *keystest.Mem, id string) []byte {
	t.Helper()
	recs, err := st.Grants(t.Context())
	if err != nil || len(recs) != 1 || recs[0].ID != id {
		t.Fatal(recs, err)
	}
	return recs[0].Body
}

// TestHighWaterUnusableIsConfig: a state directory others may write, or a
// path under a file, is a configuration error (keywardd exits 3 at start,
// not restarted into the same failure every 5 s); a good one saves.
func TestHighWaterUnusableIsConfig(t *testing.T) {
	open := t.TempDir()
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, path string
		config     bool
	}{
		{"directory open to others", filepath.Join(open, "seen.json"), true},
		{"under a file", filepath.Join(notDir, "seen.json"), true},
		{"a private directory", filepath.Join(t.TempDir(), "state", "seen.json"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := newHighWater(tc.path).save()
			if got := errors.Is(err, config.ErrConfig); got != tc.config || !tc.config && err != nil {
				t.Errorf("save: %v (a configuration error: %v), want one: %v", err, got, tc.config)
			}
		})
	}
}
