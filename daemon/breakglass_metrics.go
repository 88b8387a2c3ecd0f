package daemon

import (
	"github.com/prometheus/client_golang/prometheus"
)

// breakglassMetrics are break-glass's series. Their labels are policy
// names (the config's) and a closed set of events, never a caller's string.
// A nil *breakglassMetrics counts nothing (service tests).
type breakglassMetrics struct {
	uses   *prometheus.CounterVec
	events *prometheus.CounterVec
}

// newBreakglassMetrics registers the series on reg: the active and pending
// gauges read b's view of the grant store (at most grantSweepEvery old
// when nobody calls), with b's clock. With b nil (a backend that keeps no
// grants) they are 0, so that dashboards and alerts find them everywhere.
func newBreakglassMetrics(reg *prometheus.Registry, b *breakglass) *breakglassMetrics {
	m := &breakglassMetrics{
		uses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyward_breakglass_uses_total",
			Help: "Calls the policy denied that an active break-glass grant allowed, by break-glass policy.",
		}, []string{"policy"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyward_breakglass_events_total",
			Help: "Break-glass grant changes made by this daemon, by event: requested, approved (an approval short of the count), active, denied, revoked, expired.",
		}, []string{"event"}),
	}
	for _, e := range []string{"requested", "approved", grantActive, grantDenied, grantRevoked, grantExpired} {
		m.events.WithLabelValues(e)
	}
	count := func(state string) func() float64 {
		return func() float64 {
			if b == nil {
				return 0
			}
			b.grants.mu.Lock()
			view, err := b.grants.view, b.grants.err
			b.grants.mu.Unlock()
			if err != nil {
				return 0
			}
			now, n := b.now(), 0
			for _, g := range view {
				if g.state(now) == state {
					n++
				}
			}
			return float64(n)
		}
	}
	active := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "keyward_breakglass_active",
		Help: "Break-glass grants active now (approved, not revoked, not expired), as of the daemon's last read of the grant store.",
	}, count(grantActive))
	pending := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "keyward_breakglass_pending",
		Help: "Break-glass requests waiting for approval, as of the daemon's last read of the grant store.",
	}, count(grantPending))
	storeOK := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "keyward_breakglass_store_ok",
		Help: "0 when the last read of the break-glass grant store failed or did not verify (no grant is honoured then); else 1 (also when the backend keeps no grants).",
	}, func() float64 {
		if b == nil {
			return 1
		}
		b.grants.mu.Lock()
		defer b.grants.mu.Unlock()
		if b.grants.err != nil {
			return 0
		}
		return 1
	})
	reg.MustRegister(m.uses, m.events, active, pending, storeOK)
	return m
}

func (m *breakglassMetrics) used(policy string) {
	if m != nil {
		m.uses.WithLabelValues(policy).Inc()
	}
}

func (m *breakglassMetrics) event(e string) {
	if m != nil {
		m.events.WithLabelValues(e).Inc()
	}
}
