package tpm

import (
	"context"
	"sync"
	"testing"
)

// TestFairLockCancel: a waiter whose context ends leaves the queue (or, if
// the slot was handed to it meanwhile, hands it on), so the slot is never
// lost, whatever the interleaving.
func TestFairLockCancel(t *testing.T) {
	f := newFairLock()
	if err := f.lock(context.Background(), "a"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error)
	go func() { errc <- f.lock(ctx, "b") }()
	for {
		f.mu.Lock()
		w := f.waiting
		f.mu.Unlock()
		if w == 1 {
			break
		}
	}
	cancel()
	if err := <-errc; err != context.Canceled {
		t.Fatalf("a cancelled waiter: %v", err)
	}
	f.unlock()
	if f.held || f.waiting != 0 {
		t.Fatalf("after the holder left: held %v, %d callers waiting", f.held, f.waiting)
	}

	var wg sync.WaitGroup
	for i := range 200 {
		wg.Go(func() {
			ctx, cancel := context.WithCancel(context.Background())
			if i%3 == 0 {
				go cancel() // at any moment: before, while waiting, or after the hand-over
			}
			defer cancel()
			if f.lock(ctx, string(rune('a'+i%5))) == nil {
				f.unlock()
			}
		})
	}
	wg.Wait()
	if f.held || f.waiting != 0 {
		t.Fatalf("after 200 callers: held %v, %d callers waiting", f.held, f.waiting)
	}
	if err := f.lock(context.Background(), "z"); err != nil {
		t.Fatal(err)
	}
}
