package hsm

import (
	"slices"
	"testing"
	"time"
)

// TestPace: a module is handed to the worker threads when even the
// fastest operation of a window took longer than slowOperation, and made
// from Go again when the fastest took less than half of it. Slow outliers
// (an RSA signature, a busy machine's waits for a CPU) do not flip it.
func TestPace(t *testing.T) {
	window := func(d time.Duration, n int, rest ...time.Duration) []time.Duration {
		return append(slices.Repeat([]time.Duration{d}, n), rest...)
	}
	steps := []struct {
		name string
		ops  []time.Duration
		slow bool
	}{
		{"in-process softhsm2", window(20*time.Microsecond, paceWindow), false},
		{"an rsa signature among them", window(20*time.Microsecond, paceWindow-1, 4*time.Millisecond), false},
		{"a busy machine, one quick answer", window(5*time.Millisecond, paceWindow-1, 30*time.Microsecond), false},
		{"network round trips", window(2*time.Millisecond, paceWindow), true},
		{"between the thresholds", window(2*time.Millisecond, paceWindow-1, 150*time.Microsecond), true},
		{"the device got fast", window(20*time.Microsecond, paceWindow), false},
	}
	var p pace
	for _, s := range steps {
		if len(s.ops) != paceWindow {
			t.Fatalf("%s: %d operations, want a window of %d", s.name, len(s.ops), paceWindow)
		}
		for _, d := range s.ops {
			p.observe(d, false)
		}
		if got := p.slow.Load(); got != s.slow {
			t.Errorf("after %s: slow %v, want %v", s.name, got, s.slow)
		}
	}
}
