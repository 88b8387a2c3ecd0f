package daemon

import (
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyward/keyward/policy"
)

// abuseWindow is the length of one counting window.
const abuseWindow = time.Minute

// abuse counts, per caller (uid and systemd unit) and per one-minute
// window, the events that signal probing: denied requests (someone
// scanning for what they may do) and failed verify-mac calls (someone
// guessing an API credential against its stored MAC). Over the limit, the
// caller is refused for the rest of the window; one warning is logged per
// caller and window. Keyed by unit too, so one service cannot lock out
// another that runs under the same uid.
type abuse struct {
	mu     sync.Mutex
	now    func() time.Time
	log    *slog.Logger
	counts map[abuseKey]*abuseCount
	start  time.Time // start of the current window
	// counted is len(counts), readable without mu: with nobody counted,
	// which is the normal state, over answers without the lock or clock.
	counted atomic.Int64
}

type abuseKind int

const (
	abuseDenied abuseKind = iota
	abuseBadMAC
)

func (k abuseKind) String() string {
	if k == abuseDenied {
		return "denied requests"
	}
	return "failed verify-mac"
}

// caller is whom the abuse limits count: a uid and its unit ("" outside
// one).
type caller struct {
	uid  uint32
	unit string
}

func callerOf(id policy.Identity) caller { return caller{uid: id.UID, unit: id.Unit} }

type abuseKey struct {
	who  caller
	kind abuseKind
}

type abuseCount struct {
	n      int
	warned bool
}

func newAbuse(log *slog.Logger) *abuse {
	return &abuse{now: time.Now, log: log, counts: map[abuseKey]*abuseCount{}}
}

// roll starts a new window when the current one is over. Caller holds mu.
func (a *abuse) roll() {
	if now := a.now(); now.Sub(a.start) >= abuseWindow {
		a.start = now
		clear(a.counts)
		a.counted.Store(0)
	}
}

// over reports whether who is over limit for kind in this window.
func (a *abuse) over(who caller, kind abuseKind, limit int) bool {
	if a.counted.Load() == 0 {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.roll()
	c := a.counts[abuseKey{who, kind}]
	return c != nil && c.n > limit
}

// note counts one event and reports whether who is now over limit; the
// first time in a window it logs one warning.
func (a *abuse) note(who caller, kind abuseKind, limit int) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.roll()
	k := abuseKey{who, kind}
	c := a.counts[k]
	if c == nil {
		c = &abuseCount{}
		a.counts[k] = c
		a.counted.Store(int64(len(a.counts)))
	}
	c.n++
	if c.n > limit && !c.warned {
		c.warned = true
		a.log.Warn("abuse limit exceeded; refusing the caller until the window ends",
			"uid", who.uid, "unit", who.unit, "what", kind.String(), "limit_per_minute", limit, "window_ends", a.start.Add(abuseWindow).UTC().Format(time.RFC3339))
	}
	return c.n > limit
}
