package daemon

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
)

// TestBatchSlots: two batch calls of one caller share its slots: never
// more items in flight than the slots, whatever the calls; the slots are
// forgotten once the caller's last call leaves; another caller has its own.
func TestBatchSlots(t *testing.T) {
	var b batchSlots
	who, other := caller{uid: 1000}, caller{uid: 1001}
	a1, a2, o := b.join(who, 3), b.join(who, 3), b.join(other, 3)
	if a1 != a2 || a1 == o {
		t.Fatal("one caller's calls must share a slot set, another caller's not")
	}
	var in, over atomic.Int32
	gate := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 12 {
		set := a1
		if i%2 == 1 {
			set = a2
		}
		wg.Go(func() {
			set.run(context.Background(), func() {
				if in.Add(1) > 3 {
					over.Add(1)
				}
				<-gate
				in.Add(-1)
			})
		})
	}
	for in.Load() < 3 { // the first three are in; the others wait for a slot
		runtime.Gosched()
	}
	o.run(context.Background(), func() {}) // another caller is not held up
	close(gate)
	wg.Wait()
	if over.Load() != 0 {
		t.Errorf("%d items ran beyond the caller's 3 slots", over.Load())
	}
	b.leave(who, a1)
	b.leave(who, a2)
	b.leave(other, o)
	if len(b.by) != 0 {
		t.Errorf("%d slot sets kept after every call left", len(b.by))
	}
}
