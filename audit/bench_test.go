package audit

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkAppend measures durable Appends with 1, 8 and 64 concurrent
// appenders: records/s, fsyncs/s and records per fsync (the group commit).
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
			l := open(b, filepath.Join(dir, "audit.log"), Options{})
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
		})
	}
}
