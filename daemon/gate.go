package daemon

import (
	"context"
	"errors"
	"path"
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

// errReceiveTimeout cuts a request whose message did not arrive within
// limits.receive_timeout.
var errReceiveTimeout = errors.New("request not received within limits.receive_timeout")

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

	mu     sync.Mutex
	active map[uint32]int // calls per uid being received or handled
	held   map[uint32]int // calls per uid handled, whose stream has not ended
}

func newGate(svc *Service, stopping *atomicBool, refused *refusals) *gate {
	return &gate{svc: svc, stopping: stopping, refused: refused, active: map[uint32]int{}, held: map[uint32]int{}}
}

// A call's states in the gate.
const (
	callAdmitted = iota // counted in active
	callHandled         // its handler returned: counted in held until its stream ends
	callEnded
)

// pending is an admitted call: its state, slot and receive deadline.
type pending struct {
	g      *gate
	id     policy.Identity
	method string
	cancel context.CancelCauseFunc
	timer  *time.Timer
	state  int // guarded by g.mu
}

// handled moves the call from active to held: its reply is on its way but
// the stream lasts until the caller has taken it.
func (p *pending) handled() {
	g := p.g
	g.mu.Lock()
	defer g.mu.Unlock()
	if p.state != callAdmitted {
		return
	}
	p.state = callHandled
	dec(g.active, p.id.UID)
	g.held[p.id.UID]++
}

// ended frees whatever the call still counts in, when its stream ends. A
// call that ended before its handler (the caller reset it) stops its
// receive deadline: it is not a timeout.
func (p *pending) ended() {
	g := p.g
	g.mu.Lock()
	defer g.mu.Unlock()
	switch p.state {
	case callAdmitted:
		p.timer.Stop()
		dec(g.active, p.id.UID)
	case callHandled:
		dec(g.held, p.id.UID)
	}
	p.state = callEnded
}

func dec(m map[uint32]int, uid uint32) {
	if m[uid]--; m[uid] <= 0 {
		delete(m, uid)
	}
}

// expire cuts a call whose message has not arrived in time.
func (p *pending) expire() {
	p.cancel(errReceiveTimeout)
	p.g.refused.note(peerOf(p.id), methodOp(p.method), ResultReceiveTimeout)
	p.g.svc.metrics.refusedAtOpen(ResultReceiveTimeout)
}

type pendingKey struct{}

// tap runs in the transport's reader with its lock held: it must not block.
func (g *gate) tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	if g.stopping.Load() {
		return nil, statusFor(ErrShuttingDown)
	}
	id, ok := identityFrom(ctx)
	if !ok {
		return nil, statusFor(ErrDenied)
	}
	method := path.Base(info.FullMethodName)
	lim := g.svc.lim.Load()
	if method != "Status" && g.svc.abuse.over(callerOf(id), abuseDenied, lim.MaxDeniedPerMinute) {
		g.svc.metrics.rateLimited(abuseDenied)
		return nil, g.refuse(id, method, ErrRateLimited)
	}
	limit := lim.MaxConcurrentPerUID
	if !g.svc.pol.Load().Names(id) {
		limit = min(limit, unnamedStreams)
	}
	if !g.acquire(id.UID, limit) {
		return nil, g.refuse(id, method, ErrTooMany)
	}
	rctx, cancel := context.WithCancelCause(ctx)
	p := &pending{g: g, id: id, method: method, cancel: cancel}
	p.timer = time.AfterFunc(lim.ReceiveTimeout.Duration, p.expire)
	context.AfterFunc(ctx, p.ended)
	return context.WithValue(rctx, pendingKey{}, p), nil
}

// refuse counts a refusal for the summary record and returns its status.
func (g *gate) refuse(id policy.Identity, method string, err error) error {
	r := resultFor(err)
	g.refused.note(peerOf(id), methodOp(method), r)
	g.svc.metrics.refusedAtOpen(r)
	return statusFor(err)
}

// acquire takes a slot for uid: at most limit calls being received or
// handled, and at most as many again handled but not yet taken by the
// caller (a client that never reads its replies would otherwise pile them
// up in keywardd without bound). The two are counted apart because a
// stream's end is seen a moment after the caller has its reply: a caller
// at its limit that calls again at once must not be refused for that.
func (g *gate) acquire(uid uint32, limit int) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.active[uid] >= limit || g.held[uid] >= limit {
		return false
	}
	g.active[uid]++
	return true
}

// received is the first interceptor: the call's message has arrived, so its
// receive deadline no longer applies; when its handler returns, its slot
// moves to held until the stream ends.
func received(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	p, ok := ctx.Value(pendingKey{}).(*pending)
	if !ok {
		return handler(ctx, req)
	}
	defer p.handled()
	if !p.timer.Stop() {
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
