package daemon_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	pb "github.com/keyward/keyward/api/keyward/v1"
	kwclient "github.com/keyward/keyward/client"
	"github.com/keyward/keyward/config"
)

// BenchmarkWrapPath is what `keyward bench --op wrap` measures, as a Go
// benchmark so that the daemon can be profiled (-cpuprofile, -memprofile):
// wraps through the socket with the client package, the key record cached
// (metadata_max_age at its default, as keywardd runs), the bench's context,
// audit off and on, single calls at 1, 8 and 64 goroutines and BatchWrap of
// 100 items at 1 and 8. Client and daemon share the process, as they share
// the machine under keyward bench. KEYWARD_BENCH_AUDIT_DIR adds a run with
// the log in that directory (a tmpfs separates fsync from the rest).
// KEYWARD_BENCH_MODES (comma-separated, e.g. "audit-on") picks modes.
func BenchmarkWrapPath(b *testing.B) {
	modes := []string{"audit-off", "audit-on"}
	if dir := os.Getenv("KEYWARD_BENCH_AUDIT_DIR"); dir != "" {
		modes = append(modes, "audit-on-dir")
	}
	if m := os.Getenv("KEYWARD_BENCH_MODES"); m != "" {
		modes = strings.Split(m, ",")
	}
	bctx := map[string]string{"bench": "keyward"}
	for _, mode := range modes {
		r := start(b, testRules(), func(c *config.Config) {
			c.Backend.MetadataMaxAge = config.Duration{} // the default, as keywardd runs
			switch mode {
			case "audit-off":
				c.AuditLog = "off"
			case "audit-on-dir":
				c.AuditLog = filepath.Join(os.Getenv("KEYWARD_BENCH_AUDIT_DIR"), fmt.Sprintf("audit-%d.log", time.Now().UnixNano()))
			}
		})
		ctx := context.Background()
		kc, err := kwclient.Dial(ctx, r.sock, kwclient.WithRetry(1, 0))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { kc.Close() })
		key := "bench/" + mode
		if _, err := kc.CreateKey(ctx, key, "aes-256-gcm"); err != nil {
			b.Fatal(err)
		}
		pt := make([]byte, 32)
		b.Run(mode+"/c1", func(b *testing.B) {
			defer cpuPerOp(b, 1)()
			for b.Loop() {
				if _, err := kc.Wrap(ctx, key, pt, bctx); err != nil {
					b.Fatal(err)
				}
			}
		})
		for _, par := range []int{4, 32} { // x GOMAXPROCS(2): 8 and 64 goroutines
			b.Run(fmt.Sprintf("%s/c%d", mode, 2*par), func(b *testing.B) {
				b.SetParallelism(par)
				defer cpuPerOp(b, 1)()
				b.RunParallel(func(p *testing.PB) {
					for p.Next() {
						if _, err := kc.Wrap(ctx, key, pt, bctx); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
		items := make([]*pb.WrapRequest, 100)
		for i := range items {
			items[i] = &pb.WrapRequest{Key: key, Plaintext: pt, Context: bctx}
		}
		batch := func(b *testing.B) {
			rs, err := kc.BatchWrap(ctx, items)
			if err == nil {
				for _, r := range rs {
					if r.Err != nil {
						err = r.Err
						break
					}
				}
			}
			if err != nil {
				b.Error(err)
			}
		}
		b.Run(mode+"/batch100/c1", func(b *testing.B) {
			defer cpuPerOp(b, len(items))()
			for b.Loop() {
				batch(b)
			}
			b.ReportMetric(float64(b.N*len(items))/b.Elapsed().Seconds(), "items/s")
		})
		b.Run(mode+"/batch100/c8", func(b *testing.B) {
			b.SetParallelism(4)
			defer cpuPerOp(b, len(items))()
			b.RunParallel(func(p *testing.PB) {
				for p.Next() {
					batch(b)
				}
			})
			b.ReportMetric(float64(b.N*len(items))/b.Elapsed().Seconds(), "items/s")
		})
	}
}

// cpuPerOp reports the process's CPU time (user and system: client, daemon
// and SoftHSM together) per operation, items operations per b.N: less
// sensitive than ns/op to what else runs on a shared machine.
func cpuPerOp(b *testing.B, items int) func() {
	var before unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &before)
	return func() {
		var after unix.Rusage
		unix.Getrusage(unix.RUSAGE_SELF, &after)
		cpu := time.Duration(after.Utime.Nano()-before.Utime.Nano()) + time.Duration(after.Stime.Nano()-before.Stime.Nano())
		b.ReportMetric(float64(cpu.Microseconds())/float64(b.N*items), "cpu-us/op")
	}
}
