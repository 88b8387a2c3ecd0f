package daemon

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/tap"

	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/policy"
	"github.com/keyward/keyward/socket"
)

// BenchmarkGate: what admitting a call costs at its stream's opening and
// at its handler (identity, policy lookup, slot, receive deadline), on top
// of the interceptors CallPath measures.
func BenchmarkGate(b *testing.B) {
	pol, err := policy.Compile([]policy.Rule{{UIDs: []uint32{0}, Keys: []string{"**"}, Operations: []string{"wrap"}}}, policy.SystemResolver())
	if err != nil {
		b.Fatal(err)
	}
	s := NewService(nil, "pkcs11", "dev", pol, config.Defaults().Limits, slog.New(slog.NewTextHandler(io.Discard, nil)))
	g := newGate(s, &atomicBool{}, newRefusals(nil))
	base := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: socket.AuthInfo{Peer: socket.Peer{UID: 0}}})
	info := &tap.Info{FullMethodName: "/keyward.v1.Keyward/Wrap"}
	uinfo := &grpc.UnaryServerInfo{FullMethod: info.FullMethodName}
	handler := func(context.Context, any) (any, error) { return nil, nil }
	b.ReportAllocs()
	for b.Loop() {
		sctx, cancel := context.WithCancel(base) // the transport's stream context
		ctx, err := g.tap(sctx, info)
		if err != nil {
			b.Fatal(err)
		}
		received(ctx, nil, uinfo, handler)
		cancel()
	}
}
