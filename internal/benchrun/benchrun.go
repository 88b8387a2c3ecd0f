// Package benchrun is keyward bench's load engine: closed-loop workers
// that call a Target for a duration and the statistics of what they
// measured. keyward runs it over the socket; keywardd bench-baseline runs
// it on the token in-process, for the comparison.
package benchrun

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Stats is one measured run: over the socket, or in-process.
type Stats struct {
	Seconds    float64 `json:"seconds"`
	Calls      int64   `json:"calls"`  // successful calls
	Ops        int64   `json:"ops"`    // successful operations (items with --batch)
	Errors     int64   `json:"errors"` // failed operations (a failed call counts all its items)
	OpsPerS    float64 `json:"ops_per_s"`
	CallsPerS  float64 `json:"calls_per_s"`
	P50US      float64 `json:"p50_us"` // per call
	P99US      float64 `json:"p99_us"`
	P999US     float64 `json:"p999_us"`
	ItemP50US  float64 `json:"item_p50_us"` // per item: per call / batch (= per call for single calls)
	ItemP99US  float64 `json:"item_p99_us"`
	ItemP999US float64 `json:"item_p999_us"`

	// FirstErr is the first failed operation's error (by the time it was
	// made), nil when none failed.
	FirstErr error `json:"-"`
}

// Target makes one call (of batch items, or a single op) for worker w.
// It returns how many items failed and an error describing the first.
type Target func(ctx context.Context, w int) (failed int, err error)

// RunLevel runs conc workers against target for d (calls in flight get up
// to grace more), or until ctx ends. items is the number of operations per
// call.
func RunLevel(ctx context.Context, conc int, d, grace time.Duration, items int, target Target, progress func(string), label string) Stats {
	start := time.Now()
	end := start.Add(d)
	callCtx, cancel := context.WithDeadline(ctx, end.Add(grace))
	defer cancel()

	var done atomic.Int64
	stopProgress := showProgress(progress, start, d, label, &done)
	ws := make([]worker, conc)
	var wg sync.WaitGroup
	for i := range ws {
		wg.Go(func() { ws[i].run(ctx, callCtx, i, end, items, target, &done) })
	}
	wg.Wait()
	elapsed := time.Since(start)
	stopProgress()
	return summary(ws, done.Load(), elapsed, items)
}

// showProgress reports the level's progress every 200 ms until the
// returned function is called (nothing when progress is nil).
func showProgress(progress func(string), start time.Time, d time.Duration, label string, done *atomic.Int64) (stop func()) {
	if progress == nil {
		return func() {}
	}
	stopProgress := make(chan struct{})
	var progressDone sync.WaitGroup
	progressDone.Go(func() {
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stopProgress:
				progress("")
				return
			case now := <-t.C:
				el := min(now.Sub(start), d)
				progress(fmt.Sprintf("bench %s: %.1fs/%v, %d ops", label, el.Seconds(), d, done.Load()))
			}
		}
	})
	return func() {
		close(stopProgress)
		progressDone.Wait()
	}
}

// worker is what one worker of a level measured.
type worker struct {
	lat            []time.Duration
	calls, failed  int64
	firstErr       error
	firstErrAtCall time.Time
}

// run calls target as worker i until end or ctx ends (calls get callCtx),
// adding the operations that succeeded to done.
func (w *worker) run(ctx, callCtx context.Context, i int, end time.Time, items int, target Target, done *atomic.Int64) {
	w.lat = make([]time.Duration, 0, 1024)
	for {
		t0 := time.Now()
		if !t0.Before(end) || ctx.Err() != nil {
			return
		}
		failed, err := target(callCtx, i)
		lat := time.Since(t0)
		if ctx.Err() != nil {
			return // interrupted: this call does not count
		}
		if err != nil {
			w.failed += int64(failed)
			if w.firstErr == nil {
				w.firstErr, w.firstErrAtCall = err, t0
			}
			if failed >= items {
				continue // the call failed: no latency, no ops
			}
		}
		w.calls++
		w.lat = append(w.lat, lat)
		done.Add(int64(items - failed))
	}
}

// summary adds up the workers' measures: ops operations succeeded in
// elapsed, items per call.
func summary(ws []worker, ops int64, elapsed time.Duration, items int) Stats {
	var s Stats
	var all []time.Duration
	var firstAt time.Time
	for _, w := range ws {
		s.Calls += w.calls
		s.Errors += w.failed
		all = append(all, w.lat...)
		if w.firstErr != nil && (s.FirstErr == nil || w.firstErrAtCall.Before(firstAt)) {
			s.FirstErr, firstAt = w.firstErr, w.firstErrAtCall
		}
	}
	s.Ops = ops
	s.Seconds = Round(elapsed.Seconds(), 3)
	if sec := elapsed.Seconds(); sec > 0 {
		s.OpsPerS = Round(float64(s.Ops)/sec, 1)
		s.CallsPerS = Round(float64(s.Calls)/sec, 1)
	}
	slices.Sort(all)
	us := func(q float64) float64 { return Round(float64(Percentile(all, q))/1e3, 1) }
	s.P50US, s.P99US, s.P999US = us(0.50), us(0.99), us(0.999)
	per := float64(items)
	s.ItemP50US, s.ItemP99US, s.ItemP999US = Round(s.P50US/per, 2), Round(s.P99US/per, 2), Round(s.P999US/per, 2)
	return s
}

// Percentile is the nearest-rank q-quantile of sorted samples (0 for none).
func Percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func Round(v float64, digits int) float64 {
	p := math.Pow10(digits)
	return math.Round(v*p) / p
}
