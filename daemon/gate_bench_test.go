package daemon

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

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
		g.received(ctx, nil, uinfo, handler)
		cancel()
	}
}

// TestGateSweep: the sweeper cuts a call past its deadline, drops one whose
// stream ended first (its client reset it: not a timeout) and leaves the
// others; a call the sweeper cut is refused when its message arrives.
func TestGateSweep(t *testing.T) {
	g := newGate(nil, &atomicBool{}, newRefusals(nil))
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	add := func(deadline time.Time, ended bool) *pending {
		stream, end := context.WithCancel(context.Background())
		if ended {
			end()
		} else {
			t.Cleanup(end)
		}
		_, cancel := context.WithCancelCause(stream)
		p := &pending{stream: stream, cancel: cancel, deadline: deadline}
		g.pending[p] = struct{}{}
		return p
	}
	late := add(now.Add(-time.Millisecond), false)
	reset := add(now.Add(-time.Millisecond), true)
	onTime := add(now.Add(time.Second), false)
	got := g.expired(now)
	if len(got) != 1 || got[0] != late {
		t.Fatalf("expired: %v, want only the late call", got)
	}
	if _, ok := g.pending[reset]; ok {
		t.Error("a call whose stream ended is still pending")
	}
	if !g.arrived(onTime) {
		t.Error("a call on time was refused")
	}
	if g.arrived(late) {
		t.Error("a call the sweeper cut was let through")
	}
}
