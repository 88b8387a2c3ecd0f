package tpm

import (
	"context"
	"sync"

	"github.com/keyward/keyward/keys"
)

// fairLock is the TPM's one slot, taken in turns between callers
// (keys.CallerOf): when it is free, the waiting caller served least
// recently gets it, and each caller's own calls go in arrival order. A TPM
// runs one command at a time; served in arrival order, a caller with 64
// calls queued would hold back one with a single call 64 times over.
type fairLock struct {
	mu      sync.Mutex
	held    bool
	turn    uint64             // grants so far
	callers map[string]*waiter // callers waiting, and recently served ones
	waiting int                // callers with calls queued
}

// waiter is one caller's queue and when it was last served.
type waiter struct {
	queue []chan struct{}
	last  uint64
}

// maxIdleCallers bounds the callers remembered with nothing queued.
const maxIdleCallers = 1024

var _ keys.TurnTaker = (*TPM)(nil)

// TakesTurns: the TPM's slot goes to callers in turns (keys.TurnTaker).
func (b *TPM) TakesTurns() bool { return true }

func newFairLock() *fairLock { return &fairLock{callers: map[string]*waiter{}} }

// lock takes the slot for who, or gives up with ctx's error.
func (f *fairLock) lock(ctx context.Context, who string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	f.mu.Lock()
	if !f.held {
		f.held = true
		f.served(who)
		f.mu.Unlock()
		return nil
	}
	ch := make(chan struct{})
	w := f.callers[who]
	if w == nil {
		w = &waiter{}
		f.callers[who] = w
	}
	if len(w.queue) == 0 {
		f.waiting++
	}
	w.queue = append(w.queue, ch)
	f.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
	}
	f.mu.Lock()
	if !f.withdraw(w, ch) { // handed over meanwhile: it is ours to give back
		f.mu.Unlock()
		f.unlock()
		return ctx.Err()
	}
	f.mu.Unlock()
	return ctx.Err()
}

// withdraw takes ch out of w's queue; false if it was no longer there.
func (f *fairLock) withdraw(w *waiter, ch chan struct{}) bool {
	for i, c := range w.queue {
		if c == ch {
			w.queue = append(w.queue[:i], w.queue[i+1:]...)
			if len(w.queue) == 0 {
				f.waiting--
			}
			return true
		}
	}
	return false
}

// unlock hands the slot to the waiting caller served least recently, or
// frees it.
func (f *fairLock) unlock() {
	f.mu.Lock()
	defer f.mu.Unlock()
	var next *waiter
	var who string
	for name, w := range f.callers {
		if len(w.queue) > 0 && (next == nil || w.last < next.last) {
			next, who = w, name
		}
	}
	if next == nil {
		f.held = false
		return
	}
	ch := next.queue[0]
	next.queue = next.queue[1:]
	if len(next.queue) == 0 {
		f.waiting--
	}
	f.served(who)
	close(ch)
}

// served notes a grant to who, and forgets idle callers beyond
// maxIdleCallers. f.mu is held.
func (f *fairLock) served(who string) {
	f.turn++
	w := f.callers[who]
	if w == nil {
		w = &waiter{}
		f.callers[who] = w
	}
	w.last = f.turn
	if len(f.callers)-f.waiting <= maxIdleCallers {
		return
	}
	for name, c := range f.callers {
		if len(c.queue) == 0 && name != who {
			delete(f.callers, name)
		}
	}
}
