package daemon_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/config"
)

// BenchmarkWrapAudit: single wraps through the socket with the audit log
// off, on (group-committed fsync per batch of records) and on with
// audit_sync = "write" (no fsync on the reply path), same token,
// same run; 1, 8 and 64 goroutines on one connection. With
// KEYWARD_BENCH_AUDIT_DIR set, also with the log in that directory (a
// tmpfs there shows what is fsync and what is the rest).
func BenchmarkWrapAudit(b *testing.B) {
	modes := []string{"audit-off", "audit-on", "audit-write"}
	if dir := os.Getenv("KEYWARD_BENCH_AUDIT_DIR"); dir != "" {
		modes = append(modes, "audit-on-dir")
	}
	for _, mode := range modes {
		r := start(b, testRules(), func(c *config.Config) {
			c.Backend.MetadataMaxAge = config.Duration{} // the default, as keywardd runs (the tests re-read the record every call)
			switch mode {
			case "audit-off":
				c.AuditLog = "off"
			case "audit-write":
				c.AuditSync = "write"
			case "audit-on-dir":
				c.AuditLog = filepath.Join(os.Getenv("KEYWARD_BENCH_AUDIT_DIR"), "audit.log")
			}
		})
		c := dial(b, r.sock)
		ctx := context.Background()
		key := "bench/" + mode
		if _, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: key, KeyType: "aes-256-gcm"}); err != nil {
			b.Fatal(err)
		}
		req := &pb.WrapRequest{Key: key, Plaintext: make([]byte, 32)}
		b.Run(mode+"/c1", func(b *testing.B) {
			for b.Loop() {
				if _, err := c.Wrap(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
		})
		for _, par := range []int{4, 32} { // x GOMAXPROCS(2): 8 and 64 goroutines
			b.Run(fmt.Sprintf("%s/c%d", mode, 2*par), func(b *testing.B) {
				b.SetParallelism(par)
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if _, err := c.Wrap(ctx, req); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
	}
}
