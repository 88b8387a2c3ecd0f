package daemon

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyward/keyward/audit"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/policy"
)

// disable disables the versions of k that are due at now (superseded at
// least k.DisableAfter ago, never the newest enabled one) through the
// backend's DisableVersionsIfDue, which decides again on the record it
// changes: of several daemons sharing a device, one disables each version.
// An intent record comes before, and one outcome record per version
// disabled after (or one NOT_DUE or failure record), as the op key.disable
// with the scheduler as the peer.
func (sc *scheduler) disable(ctx context.Context, k keys.KeyInfo, now time.Time) (keys.KeyInfo, error) {
	after := keys.FormatPeriod(k.DisableAfter)
	rec := audit.Record{Peer: schedulerPeer(), Op: string(policy.OpKeyDisable), Key: k.Name, RequestID: newRequestID(),
		Reason: "scheduled disable of versions superseded more than " + after + " ago"}
	start := time.Now()
	if err := sc.begin(ctx, rec, "disable", sc.disables.result); err != nil {
		return keys.KeyInfo{}, err
	}
	info, disabled, err := sc.be.DisableVersionsIfDue(ctx, k.Name, now)
	rec.Duration, rec.Result = time.Since(start), resultFor(err)
	outcome := []audit.Record{rec}
	switch {
	case err != nil:
		sc.log.Warn("scheduled disable failed; next try at the next check", "key", k.Name, "request_id", rec.RequestID, "err", err.Error())
		sc.disables.result("failed")
	case len(disabled) > 0:
		outcome = outcome[:0]
		for _, v := range disabled {
			r := rec
			r.Version = v
			outcome = append(outcome, r)
		}
		sc.log.Info("scheduled disable", "key", k.Name, "versions", fmt.Sprint(disabled), "after", after, "request_id", rec.RequestID)
		sc.disables.result("disabled")
	default:
		outcome[0].Result, outcome[0].Reason = ResultNotDue, "scheduled disable not needed: the versions were disabled meanwhile (by another daemon sharing the device, or by hand)"
		sc.log.Info("scheduled disable not needed: already done", "key", k.Name, "request_id", rec.RequestID)
		sc.disables.result("not_due")
	}
	if sc.audit != nil {
		for _, r := range outcome {
			if aerr := sc.audit.Append(context.WithoutCancel(ctx), r); aerr != nil {
				sc.log.Error("audit log write failed after a scheduled disable", "key", k.Name, "request_id", rec.RequestID, "err", aerr.Error())
			}
		}
	}
	return info, err
}

// disableMetrics are the scheduled disabling's series. Like the rotation
// series they name only keys an admin gave a disable-after delay.
type disableMetrics struct {
	next    *prometheus.Desc
	results *prometheus.CounterVec
	mu      sync.Mutex
	state   map[string]time.Time
}

func newDisableMetrics(reg *prometheus.Registry) *disableMetrics {
	m := &disableMetrics{
		next: prometheus.NewDesc("keyward_key_next_disable_timestamp_seconds",
			"When the scheduler next disables a superseded version of a key with a disable-after delay (Unix time), as of the last check; absent when no version is pending.", []string{"key"}, nil),
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyward_scheduled_disables_total",
			Help: "Scheduled disables of superseded key versions attempted (one per key and check that found versions due), by result: disabled, not_due (another daemon disabled them first), failed.",
		}, []string{"result"}),
	}
	for _, r := range []string{"disabled", "not_due", "failed"} {
		m.results.WithLabelValues(r)
	}
	reg.MustRegister(m, m.results)
	return m
}

func (m *disableMetrics) result(r string) { m.results.WithLabelValues(r).Inc() }

// set replaces the state with a check's: each key's next disable.
func (m *disableMetrics) set(state map[string]time.Time) {
	m.mu.Lock()
	m.state = state
	m.mu.Unlock()
}

func (m *disableMetrics) Describe(ch chan<- *prometheus.Desc) { ch <- m.next }

func (m *disableMetrics) Collect(ch chan<- prometheus.Metric) {
	m.mu.Lock()
	defer m.mu.Unlock()
	names := make([]string, 0, len(m.state))
	for n := range m.state {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		ch <- prometheus.MustNewConstMetric(m.next, prometheus.GaugeValue, float64(m.state[n].Unix()), n)
	}
}
