package daemon

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/audit"
	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/envelope"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/policy"
	"github.com/keyward/keyward/socket"
)

// instantBackend wraps at no cost, so that what is measured is the daemon.
type instantBackend struct {
	keys.Backend
	blob []byte
}

func (b instantBackend) Wrap(context.Context, string, []byte, keys.Context) ([]byte, error) {
	return b.blob, nil
}

// BenchmarkCallPath is keywardd's own work on a call, without the socket,
// gRPC or the device: the interceptors Run installs (metrics, per-uid
// limit, audit, decode check) and the Wrap and BatchWrap (100 items)
// handlers, on a backend that answers at once. With audit on, the log is
// in $KEYWARD_BENCH_AUDIT_DIR (default: a temporary directory; a tmpfs
// leaves out the fsync); audit-write is audit_sync = "write".
func BenchmarkCallPath(b *testing.B) {
	blob, err := envelope.Encode(envelope.Header{Alg: envelope.AlgPKCS11GCM, Name: "bench/k", Version: 1, Nonce: make([]byte, 12)}, make([]byte, 48))
	if err != nil {
		b.Fatal(err)
	}
	pol, err := policy.Compile([]policy.Rule{{Name: "all", UIDs: []uint32{1000}, Keys: []string{"**"}, Operations: []string{"wrap"}}}, policy.SystemResolver())
	if err != nil {
		b.Fatal(err)
	}
	ctx := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: socket.AuthInfo{
		Peer:           socket.Peer{UID: 1000, GID: 1000, PID: 4242},
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity},
	}})
	bctx := map[string]string{"bench": "keyward"}
	for _, mode := range []string{"audit-off", "audit-on", "audit-write"} {
		log := slog.New(slog.NewTextHandler(io.Discard, nil))
		svc := NewService(instantBackend{blob: blob}, "pkcs11", "bench", pol, config.Defaults().Limits, log)
		m := NewMetrics(nil)
		svc.metrics = m
		var al *audit.Log
		if mode != "audit-off" {
			dir := os.Getenv("KEYWARD_BENCH_AUDIT_DIR")
			if dir == "" {
				dir = b.TempDir()
			} else if dir, err = os.MkdirTemp(dir, "callpath-"); err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { os.RemoveAll(dir) })
			opts := audit.Options{}
			if mode == "audit-write" {
				opts.Sync = audit.SyncWrite
			}
			if al, err = audit.Open(filepath.Join(dir, "audit.log"), opts); err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { al.Close() })
		}
		var trail auditLog // nil: audit off (never a nil *audit.Log in the interface)
		if al != nil {
			trail = al
		}
		chain := []grpc.UnaryServerInterceptor{m.interceptor(), svc.interceptor(&atomicBool{}), svc.auditInterceptor(trail, nil), checkDecoded}
		call := func(ctx context.Context, method string, req any, h grpc.UnaryHandler) (any, error) {
			info := &grpc.UnaryServerInfo{FullMethod: "/keyward.v1.Keyward/" + method}
			var next grpc.UnaryHandler = h
			for i := len(chain) - 1; i >= 0; i-- {
				ic, n := chain[i], next
				next = func(ctx context.Context, req any) (any, error) { return ic(ctx, req, info, n) }
			}
			return next(ctx, req)
		}
		wrap := func(ctx context.Context, req any) (any, error) { return svc.Wrap(ctx, req.(*pb.WrapRequest)) }
		batch := func(ctx context.Context, req any) (any, error) { return svc.BatchWrap(ctx, req.(*pb.BatchWrapRequest)) }
		req := &pb.WrapRequest{Key: "bench/k", Plaintext: make([]byte, 32), Context: bctx}
		breq := &pb.BatchWrapRequest{}
		for range 100 {
			breq.Items = append(breq.Items, req)
		}
		b.Run(mode+"/wrap", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := call(ctx, "Wrap", req, wrap); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(mode+"/batch100", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := call(ctx, "BatchWrap", breq, batch); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
