package daemon

import (
	"context"
	"sync"
)

// batchSlots bounds the batch items one caller (uid and unit) has running
// at once across all its batch calls, to limits.batch_parallelism: without
// it, each of a caller's concurrent calls (up to max_concurrent_per_uid)
// could run that many items, and one caller could hold every session of
// the device while others wait.
type batchSlots struct {
	mu sync.Mutex
	by map[caller]*slotSet
}

// slotSet is one caller's slots, kept while one of its batches runs.
type slotSet struct {
	ch   chan struct{}
	refs int
}

// join returns who's slots (n, limits.batch_parallelism, if it has none
// yet: a changed limit applies once its batches in flight have ended) for
// a batch call; leave gives them back when the call ends.
func (b *batchSlots) join(who caller, n int) *slotSet {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.by == nil {
		b.by = map[caller]*slotSet{}
	}
	s := b.by[who]
	if s == nil {
		s = &slotSet{ch: make(chan struct{}, n)}
		b.by[who] = s
	}
	s.refs++
	return s
}

func (b *batchSlots) leave(who caller, s *slotSet) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if s.refs--; s.refs == 0 {
		delete(b.by, who)
	}
}

// run runs f in one of the set's slots, waiting for one. A call whose
// context ends while it waits runs f anyway: its device call fails at
// once on the ended context, and the item gets that error.
func (s *slotSet) run(ctx context.Context, f func()) {
	select {
	case s.ch <- struct{}{}:
		defer func() { <-s.ch }()
	case <-ctx.Done():
	}
	f()
}
