package audit

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkAppend measures durable Appends with 1, 8 and 64 concurrent
// appenders: records/s, fsyncs/s, records per fsync (the group commit) and
// the mean time of one sync of the log file (us/sync, from OnFsync).
// The log is in a temporary directory, or under $KEYWARD_AUDIT_BENCH_DIR to
// measure the disk the daemon will use (a tmpfs makes fsync free).
func BenchmarkAppend(b *testing.B) {
	for _, n := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("appenders=%d", n), func(b *testing.B) {
			dir := b.TempDir()
			if d := os.Getenv("KEYWARD_AUDIT_BENCH_DIR"); d != "" {
				var err error
				if dir, err = os.MkdirTemp(d, "audit-bench-"); err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { os.RemoveAll(dir) })
			}
			var syncs, syncNs atomic.Int64
			l := open(b, filepath.Join(dir, "audit.log"), Options{OnFsync: func(d time.Duration) { syncs.Add(1); syncNs.Add(int64(d)) }})
			r := rec("bench-request-0123456789")
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			start := time.Now()
			for range n {
				wg.Go(func() {
					for next.Add(1) <= int64(b.N) {
						if err := l.Append(context.Background(), r); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			st := l.Stats()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "records/s")
			b.ReportMetric(float64(st.Batches)/elapsed.Seconds(), "fsyncs/s")
			b.ReportMetric(float64(st.Records)/float64(max(st.Batches, 1)), "records/fsync")
			b.ReportMetric(float64(syncNs.Load())/1e3/float64(max(syncs.Load(), 1)), "us/sync")
		})
	}
}

// BenchmarkAppendBusy models the daemon: each appender spends some CPU per
// record (a handler's work: gRPC, the device call) between durable
// Appends, so both Ps are busy when the writer releases a batch. It
// reports records/s, records per fsync and the Append latency (p50, p99):
// what the writer adds between the fsync and the waiter running again
// shows there.
func BenchmarkAppendBusy(b *testing.B) {
	for _, n := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("appenders=%d", n), func(b *testing.B) {
			dir := b.TempDir()
			if d := os.Getenv("KEYWARD_AUDIT_BENCH_DIR"); d != "" {
				var err error
				if dir, err = os.MkdirTemp(d, "audit-bench-"); err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { os.RemoveAll(dir) })
			}
			l := open(b, filepath.Join(dir, "audit.log"), Options{})
			r := rec("bench-request-0123456789")
			var next atomic.Int64
			var mu sync.Mutex
			var lat []time.Duration
			var wg sync.WaitGroup
			b.ResetTimer()
			start := time.Now()
			for range n {
				wg.Go(func() {
					var mine []time.Duration
					for next.Add(1) <= int64(b.N) {
						spin(30 * time.Microsecond)
						t0 := time.Now()
						if err := l.Append(context.Background(), r); err != nil {
							b.Error(err)
							return
						}
						mine = append(mine, time.Since(t0))
					}
					mu.Lock()
					lat = append(lat, mine...)
					mu.Unlock()
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			st := l.Stats()
			slices.Sort(lat)
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "records/s")
			b.ReportMetric(float64(st.Records)/float64(max(st.Batches, 1)), "records/fsync")
			if len(lat) > 0 {
				b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-us")
				b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-us")
			}
		})
	}
}

// spin uses the CPU for d.
func spin(d time.Duration) {
	for end := time.Now().Add(d); time.Now().Before(end); {
	}
}

// BenchmarkPrepare: encoding one record's body and time, on every
// operation's path (the caller's goroutine).
func BenchmarkPrepare(b *testing.B) {
	r := rec("0123456789abcdef")
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := prepare(r, now); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAppendLines: the writer's share of a batch of 100 records:
// seq, time, prev, SHA-256 and the line.
func BenchmarkAppendLines(b *testing.B) {
	p, err := prepare(rec("0123456789abcdef"), time.Now())
	if err != nil {
		b.Fatal(err)
	}
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		buf = buf[:0]
		var prev [32]byte
		for i := range 100 {
			buf, prev = appendLine(buf, uint64(i+1), prev, p)
		}
	}
}

// BenchmarkAppendAll: batch calls of 100 records from 1 and 8 goroutines
// (one op is one call). With KEYWARD_AUDIT_BENCH_DIR on a tmpfs this is
// the log's CPU cost per batch call, fsync aside.
func BenchmarkAppendAll(b *testing.B) {
	for _, n := range []int{1, 8} {
		b.Run(fmt.Sprintf("callers=%d", n), func(b *testing.B) {
			dir := b.TempDir()
			if d := os.Getenv("KEYWARD_AUDIT_BENCH_DIR"); d != "" {
				var err error
				if dir, err = os.MkdirTemp(d, "audit-bench-"); err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { os.RemoveAll(dir) })
			}
			l := open(b, filepath.Join(dir, "audit.log"), Options{})
			rs := make([]Record, 100)
			for i := range rs {
				rs[i] = rec(fmt.Sprintf("bench-request-%010d", i))
			}
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ReportAllocs()
			b.ResetTimer()
			for range n {
				wg.Go(func() {
					for next.Add(1) <= int64(b.N) {
						if err := l.AppendAll(context.Background(), rs); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.ReportMetric(float64(b.N*len(rs))/b.Elapsed().Seconds(), "records/s")
		})
	}
}
