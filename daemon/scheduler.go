package daemon

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyward/keyward/audit"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/policy"
)

// SchedulerUnit is the unit of the peer in the audit records of scheduled
// rotations: the daemon acting on its own, not for a caller (a systemd
// unit's name always has a suffix such as ".service", so no caller has it).
const SchedulerUnit = "scheduler"

// ResultNotDue is the outcome of a scheduled rotation that found, in the
// record it read for the change, that the key is no longer due: another
// daemon sharing the device (or an admin) rotated it first.
const ResultNotDue = "NOT_DUE"

// scheduler rotates keys whose record says they are due (keys.KeyInfo's
// NextRotation), through the backend's RotateIfDue: of several daemons
// sharing a device, one rotates and the others find the key not due. It
// disables superseded versions the same way (NextDisable,
// DisableVersionsIfDue).
type scheduler struct {
	be       keys.Backend
	log      *slog.Logger
	audit    auditLog // nil: audit off
	every    time.Duration
	now      func() time.Time
	metrics  *rotationMetrics
	disables *disableMetrics
}

// run checks once soon after the start (within a fifth of every), then
// every 80..100% of every (random, so that daemons sharing a device do
// not all come at once), until ctx ends.
func (sc *scheduler) run(ctx context.Context) {
	wait := rand.N(sc.every/5 + 1)
	for {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		sc.check(ctx)
		wait = sc.every - rand.N(sc.every/5+1)
	}
}

// check rotates every due key, disables the versions due to be disabled
// (see disable) and refreshes the metrics.
func (sc *scheduler) check(ctx context.Context) {
	all, err := sc.be.ListKeys(ctx)
	if err != nil {
		if ctx.Err() == nil {
			sc.log.Warn("scheduled rotation: cannot list the keys; next try at the next check", "err", err.Error())
			sc.metrics.checkFailed()
		}
		return
	}
	now := sc.now()
	state, disables := map[string]time.Time{}, map[string]time.Time{}
	for _, k := range all {
		_, scheduled := k.NextRotation()
		if _, ok := k.NextDisable(); !scheduled && !ok {
			continue
		}
		if ctx.Err() != nil {
			return // stopping: start no change
		}
		if k.DueAt(now) {
			if info, err := sc.rotate(ctx, k, now); err == nil {
				k = info
			}
		}
		if scheduled {
			state[k.Name], _ = k.NextRotation()
		}
		if len(k.DisableDueAt(now)) > 0 && ctx.Err() == nil { // not when stopping during the rotation
			if info, err := sc.disable(ctx, k, now); err == nil {
				k = info
			}
		}
		if next, ok := k.NextDisable(); ok {
			disables[k.Name] = next
		}
	}
	sc.disables.set(disables)
	sc.metrics.set(state, now)
}

// begin writes a scheduled job's intent record (rec, ResultStarted); an
// audit log that cannot be written stops the job, counted as failed.
func (sc *scheduler) begin(ctx context.Context, rec audit.Record, job string, result func(string)) error {
	if sc.audit == nil {
		return nil
	}
	rec.Result = ResultStarted
	if err := sc.audit.Append(ctx, rec); err != nil {
		sc.log.Error("scheduled "+job+" not started: the audit log cannot be written", "key", rec.Key, "err", err.Error())
		result("failed")
		return err
	}
	return nil
}

// rotate rotates one due key, with an intent record before and an outcome
// record after, as an admin's rotation has.
func (sc *scheduler) rotate(ctx context.Context, k keys.KeyInfo, now time.Time) (keys.KeyInfo, error) {
	rec := audit.Record{Peer: schedulerPeer(), Op: string(policy.OpKeyRotate), Key: k.Name, RequestID: newRequestID(),
		Reason: "scheduled rotation, every " + keys.FormatPeriod(k.RotationPeriod)}
	start := time.Now()
	if err := sc.begin(ctx, rec, "rotation", sc.metrics.result); err != nil {
		return keys.KeyInfo{}, err
	}
	info, rotated, err := sc.be.RotateIfDue(ctx, k.Name, now)
	rec.Duration, rec.Version, rec.Result = time.Since(start), uint32(len(info.Versions)), resultFor(err)
	switch {
	case err != nil:
		sc.log.Warn("scheduled rotation failed; next try at the next check", "key", k.Name, "request_id", rec.RequestID, "err", err.Error())
		sc.metrics.result("failed")
	case rotated:
		sc.log.Info("scheduled rotation", "key", k.Name, "version", rec.Version, "period", keys.FormatPeriod(k.RotationPeriod), "request_id", rec.RequestID)
		sc.metrics.result("rotated")
	default:
		rec.Result, rec.Reason = ResultNotDue, "scheduled rotation not needed: the key was rotated meanwhile (by another daemon sharing the device, or by hand)"
		sc.log.Info("scheduled rotation not needed: already rotated", "key", k.Name, "version", rec.Version, "request_id", rec.RequestID)
		sc.metrics.result("not_due")
	}
	if sc.audit != nil {
		if aerr := sc.audit.Append(context.WithoutCancel(ctx), rec); aerr != nil {
			sc.log.Error("audit log write failed after a scheduled rotation", "key", k.Name, "request_id", rec.RequestID, "err", aerr.Error())
		}
	}
	return info, err
}

// schedulerPeer is the daemon itself, as the peer of its own records.
func schedulerPeer() audit.Peer {
	return audit.Peer{UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), PID: int32(os.Getpid()), Unit: SchedulerUnit}
}

// startScheduler starts the scheduler (every 0: the default, 10m); stop
// ends it and waits for a check under way.
func startScheduler(ctx context.Context, sc *scheduler) (stop func()) {
	if sc.now == nil {
		sc.now = time.Now
	}
	if sc.every <= 0 {
		sc.every = 10 * time.Minute
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { sc.run(ctx) })
	return func() { cancel(); wg.Wait() }
}

// rotationMetrics are the scheduler's series. They name keys: only keys
// with a rotation period, whose names an admin chose (key.create), never
// a caller's string.
type rotationMetrics struct {
	next, overdue *prometheus.Desc
	results       *prometheus.CounterVec
	checks        prometheus.Counter
	mu            sync.Mutex
	state         map[string]time.Time
	at            time.Time
}

func newRotationMetrics(reg *prometheus.Registry) *rotationMetrics {
	m := &rotationMetrics{
		next: prometheus.NewDesc("keyward_key_next_rotation_timestamp_seconds",
			"When a key with a rotation period is due for its scheduled rotation (Unix time), as of the last check.", []string{"key"}, nil),
		overdue: prometheus.NewDesc("keyward_key_rotation_overdue",
			"1 when a key was still due for its scheduled rotation at the end of the last check (its rotation failed), else 0.", []string{"key"}, nil),
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyward_scheduled_rotations_total",
			Help: "Scheduled rotations attempted, by result: rotated, not_due (another daemon rotated first), failed; list_failed counts checks that could not list the keys.",
		}, []string{"result"}),
		checks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "keyward_rotation_checks_total",
			Help: "Checks for keys due for scheduled rotation that listed the keys (rotation_check_interval); one that stops growing means the scheduler is not running.",
		}),
	}
	for _, r := range []string{"rotated", "not_due", "failed", "list_failed"} {
		m.results.WithLabelValues(r)
	}
	reg.MustRegister(m, m.results, m.checks)
	return m
}

func (m *rotationMetrics) result(r string) { m.results.WithLabelValues(r).Inc() }
func (m *rotationMetrics) checkFailed()    { m.result("list_failed") }

// set replaces the state with a check's: each scheduled key's next
// rotation, at now.
func (m *rotationMetrics) set(state map[string]time.Time, now time.Time) {
	m.mu.Lock()
	m.state, m.at = state, now
	m.mu.Unlock()
	m.checks.Inc()
}

func (m *rotationMetrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.next
	ch <- m.overdue
}

func (m *rotationMetrics) Collect(ch chan<- prometheus.Metric) {
	m.mu.Lock()
	defer m.mu.Unlock()
	names := make([]string, 0, len(m.state))
	for n := range m.state {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		next := m.state[n]
		ch <- prometheus.MustNewConstMetric(m.next, prometheus.GaugeValue, float64(next.Unix()), n)
		overdue := 0.0
		if !m.at.Before(next) {
			overdue = 1
		}
		ch <- prometheus.MustNewConstMetric(m.overdue, prometheus.GaugeValue, overdue, n)
	}
}
