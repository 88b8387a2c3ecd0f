package daemon

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/keyward/keyward/audit"
	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/policy"
)

// Stable MESSAGE_IDs of the break-glass journal lines (journalctl
// MESSAGE_ID=...): a security team's alerting matches on them, so they
// never change.
const (
	msgBreakglassRequested = "5f0b6c1e9a3d4e2b8c7f1a6d3e9b2c40"
	msgBreakglassApproved  = "5f0b6c1e9a3d4e2b8c7f1a6d3e9b2c41"
	msgBreakglassActive    = "5f0b6c1e9a3d4e2b8c7f1a6d3e9b2c42"
	msgBreakglassDenied    = "5f0b6c1e9a3d4e2b8c7f1a6d3e9b2c43"
	msgBreakglassUsed      = "5f0b6c1e9a3d4e2b8c7f1a6d3e9b2c44"
	msgBreakglassRevoked   = "5f0b6c1e9a3d4e2b8c7f1a6d3e9b2c45"
	msgBreakglassExpired   = "5f0b6c1e9a3d4e2b8c7f1a6d3e9b2c46"
	msgBreakglassStore     = "5f0b6c1e9a3d4e2b8c7f1a6d3e9b2c47"
)

// messageIDKey is the attribute the journal takes as MESSAGE_ID as it is
// (journalField); text logs show it as MESSAGE_ID=....
const messageIDKey = "MESSAGE_ID"

// Audit ops of the break-glass records.
const (
	auditBGRequest = "breakglass.request"
	auditBGApprove = "breakglass.approve"
	auditBGDeny    = "breakglass.deny"
	auditBGRevoke  = "breakglass.revoke"
	auditBGList    = "breakglass.list"
	auditBGExpire  = "breakglass.expire"
	auditBGRemove  = "breakglass.remove"
)

// ErrBreakglassStore: break-glass is configured but the backend keeps no
// grant records, or its grant store failed its integrity check at start.
var ErrBreakglassStore = errors.New("break-glass grant store")

// breakglass is the service's break-glass state: nil when the backend
// keeps no grants (keys.GrantStore).
type breakglass struct {
	grants  *grants
	now     func() time.Time
	metrics *breakglassMetrics
	log     *slog.Logger
	// host is this daemon's machine id: grants asked for here record it,
	// and only grants that record it are used here.
	host string
	// requests serialises a request's count and store, so that parallel
	// requests cannot pass the quotas (checkQuota).
	requests sync.Mutex
	uses     grantUses
}

// newBreakglass returns the service's break-glass state on be, or nil when
// be keeps no grants; it refuses (ErrBreakglassStore) a policy with
// [[breakglass]] tables on such a backend, and a store that cannot be read
// or fails its integrity check: a tampered store may hide a revocation or
// hold a forged approval, so keywardd does not start on it. A high-water
// file too large to read (errSeenTooBig) turns break-glass off instead (no
// grant honoured, no request stored, ERROR logged and store_ok 0 until it
// is removed): the rest of keywardd serves.
func newBreakglass(ctx context.Context, be keys.Backend, kind, seenPath string, pol *policy.Policy, now func() time.Time, log *slog.Logger, trail auditLog) (*breakglass, error) {
	gs, ok := be.(keys.GrantStore)
	configured := pol.HasBreakglass()
	if !ok {
		if configured {
			return nil, fmt.Errorf("[[breakglass]] is configured, but the %s backend keeps no break-glass grants: remove the [[breakglass]] tables or use a backend that does: %w: %w", kind, ErrBreakglassStore, config.ErrConfig)
		}
		return nil, nil
	}
	if now == nil {
		now = time.Now
	}
	b := &breakglass{grants: newGrants(gs, log, now, seenPath), now: now, log: log}
	b.grants.trail = trail
	if configured {
		if _, err := b.grants.current(ctx, true); errors.Is(err, errSeenTooBig) {
			log.Error("break-glass is off: the high-water file is too large to read; keywardd serves everything else", messageIDKey, msgBreakglassStore, "err", err.Error())
		} else if err != nil {
			log.Error("break-glass grant store failed its check: not starting", messageIDKey, msgBreakglassStore, "err", err.Error())
			return nil, fmt.Errorf("%w: %w", ErrBreakglassStore, err)
		}
	}
	return b, nil
}

// grantFor returns an active grant that allows the request the rules
// denied, or nil (no break-glass, no such grant, or a store that cannot be
// read: nothing is granted then). The grant's policy must still exist in
// the running config and still cover the request.
func (s *Service) grantFor(ctx context.Context, pol *policy.Policy, id policy.Identity, op policy.Operation, key string, c map[string]string) *grant {
	b := s.bg
	if b == nil || !pol.HasBreakglass() || !policy.IsBreakglassOperation(op) {
		return nil
	}
	view, err := b.grants.current(ctx, false)
	if err != nil {
		return nil
	}
	now := b.now()
	for _, g := range view {
		if !g.covers(id.UID, op, key, c, now) {
			continue
		}
		if bp, ok := pol.BreakglassNamed(g.Policy); ok && bp.Covers(op, key) && b.honours(bp, g, id, now) {
			return g
		}
	}
	return nil
}

// usedGrant counts one call allowed by grant g, and logs its first use
// here (later ones go into the sweep's summary line: grantUses).
func (s *Service) usedGrant(g *grant, id policy.Identity, op policy.Operation) {
	s.bg.metrics.used(g.Policy)
	if s.bg.uses.used(g, id.UID, op) {
		s.log.Warn("break-glass grant used", messageIDKey, msgBreakglassUsed, "grant", g.id, "policy", g.Policy, "op", string(op),
			"key", g.Key, "uid", id.UID, "pid", id.PID, "unit", id.Unit, "until", g.Expires.UTC().Format(time.RFC3339))
	}
}

// sweep records the expiries that happened (one daemon wins each: the
// others' compare-and-swap fails) and removes grants ended longer ago than
// grantRetention. It runs every grantSweepEvery.
func (b *breakglass) sweep(ctx context.Context, trail auditLog) {
	view, err := b.grants.current(ctx, true)
	if err != nil {
		return
	}
	now := b.now()
	for _, g := range view {
		switch st := g.state(now); {
		case st == grantActive || st == grantPending:
		case st == grantExpired && g.State != grantExpired:
			b.expire(ctx, g, trail)
		case now.Sub(g.endedAt()) > grantRetention:
			b.removeGrant(ctx, g, trail, breakglassPeer(), "ended more than 30 days ago (policy "+g.Policy+", "+g.State+")")
		}
	}
}

// expire records that g expired, unless another daemon did first.
func (b *breakglass) expire(ctx context.Context, g *grant, trail auditLog) {
	was, rid := g.State, newRequestID()
	what := "break-glass grant expired"
	if was == grantPending {
		what = "break-glass request expired unapproved"
	}
	changed, err := b.grants.change(ctx, g.id, func(g *grant, now time.Time) error {
		if g.State == grantExpired || g.state(now) != grantExpired {
			return errNotChanged
		}
		g.State, g.Ended = grantExpired, g.endedAt()
		return grantExpiryIntent(ctx, trail, g, rid, what+" (policy "+g.Policy+", was "+was+")")
	})
	if err != nil {
		if !errors.Is(err, errNotChanged) {
			b.log.Warn("break-glass: could not record an expiry (retried at the next sweep)", "grant", g.id, "err", err.Error())
		}
		return
	}
	b.metrics.event(grantExpired)
	b.log.Warn(what, messageIDKey, msgBreakglassExpired, "grant", changed.id, "policy", changed.Policy, "key", changed.Key,
		"op", changed.Op, "requester_uid", changed.Requester)
	if trail != nil {
		rec := audit.Record{Peer: breakglassPeer(), Op: auditBGExpire, Key: changed.Key, Result: "OK", Grant: changed.id,
			RequestID: rid, Reason: what + " (policy " + changed.Policy + ", was " + was + ")"}
		if err := trail.Append(context.WithoutCancel(ctx), rec); err != nil {
			b.log.Error("audit log write failed after a break-glass expiry", "grant", changed.id, "err", err.Error())
		}
	}
}

// BreakglassUnit is the unit of the peer in the audit records of
// expiries: keywardd itself records them, no caller.
const BreakglassUnit = "breakglass"

func breakglassPeer() audit.Peer {
	p := schedulerPeer()
	p.Unit = BreakglassUnit
	return p
}

// errNotChanged: a change found nothing to do (another daemon did it).
var errNotChanged = errors.New("nothing to change")

// startBreakglassSweeper runs b.sweep every grantSweepEvery, while
// configured says a break-glass policy is (no device reads otherwise),
// until ctx ends or stop is called.
func startBreakglassSweeper(ctx context.Context, b *breakglass, trail auditLog, every time.Duration, configured func() bool) (stop func()) {
	if b == nil {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(cmp.Or(every, grantSweepEvery))
		defer t.Stop()
		last := time.Now()
		for {
			if configured() {
				b.sweep(ctx, trail)
				view, _ := b.grants.current(ctx, false)
				b.uses.flush(b.log, view, time.Since(last).Round(time.Second))
				last = time.Now()
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return func() { cancel(); <-done }
}

// startBreakglass sets up break-glass for svc (newBreakglass): its metrics
// and the sweeper that records expiries; stop ends the sweeper.
func startBreakglass(ctx context.Context, svc *Service, cfg config.Config, pol *policy.Policy, opts Options, m *Metrics, trail auditLog) (stop func(), err error) {
	b, err := newBreakglass(ctx, svc.be, cfg.Backend.Kind, cfg.BreakglassState, pol, opts.BreakglassClock, svc.log, trail)
	if err != nil {
		return func() {}, err
	}
	if b != nil {
		if b.host, err = breakglassHost(opts, pol.HasBreakglass()); err != nil {
			return func() {}, err
		}
	}
	bm := newBreakglassMetrics(m.Registry(), b)
	if b == nil {
		return func() {}, nil
	}
	b.metrics = bm
	svc.bg = b
	return startBreakglassSweeper(ctx, b, trail, opts.BreakglassSweepEvery, func() bool { return svc.pol.Load().HasBreakglass() }), nil
}

// breakglassHost is this daemon's machine id (Options.BreakglassHost in
// tests). Without one, a daemon with [[breakglass]] does not start: its
// grants could not be tied to this host. Without break-glass configured
// at start, a reload that adds a table is refused (breakglassFits).
func breakglassHost(opts Options, configured bool) (string, error) {
	if opts.BreakglassHost != "" {
		return opts.BreakglassHost, nil
	}
	id, err := readMachineID(machineIDPath)
	switch {
	case err != nil && configured:
		return "", fmt.Errorf("[[breakglass]] ties grants to this host's machine id: %w: %w: %w", err, ErrBreakglassStore, config.ErrConfig)
	case err != nil:
		return "", nil
	}
	return id, nil
}

// breakglassFits refuses a reloaded policy with [[breakglass]] tables when
// the backend keeps no grants.
func (s *Service) breakglassFits(pol *policy.Policy) error {
	if s.bg == nil && pol.HasBreakglass() {
		return fmt.Errorf("[[breakglass]] is configured, but the %s backend keeps no break-glass grants: %w", s.kind, ErrBreakglassStore)
	}
	if s.bg != nil && pol.HasBreakglass() && s.bg.host == "" {
		return fmt.Errorf("[[breakglass]] ties grants to this host's machine id, and %s is not usable: %w: %w", machineIDPath, errMachineID, ErrBreakglassStore)
	}
	return nil
}
