package daemon

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	"github.com/keyward/keyward/audit"
	"github.com/keyward/keyward/policy"
	"github.com/keyward/keyward/socket"
)

// unnamedStreams is how many calls at a time a caller that no rule names
// may have open: its calls are read (and denied, each with its audit
// record, until its denied-request limit refuses it at the door), but it
// cannot make keywardd buffer more than this many messages.
const unnamedStreams = 2

// maxHeaderListSize caps a request's HTTP/2 header block (grpc's default is
// 16 MiB): keyward's requests carry a path and a few short headers.
const maxHeaderListSize = 16 << 10

// gate admits each call when its stream opens, from its HEADERS frame,
// before any byte of its message is buffered (grpc's InTapHandle): the
// caller's kernel identity, its denied-request limit, and its uid's share
// of concurrent calls (unnamedStreams when no rule names it) decide. The
// slot is freed when the stream ends, whatever way it ends; an admitted
// call must have its whole message within limits.receive_timeout.
type gate struct {
	svc      *Service
	stopping *atomicBool
	refused  *refusals

	mu      sync.Mutex
	pending map[*pending]struct{} // admitted calls whose message has not arrived
}

func newGate(svc *Service, stopping *atomicBool, refused *refusals) *gate {
	return &gate{svc: svc, stopping: stopping, refused: refused, pending: map[*pending]struct{}{}}
}

// pending is an admitted call until its message has arrived.
type pending struct {
	id       policy.Identity
	method   string
	stream   context.Context // the transport's: done when the stream has ended
	cancel   context.CancelCauseFunc
	deadline time.Time
}

type pendingKey struct{}

// sweepEvery is how often sweep looks for calls past their receive
// deadline: a call is cut at most this long after it.
const sweepEvery = 100 * time.Millisecond

// sweep cuts, until ctx ends, the calls whose message has not arrived by
// their deadline. One sweeper instead of a timer per call: admitting a call
// costs a map entry. A call whose stream ended before its message (its
// client reset it) is dropped, not counted as a timeout.
func (g *gate) sweep(ctx context.Context) {
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			for _, p := range g.expired(now) {
				p.cancel(errReceiveTimeout)
				g.refused.note(peerOf(p.id), methodOp(p.method), ResultReceiveTimeout)
				g.svc.metrics.refusedAtOpen(ResultReceiveTimeout)
			}
		}
	}
}

// expired takes out of pending the calls past their deadline, and the
// ones whose stream has ended.
func (g *gate) expired(now time.Time) []*pending {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []*pending
	for p := range g.pending {
		switch {
		case p.stream.Err() != nil:
			delete(g.pending, p)
		case !now.Before(p.deadline):
			delete(g.pending, p)
			out = append(out, p)
		}
	}
	return out
}

// arrived takes p out of pending; false when the sweeper already cut it.
func (g *gate) arrived(p *pending) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.pending[p]; !ok {
		return false
	}
	delete(g.pending, p)
	return true
}

// tap runs in the transport's reader with its lock held: it must not block.
//
// A uid's share of calls is counted on the wire (socket.OpenStreams): a
// call counts from its HEADERS frame until its trailers are written, so a
// client that never takes its replies cannot pile them up in keywardd
// beyond its share either (gRPC's own view ends a call when its reply is
// queued), and a caller at its limit that calls again the moment it has
// its reply is not refused.
func (g *gate) tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	if g.stopping.Load() {
		return nil, statusFor(ErrShuttingDown)
	}
	id, ok := identityFrom(ctx)
	if !ok {
		return nil, statusFor(ErrDenied)
	}
	method := info.FullMethodName
	lim := g.svc.lim.Load()
	if !isStatus(method) && g.svc.abuse.over(callerOf(id), abuseDenied, lim.MaxDeniedPerMinute) {
		g.svc.metrics.rateLimited(abuseDenied)
		return nil, g.refuse(id, method, ErrRateLimited)
	}
	limit := lim.MaxConcurrentPerUID
	if !g.svc.pol.Load().Names(id) {
		limit = min(limit, unnamedStreams)
	}
	if open, ok := socket.OpenStreams(ctx); ok && open > int64(limit) { // this call included
		return nil, g.refuse(id, method, ErrTooMany)
	}
	rctx, cancel := context.WithCancelCause(ctx)
	p := &pending{id: id, method: method, stream: ctx, cancel: cancel, deadline: time.Now().Add(lim.ReceiveTimeout.Duration)}
	g.mu.Lock()
	g.pending[p] = struct{}{}
	g.mu.Unlock()
	return context.WithValue(rctx, pendingKey{}, p), nil
}

// refuse counts a refusal for the summary record and returns its status.
func (g *gate) refuse(id policy.Identity, method string, err error) error {
	r := resultFor(err)
	g.refused.note(peerOf(id), methodOp(method), r)
	g.svc.metrics.refusedAtOpen(r)
	return statusFor(err)
}

// received is the first interceptor: the call's message has arrived, so its
// receive deadline no longer applies.
func (g *gate) received(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if p, ok := ctx.Value(pendingKey{}).(*pending); ok && !g.arrived(p) {
		return nil, status.Error(codes.Canceled, errReceiveTimeout.Error())
	}
	return handler(ctx, req)
}

func peerOf(id policy.Identity) audit.Peer {
	return audit.Peer{UID: id.UID, GID: id.GID, PID: id.PID, Unit: id.Unit}
}

// connRefused hears of connections refused at their handshake.
func (g *gate) connRefused(p socket.Peer, why string) {
	g.refused.note(audit.Peer{UID: p.UID, GID: p.GID, PID: p.PID, Unit: p.Unit}, "connect", ResultConnLimit)
	g.svc.metrics.refusedAtOpen(ResultConnLimit)
}
