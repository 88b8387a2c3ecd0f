package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/internal/testutil"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/policy"
)

// probeBackend answers ListKeys with n keys and Health with health() (which
// may block); everything else is unimplemented.
type probeBackend struct {
	keys.Backend
	mu      sync.Mutex
	n       int
	listErr error
	health  func(ctx context.Context) error
}

func (b *probeBackend) ListKeys(context.Context) ([]keys.KeyInfo, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return make([]keys.KeyInfo, b.n), b.listErr
}

func (b *probeBackend) Health(ctx context.Context) error {
	b.mu.Lock()
	h := b.health
	b.mu.Unlock()
	if h == nil {
		return nil
	}
	return h(ctx)
}

func (b *probeBackend) setHealth(h func(context.Context) error) {
	b.mu.Lock()
	b.health = h
	b.mu.Unlock()
}

// note is one sd_notify datagram as the fake service manager received it.
type note struct {
	at    time.Time
	state string
}

type fakeManager struct{ c chan note }

func (m *fakeManager) Notify(state string) error {
	m.c <- note{time.Now(), state}
	return nil
}

// soon bounds waits for a datagram that normally comes at once: it only
// ends a hang, and a slow machine does not reach it.
const soon = 30 * time.Second

// next returns the next datagram with a line starting with prefix, skipping
// others, or fails after within.
func (m *fakeManager) next(t *testing.T, prefix string, within time.Duration) note {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case n := <-m.c:
			for _, l := range strings.Split(n.state, "\n") {
				if strings.HasPrefix(l, prefix) {
					return n
				}
			}
		case <-deadline:
			t.Fatalf("no %q within %v", prefix, within)
		}
	}
}

// none fails if a datagram with a line starting with prefix arrives within d.
func (m *fakeManager) none(t *testing.T, prefix string, d time.Duration) {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case n := <-m.c:
			if strings.Contains("\n"+n.state, "\n"+prefix) {
				t.Fatalf("unexpected %q: %q", prefix, n.state)
			}
		case <-deadline:
			return
		}
	}
}

func newTestLifecycle(t *testing.T, be *probeBackend, watchdog time.Duration) (*lifecycle, *fakeManager, *testutil.SyncBuffer) {
	t.Helper()
	logs := &testutil.SyncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	pol, err := policy.Compile(nil, policy.SystemResolver())
	if err != nil {
		t.Fatal(err)
	}
	svc := NewService(be, "pkcs11", "test", pol, config.Defaults().Limits, log)
	m := &fakeManager{c: make(chan note, 100)}
	return newLifecycle(Options{Notifier: m, Watchdog: watchdog}, svc, log), m, logs
}

func TestLifecycleReadyAfterKeyring(t *testing.T) {
	tests := []struct {
		name    string
		listErr error
		wantErr error
	}{
		{"keyring loads", nil, nil},
		{"keyring does not load", keys.ErrIntegrity, keys.ErrIntegrity},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lc, m, _ := newTestLifecycle(t, &probeBackend{n: 3, listErr: tt.listErr}, 0)
			err := lc.start(t.Context())
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("start: %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr != nil {
				m.none(t, "READY=1", 50*time.Millisecond)
				return
			}
			n := m.next(t, "READY=1", soon)
			if !strings.Contains(n.state, "STATUS=serving: backend pkcs11 healthy; 3 keys; 0 requests served") {
				t.Errorf("READY datagram: %q", n.state)
			}
			if strings.Contains(n.state, "WATCHDOG=1") {
				t.Errorf("watchdog ping without a watchdog: %q", n.state)
			}
		})
	}
}

// TestLifecycleWatchdog: pings every half period while Health succeeds, none
// while it fails or hangs (one stuck probe at a time), again once it answers;
// each change logged once. The period is long enough that a probe (given a
// quarter of it) never times out on a busy machine; waits for a ping are
// bounded by soon, not by the period.
func TestLifecycleWatchdog(t *testing.T) {
	t.Parallel() // no device: it only waits
	const wd = time.Second
	be := &probeBackend{n: 1}
	lc, m, logs := newTestLifecycle(t, be, wd)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	if err := lc.start(ctx); err != nil {
		t.Fatal(err)
	}
	if n := m.next(t, "READY=1", soon); !strings.Contains(n.state, "WATCHDOG=1") {
		t.Errorf("READY without the first ping: %q", n.state)
	}
	first := m.next(t, "WATCHDOG=1", soon)
	var last note
	for i := 0; i < 4; i++ {
		last = m.next(t, "WATCHDOG=1", soon)
	}
	// Not more often than every half period, and well within the period
	// (a late tick on a busy machine is not a failure).
	if avg := last.at.Sub(first.at) / 4; avg < 2*wd/5 || avg > wd {
		t.Errorf("pings every %v on average, want %v", avg, wd/2)
	}

	be.setHealth(func(context.Context) error { return fmt.Errorf("token gone: %w", keys.ErrUnavailable) })
	m.next(t, "STATUS=serving: backend pkcs11 NOT answering", soon)
	m.none(t, "WATCHDOG=1", 2*wd)

	be.setHealth(nil)
	m.next(t, "WATCHDOG=1", soon)

	// A probe that never returns (a wedged device) withholds the pings and
	// is not started again while it hangs.
	var mu sync.Mutex
	started := 0
	release := make(chan struct{})
	be.setHealth(func(context.Context) error {
		mu.Lock()
		started++
		mu.Unlock()
		<-release
		return nil
	})
	m.next(t, "STATUS=serving: backend pkcs11 NOT answering", soon)
	m.none(t, "WATCHDOG=1", 3*wd)
	mu.Lock()
	if started != 1 {
		t.Errorf("%d probes started while the first hung, want 1", started)
	}
	mu.Unlock()
	be.setHealth(nil)
	close(release)
	m.next(t, "WATCHDOG=1", soon)

	out := logs.String()
	if c := strings.Count(out, "backend health probe failed: watchdog pings stop"); c != 2 {
		t.Errorf("failure logged %d times, want 2 (once per outage):\n%s", c, out)
	}
	if c := strings.Count(out, "backend health probe succeeds again"); c != 2 {
		t.Errorf("recovery logged %d times, want 2:\n%s", c, out)
	}
	if !strings.Contains(out, "token gone") {
		t.Errorf("the probe's error is not logged:\n%s", out)
	}

	cancel()
	time.Sleep(wd / 2)
	m.none(t, "WATCHDOG=1", wd)
}

func TestLifecycleReloadAndStop(t *testing.T) {
	be := &probeBackend{n: 1}
	lc, m, _ := newTestLifecycle(t, be, 0)
	lc.reloading() // before READY=1: nothing to say yet
	m.none(t, "RELOADING=1", 20*time.Millisecond)
	if err := lc.start(t.Context()); err != nil {
		t.Fatal(err)
	}
	m.next(t, "READY=1", soon)

	lc.svc.served.Add(7)
	be.mu.Lock()
	be.n = 2
	be.mu.Unlock()
	lc.reloading()
	n := m.next(t, "RELOADING=1", soon)
	if !strings.Contains(n.state, "\nMONOTONIC_USEC=") {
		t.Errorf("RELOADING=1 without MONOTONIC_USEC: %q", n.state)
	}
	lc.reloaded(t.Context())
	n = m.next(t, "READY=1", soon)
	if !strings.Contains(n.state, "; 2 keys; 7 requests served") {
		t.Errorf("READY after the reload: %q", n.state)
	}
	lc.stopping()
	m.next(t, "STOPPING=1", soon)
}

// TestLifecycleWithoutManager: no Notifier, no watchdog: start still loads
// the keyring and the rest does nothing.
func TestLifecycleWithoutManager(t *testing.T) {
	be := &probeBackend{listErr: keys.ErrUnavailable}
	pol, _ := policy.Compile(nil, policy.SystemResolver())
	log := slog.New(slog.DiscardHandler)
	lc := newLifecycle(Options{}, NewService(be, "pkcs11", "test", pol, config.Defaults().Limits, log), log)
	if err := lc.start(t.Context()); !errors.Is(err, keys.ErrUnavailable) {
		t.Fatalf("start with a keyring that does not load: %v", err)
	}
	be.listErr = nil
	if err := lc.start(t.Context()); err != nil {
		t.Fatal(err)
	}
	lc.reloading()
	lc.reloaded(t.Context())
	lc.stopping()
}

func TestJournalField(t *testing.T) {
	tests := []struct{ key, want string }{
		{"uid", "UID"},
		{"down_for", "DOWN_FOR"},
		{"err", "ERR"},
		{"unit", "KEYWARD_UNIT"},
		{"message", "KEYWARD_MESSAGE"},
		{"priority", "KEYWARD_PRIORITY"},
		{"a.b-c", "A_B_C"},
		{"_private", "KEYWARD__PRIVATE"},
		{"9lives", "KEYWARD_9LIVES"},
		{"clé", "CL__"},
		{"", ""},
		{"MESSAGE_ID", "MESSAGE_ID"}, // keywardd's own stable ids
		{"message_id", "KEYWARD_MESSAGE_ID"},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			if got := journalField(tt.key); got != tt.want {
				t.Errorf("journalField(%q) = %q, want %q", tt.key, got, tt.want)
			}
		})
	}
}

// TestNewLoggerText: with stderr not a journal stream (a test's), the logger
// writes text, even when $JOURNAL_STREAM is set for another file.
func TestNewLoggerText(t *testing.T) {
	t.Setenv("JOURNAL_STREAM", "1:1")
	if h := journalHandler(slog.LevelInfo); h != nil {
		t.Fatalf("journal handler chosen for a stderr that is not the journal: %T", h)
	}
	if _, ok := NewLogger("debug").Handler().(*slog.TextHandler); !ok {
		t.Fatalf("NewLogger: %T, want a text handler", NewLogger("debug").Handler())
	}
}
