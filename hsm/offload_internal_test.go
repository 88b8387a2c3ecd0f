package hsm

import (
	"testing"
	"time"
)

// TestPace: a module is handed to the worker threads once its operations
// average more than slowOperation, and made from Go again below half of
// it. One long operation (an RSA signature on SoftHSM2 computes for
// milliseconds, holding a P all that time too) hands over the next few.
func TestPace(t *testing.T) {
	steps := []struct {
		name string
		d    time.Duration
		n    int
		slow bool
	}{
		{"in-process softhsm2", 20 * time.Microsecond, 100, false},
		{"one rsa signature among them", 4 * time.Millisecond, 1, true},
		{"back to hmac", 20 * time.Microsecond, 20, false},
		{"network round trips", 2 * time.Millisecond, 3, true},
		{"a few fast answers", 20 * time.Microsecond, 3, true},
		{"the device got fast", 20 * time.Microsecond, 50, false},
	}
	var p pace
	for _, s := range steps {
		for range s.n {
			p.observe(s.d, false)
		}
		if got := p.slow.Load(); got != s.slow {
			t.Errorf("after %s (%d x %v, average %v): slow %v, want %v", s.name, s.n, s.d, time.Duration(p.avg.Load()), got, s.slow)
		}
	}
}
