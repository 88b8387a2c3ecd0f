package tpm_test

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/tpm/swtpmtest"
)

// TestFairTurns: one caller floods the TPM with 16 calls at a time while
// another makes one call at a time; the second still gets at least 40% of
// the device's operations (taking turns, each gets half; in arrival order it
// got 1 in 17). Every TPM command takes 2 ms more, as on a slow chip, so
// the flood's queue is always full.
func TestFairTurns(t *testing.T) {
	sw := swtpmtest.Start(t)
	be := openTapped(t, sw.Device(), t.TempDir(), func(cmd, rsp []byte) { time.Sleep(2 * time.Millisecond) })
	mustCreate(t, be, "fair/mac", keys.HMACSHA256)
	flood := keys.WithCaller(t.Context(), "1000/")
	victim := keys.WithCaller(t.Context(), "1001/")

	var flooded atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := be.MAC(flood, "fair/mac", []byte("flood")); err != nil {
					t.Error(err)
					return
				}
				flooded.Add(1)
			}
		})
	}
	deadline := time.Now().Add(30 * time.Second) // ends a hang; measures nothing
	for flooded.Load() < 20 {                    // the flood's queue is full
		if t.Failed() || time.Now().After(deadline) {
			t.Fatalf("the flood made %d calls", flooded.Load())
		}
		time.Sleep(time.Millisecond)
	}
	start := flooded.Load()
	const n = 40
	for range n {
		if _, err := be.MAC(victim, "fair/mac", []byte("victim")); err != nil {
			t.Fatal(err)
		}
	}
	during := flooded.Load() - start
	close(stop)
	wg.Wait()
	share := float64(n) / float64(n+during)
	t.Logf("the single caller made %d operations while the flood made %d: %.0f%% of the device's", n, during, 100*share)
	if share < 0.4 {
		t.Errorf("the single caller got %.0f%% of the TPM's operations, want at least 40%%", 100*share)
	}
}
