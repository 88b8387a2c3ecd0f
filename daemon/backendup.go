package daemon

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// registerBackendUp adds keyward_backend_up: 0 while the device calls fail
// as unavailable (backendHealth) or the health probe fails, else 1. The
// probe is Status's shared one (at most one per statusMaxAge, bounded in
// time), so scrapes add no more than that to the device's load; a probe
// that succeeds after calls failed ends the run of failures, so the gauge
// does not wait for the next call to come back.
func (s *Service) registerBackendUp(reg *prometheus.Registry) {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "keyward_backend_up",
		Help: "1 when the key device answers (its health probe and the last calls succeeded), 0 while it does not.",
	}, s.backendUp))
}

func (s *Service) backendUp() float64 {
	if _, err := s.statusView(context.Background()); err != nil {
		return 0
	}
	if s.health.down.Load() {
		if n, since := s.health.ok(); n > 0 {
			s.log.Info("key backend answers its health probe again", "failed_calls", n, "unavailable_for", time.Since(since).Round(time.Millisecond))
		}
	}
	return 1
}
