package daemon

import (
	"context"
	"io"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/envelope"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/policy"
	"github.com/keyward/keyward/socket"
)

// countingBackend wraps at once, counting the wraps in flight at most.
type countingBackend struct {
	instantBackend
	in, most atomic.Int32
	gate     chan struct{} // each wrap waits for a value, or the close
}

func (b *countingBackend) Wrap(ctx context.Context, key string, pt []byte, c keys.Context) ([]byte, error) {
	n := b.in.Add(1)
	for m := b.most.Load(); n > m && !b.most.CompareAndSwap(m, n); m = b.most.Load() {
	}
	<-b.gate
	b.in.Add(-1)
	return b.blob, nil
}

// TestSerialBatchesShareSlots: with batch_parallelism = 1, one caller's
// concurrent batch calls run one item at a time between them, not one per
// call (a serial batch takes the caller's slots too).
func TestSerialBatchesShareSlots(t *testing.T) {
	blob, err := envelope.Encode(envelope.Header{Alg: envelope.AlgPKCS11GCM, Name: "app/k", Version: 1, Nonce: make([]byte, 12)}, make([]byte, 48))
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policy.Compile([]policy.Rule{{Name: "all", UIDs: []uint32{1000}, Keys: []string{"**"}, Operations: []string{"wrap"}}}, policy.SystemResolver())
	if err != nil {
		t.Fatal(err)
	}
	lim := config.Defaults().Limits
	lim.BatchParallelism = 1
	be := &countingBackend{instantBackend: instantBackend{blob: blob}, gate: make(chan struct{})}
	svc := NewService(be, "pkcs11", "test", pol, lim, slog.New(slog.NewTextHandler(io.Discard, nil)))
	svc.metrics = NewMetrics(nil)
	ctx := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: socket.AuthInfo{
		Peer:           socket.Peer{UID: 1000, GID: 1000, PID: 4242},
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity},
	}})
	info := &grpc.UnaryServerInfo{FullMethod: "/keyward.v1.Keyward/BatchWrap"}
	batch := func(ctx context.Context, req any) (any, error) { return svc.BatchWrap(ctx, req.(*pb.BatchWrapRequest)) }
	req := &pb.BatchWrapRequest{}
	for range 3 {
		req.Items = append(req.Items, &pb.WrapRequest{Key: "app/k", Plaintext: []byte("x")})
	}
	const calls = 4
	var wg sync.WaitGroup
	for range calls {
		wg.Go(func() {
			if _, err := svc.interceptor(&atomicBool{})(ctx, req, info, batch); err != nil {
				t.Error(err)
			}
		})
	}
	for be.in.Load() == 0 { // one item is in; let every call reach its items
		runtime.Gosched()
	}
	for range calls * len(req.Items) {
		be.gate <- struct{}{}
	}
	wg.Wait()
	if m := be.most.Load(); m != 1 {
		t.Errorf("%d items of one caller ran at once with batch_parallelism = 1, want 1", m)
	}
}
