package hsm

import "github.com/keyward/keyward/keys"

var _ keys.MetricsReporter = (*Token)(nil)

// Metrics reports Stats as metrics: recoveries and the session pool.
func (t *Token) Metrics() []keys.Metric {
	s := t.Stats()
	const sessions, sessionsHelp = "keyward_backend_sessions", "PKCS#11 sessions in the pool, by state."
	const workers, workersHelp = "keyward_backend_worker_threads", "Worker threads started for device calls, by scheduling policy: batch, or normal where the system refused SCHED_BATCH (they keep the policy they started with)."
	return []keys.Metric{
		{Name: "keyward_backend_recoveries_total", Help: "Times the device was usable again after a re-initialisation.", Kind: keys.Counter, Value: float64(s.Recoveries)},
		{Name: "keyward_backend_recovery_failures_total", Help: "Re-initialisation attempts that found the device unusable.", Kind: keys.Counter, Value: float64(s.RecoveryFailures)},
		{Name: sessions, Help: sessionsHelp, Kind: keys.Gauge, Label: "state", LabelValue: "in_use", Value: float64(s.SessionsOpen - s.SessionsIdle)},
		{Name: sessions, Help: sessionsHelp, Kind: keys.Gauge, Label: "state", LabelValue: "idle", Value: float64(s.SessionsIdle)},
		{Name: "keyward_backend_sessions_max", Help: "Bound of the PKCS#11 session pool.", Kind: keys.Gauge, Value: float64(s.SessionsMax)},
		{Name: "keyward_backend_on_workers", Help: "1 while data operations run on worker threads because the module's calls wait long (a network HSM).", Kind: keys.Gauge, Value: b2f(s.OnWorkers)},
		{Name: "keyward_backend_worker_operations_total", Help: "Data operations run on worker threads since the module was last initialised.", Kind: keys.Counter, Value: float64(s.Offloaded)},
		{Name: workers, Help: workersHelp, Kind: keys.Gauge, Label: "policy", LabelValue: "batch", Value: float64(s.WorkersBatch)},
		{Name: workers, Help: workersHelp, Kind: keys.Gauge, Label: "policy", LabelValue: "normal", Value: float64(s.WorkersOther)},
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
