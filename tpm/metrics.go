package tpm

import "github.com/keyward/keyward/keys"

var _ keys.MetricsReporter = (*TPM)(nil)

// Metrics reports Stats as metrics: recoveries, object loads and the
// rollback counter's state.
func (b *TPM) Metrics() []keys.Metric {
	s := b.Stats()
	behind := 0.0
	if s.CounterBehind {
		behind = 1
	}
	return []keys.Metric{
		{Name: "keyward_backend_recoveries_total", Help: "Times the device was usable again after a re-initialisation.", Kind: keys.Counter, Value: float64(s.Recoveries)},
		{Name: "keyward_backend_recovery_failures_total", Help: "Re-initialisation attempts that found the device unusable.", Kind: keys.Counter, Value: float64(s.RecoveryFailures)},
		{Name: "keyward_tpm_object_loads_total", Help: "TPM2_Load calls: key objects loaded because they were not in the TPM's few slots.", Kind: keys.Counter, Value: float64(s.ObjectLoads)},
		{Name: "keyward_tpm_objects_loaded", Help: "Key objects loaded in the TPM now.", Kind: keys.Gauge, Value: float64(s.ObjectsLoaded)},
		{Name: "keyward_tpm_rollback_counter_behind", Help: "1 while the last key change's rollback counter step has failed and is not yet finished.", Kind: keys.Gauge, Value: behind},
	}
}
