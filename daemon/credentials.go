package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/audit"
	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/credstore"
	"github.com/keyward/keyward/envelope"
	"github.com/keyward/keyward/internal/secretfile"
	"github.com/keyward/keyward/policy"
	"github.com/keyward/keyward/socket"
)

const (
	// credMaxConns bounds the credential requests served at once; more
	// get the refusal from a writer of their own (credMaxRefusing), never
	// queued behind the requests being answered. systemd asks once per
	// credential per unit start.
	credMaxConns = 64
	// credMaxRefusing bounds the refusals written at once to requests over
	// credMaxConns; past it a request is closed with nothing written (and
	// logged), the only answer left that cannot pile up goroutines.
	credMaxRefusing = 256
	// credTimeout bounds the work on one request (peer checks, store,
	// device, audit record) from accept; credWriteTimeout then bounds the
	// write of the answer on its own, so that work finishing late still
	// leaves time to write the refusal.
	credTimeout      = 8 * time.Second
	credWriteTimeout = 2 * time.Second
	// credRefuseTimeout bounds the write of a refusal to a request over
	// credMaxConns.
	credRefuseTimeout = 2 * time.Second
	// credOp is the audit record's op of a credential request.
	credOp = string(policy.OpCredential)
	// resultNotDelivered is the result of the second record of a request
	// whose plaintext could not be written after its OK record.
	resultNotDelivered = "NOT_DELIVERED"
)

// credServer answers systemd's LoadCredential= requests: each connection
// is one credential of one unit, named by the abstract address its peer
// bound; the plaintext is written and the connection closed, or the
// refusal (refuse) is, which systemd does not accept as a credential.
type credServer struct {
	svc      *Service
	store    *credstore.Store
	audit    auditLog  // nil: audit off
	refused  *refusals // nil: refusals are not summarised
	log      *slog.Logger
	results  *prometheus.CounterVec
	slots    chan struct{}
	refusing chan struct{}
	dropped  atomic.Uint64 // requests closed with nothing written: every refusal writer busy
	wg       sync.WaitGroup
	// timeout, writeTimeout and refuseTimeout are credTimeout,
	// credWriteTimeout and credRefuseTimeout (tests shorten them).
	timeout, writeTimeout, refuseTimeout time.Duration
	// acceptBackoff is the first pause after a failed accept; it doubles
	// up to a second, as grpc's server does.
	acceptBackoff time.Duration
	// beforeWrite, when set, runs after the work on a request and before
	// its answer is written (tests: a peer that goes away).
	beforeWrite func()
}

func newCredServer(svc *Service, store *credstore.Store, al auditLog, refused *refusals, m *Metrics, log *slog.Logger) *credServer {
	cs := &credServer{svc: svc, store: store, audit: al, refused: refused, log: log,
		slots: make(chan struct{}, credMaxConns), refusing: make(chan struct{}, credMaxRefusing),
		timeout: credTimeout, writeTimeout: credWriteTimeout, refuseTimeout: credRefuseTimeout,
		acceptBackoff: 5 * time.Millisecond,
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyward_credential_requests_total",
			Help: "systemd credential requests (LoadCredential=) answered, by result: OK, PERMISSION_DENIED, NOT_FOUND, NOT_DELIVERED, or an ErrorReason.",
		}, []string{"result"}),
	}
	if m != nil {
		m.Registry().MustRegister(cs.results)
	}
	return cs
}

// serve accepts until l is closed, then waits for the requests in flight.
// A failed accept (EMFILE, ENFILE, ENOMEM...) is retried after a pause
// that doubles up to a second: credentials are served again once the
// condition clears.
func (cs *credServer) serve(l net.Listener) {
	defer cs.wg.Wait()
	var pause time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			pause = min(max(2*pause, cs.acceptBackoff), time.Second)
			cs.log.Error("credential socket: accept failed; retrying", "err", err.Error(), "retry_in", pause.String())
			time.Sleep(pause)
			continue
		}
		pause = 0
		uc, ok := c.(*net.UnixConn)
		if !ok {
			c.Close()
			continue
		}
		select {
		case cs.slots <- struct{}{}:
		default:
			cs.busy(uc)
			continue
		}
		cs.wg.Add(1)
		go func() {
			defer func() { <-cs.slots; cs.wg.Done() }()
			cs.handle(uc)
		}()
	}
}

// busy refuses a request over credMaxConns: counted, summarised, and
// answered with the refusal by a writer of its own, bounded in number and
// by credRefuseTimeout, so that accept never waits; an empty answer would
// be an empty credential to systemd.
func (cs *credServer) busy(c *net.UnixConn) {
	p, _ := socket.PeerOf(c)
	cs.results.WithLabelValues(resultTooMany).Inc()
	if cs.refused != nil {
		cs.refused.note(audit.Peer{UID: p.UID, GID: p.GID, PID: p.PID, Unit: p.Unit}, credOp, resultTooMany)
	}
	select {
	case cs.refusing <- struct{}{}:
	default:
		c.Close()
		if n := cs.dropped.Add(1); n&(n-1) == 0 { // the 1st, 2nd, 4th, 8th...: a flood is not logged line by line
			cs.log.Error("credential socket: too many requests being refused; closed with nothing written", "closed_so_far", n, "pid", p.PID, "unit", p.Unit)
		}
		return
	}
	cs.wg.Add(1)
	go func() {
		defer func() { <-cs.refusing; cs.wg.Done() }()
		defer c.Close()
		c.SetWriteDeadline(time.Now().Add(cs.refuseTimeout))
		refuse(c)
	}()
}

// credRequest is one request as it is being answered, for its record.
type credRequest struct {
	peer    socket.Peer
	req     credstore.Request
	key     string
	version uint32
	from    string // the unit whose directory held the blob
	start   time.Time
}

// handle answers one connection. The work (answer, then its durable
// record) stops at cs.timeout; the answer then gets cs.writeTimeout of its
// own, so that a request whose work ran late is still refused rather than
// closed with nothing, which systemd would take as an empty credential.
func (cs *credServer) handle(c *net.UnixConn) {
	defer c.Close()
	r := &credRequest{start: time.Now()}
	ctx, cancel := context.WithDeadline(context.Background(), r.start.Add(cs.timeout))
	defer cancel()
	plain, err := cs.answer(ctx, c, r)
	defer secretfile.Zero(plain)
	if err == nil && ctx.Err() != nil {
		err = fmt.Errorf("credential: %w", ctx.Err())
	}
	result, reason := credResult(err)
	rctx := ctx
	if err != nil && ctx.Err() != nil { // a refusal is still recorded, within the write's bound
		var cancel func()
		rctx, cancel = context.WithTimeout(context.Background(), cs.writeTimeout)
		defer cancel()
	}
	aerr := cs.record(rctx, r, result, reason)
	if aerr != nil && err == nil {
		if errors.Is(aerr, context.DeadlineExceeded) { // the OK record may still land (a late fsync): say it was not served
			defer cs.notDelivered(r, aerr)
		}
		cs.log.Error("audit log write failed: credential not served", "unit", r.req.Unit, "credential", r.req.ID, "err", aerr.Error())
		result, err = resultFor(ErrAuditUnavailable), ErrAuditUnavailable
	}
	if cs.beforeWrite != nil {
		cs.beforeWrite()
	}
	c.SetWriteDeadline(time.Now().Add(cs.writeTimeout))
	if err != nil {
		cs.results.WithLabelValues(result).Inc()
		cs.log.Warn("credential refused", "unit", r.req.Unit, "credential", r.req.ID, "peer", r.peer.String(), "result", result, "reason", reason)
		refuse(c)
		return
	}
	if err := cs.deliver(c, plain); err != nil {
		cs.results.WithLabelValues(resultNotDelivered).Inc()
		cs.notDelivered(r, err)
		return
	}
	cs.results.WithLabelValues(result).Inc()
	cs.log.Info("credential served", "unit", r.req.Unit, "credential", r.req.ID, "key", r.key, "version", r.version,
		"from", r.from, "took_us", time.Since(r.start).Microseconds())
}

// deliver writes the plaintext and ends the answer. When the write fails
// (the deadline, a peer gone) the refusal's zeros follow whatever part of
// the plaintext went out, so that systemd refuses what it read.
func (cs *credServer) deliver(c *net.UnixConn, plain []byte) error {
	if _, err := c.Write(plain); err != nil {
		c.SetWriteDeadline(time.Now().Add(cs.writeTimeout))
		refuse(c)
		return err
	}
	c.CloseWrite()
	return nil
}

// notDelivered logs and records a credential whose OK record is
// durable but whose plaintext could not be written: the trail must not
// say it was served.
func (cs *credServer) notDelivered(r *credRequest, werr error) {
	cs.log.Warn("credential not delivered", "unit", r.req.Unit, "credential", r.req.ID, "err", werr.Error())
	ctx, cancel := context.WithTimeout(context.Background(), cs.writeTimeout)
	defer cancel()
	if err := cs.record(ctx, r, resultNotDelivered, "not delivered: "+werr.Error()); err != nil {
		cs.log.Error("audit log write failed: the record of an undelivered credential is missing", "unit", r.req.Unit, "credential", r.req.ID, "err", err.Error())
	}
}

// answer checks who asks for what, reads the blob and unwraps it.
func (cs *credServer) answer(ctx context.Context, c *net.UnixConn, r *credRequest) ([]byte, error) {
	p, err := socket.PeerOf(c)
	if err != nil {
		return nil, fmt.Errorf("%w: peer credentials: %v", errCredPeer, err)
	}
	r.peer = p
	name, err := peerName(c)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errCredPeer, err)
	}
	if r.req, err = credstore.ParseAddress(name); err != nil {
		return nil, fmt.Errorf("%w: %v", errCredPeer, err)
	}
	switch {
	case p.UID != 0:
		return nil, fmt.Errorf("%w: the peer is uid %d, not systemd (uid 0)", errCredPeer, p.UID)
	case !p.PIDFDVerified || p.Unit != r.req.Unit:
		return nil, fmt.Errorf("%w: the peer's cgroup is unit %q, the address names %q", errCredPeer, p.Unit, r.req.Unit)
	}
	blob, from, err := cs.store.Read(r.req.Unit, r.req.ID)
	if err != nil {
		return nil, err
	}
	r.from = from
	h, _, err := envelope.Decode(blob)
	if err != nil {
		return nil, fmt.Errorf("%s/%s: %w", from, r.req.ID, err)
	}
	r.key, r.version = h.Name, h.Version
	bound := credstore.Context(from, r.req.ID)
	// The policy decides credential by the unit alone (every request is root's).
	id := policy.Identity{UID: p.UID, GID: p.GID, PID: p.PID, Unit: r.req.Unit}
	pc := credstore.PolicyContext(from, r.req.ID)
	if d := cs.svc.pol.Load().Decide(id, policy.Request{Op: policy.OpCredential, Key: h.Name, Context: pc}, cs.svc.reserved()); !d.Allowed {
		return nil, &deniedError{reason: d.Reason, err: fmt.Errorf("credential %s: %w", h.Name, ErrDenied)}
	}
	u, err := cs.svc.be.Unwrap(ctx, blob, bound)
	if err != nil {
		return nil, err
	}
	if len(u.Plaintext) == 0 {
		return nil, fmt.Errorf("%s/%s: %w", from, r.req.ID, errCredEmpty)
	}
	r.version = u.Version
	return u.Plaintext, nil
}

// peerName is the address the peer bound (for systemd's request, an
// abstract one: "@..."), read with getpeername.
func peerName(c *net.UnixConn) (string, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return "", err
	}
	var sa unix.Sockaddr
	var serr error
	if err := raw.Control(func(fd uintptr) { sa, serr = unix.Getpeername(int(fd)) }); err != nil {
		return "", err
	}
	if serr != nil {
		return "", fmt.Errorf("getpeername: %w", serr)
	}
	su, ok := sa.(*unix.SockaddrUnix)
	if !ok || su.Name == "" {
		return "", errors.New("the peer bound no address")
	}
	return su.Name, nil
}

var (
	errCredPeer  = fmt.Errorf("not systemd asking for the unit's own credential: %w", ErrDenied)
	errCredEmpty = errors.New("the credential is empty: keyward never serves an empty credential")
)

// resultNotFound is a credential request's result when the store holds no
// such credential (nor, for an instance, its template).
const resultNotFound = "NOT_FOUND"

var resultIntegrity = pb.ErrorReason_INTEGRITY.String()

// credResult is the audit result and reason of a request's error.
func credResult(err error) (result, reason string) {
	var d *deniedError
	switch {
	case err == nil:
		return "OK", ""
	case errors.As(err, &d):
		return resultDenied, d.reason
	case errors.Is(err, ErrDenied):
		return resultDenied, err.Error()
	case errors.Is(err, credstore.ErrNotFound):
		return resultNotFound, err.Error()
	case errors.Is(err, credstore.ErrUnsafe), errors.Is(err, credstore.ErrTooLarge):
		return resultIntegrity, err.Error()
	case errors.Is(err, errCredEmpty):
		return resultInvalid, err.Error()
	}
	return resultFor(err), err.Error()
}

// record writes the request's audit record and waits until it is durable
// or ctx ends (a stalled disk: the request is then refused, while the
// record may still land): the plaintext is written only after.
func (cs *credServer) record(ctx context.Context, r *credRequest, result, reason string) error {
	if cs.audit == nil {
		return nil
	}
	if r.req.ID != "" {
		reason = "credential " + r.req.ID + fromTemplate(r) + sep(reason)
	}
	rec := audit.Record{Peer: audit.Peer{UID: r.peer.UID, GID: r.peer.GID, PID: r.peer.PID, Unit: r.req.Unit},
		Op: credOp, Key: r.key, Version: r.version, Result: result, Reason: reason,
		Duration: time.Since(r.start), RequestID: newRequestID()}
	if r.req.Unit == "" || r.peer.Unit != r.req.Unit {
		rec.Peer.Unit = r.peer.Unit // a refused peer is recorded as the kernel sees it
	}
	done := make(chan error, 1)
	go func() { done <- cs.audit.Append(ctx, rec) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("audit: credential record not durable in time: %w", ctx.Err())
	}
}

func fromTemplate(r *credRequest) string {
	if r.from != "" && r.from != r.req.Unit {
		return " from " + r.from
	}
	return ""
}

func sep(s string) string {
	if s == "" {
		return ""
	}
	return ": " + s
}

// credentialsFDName is the FileDescriptorName= of keyward-credentials.socket.
const credentialsFDName = "credentials"

// serveCredentials gives the service its credential store and serves
// credential requests on the socket systemd passed as "credentials" or,
// failing that, on credentials_socket (none when it is empty). stop closes
// the socket and waits for the requests in flight (each bounded by
// credTimeout).
func serveCredentials(cfg config.Config, svc *Service, al auditLog, refused *refusals, m *Metrics, log *slog.Logger) (stop func(), err error) {
	store := credstore.New(cfg.CredentialsDir)
	svc.creds = store
	l, ok, err := socket.SystemdOptional(credentialsFDName)
	if err != nil {
		return nil, fmt.Errorf("socket activation: %w", err)
	}
	path := cfg.CredentialsSocket
	switch {
	case ok:
		path = l.Addr().String()
	case path == "":
		return func() {}, nil
	default:
		if l, err = socket.Listen(socket.Config{Path: path, Mode: 0o600}); err != nil {
			return nil, fmt.Errorf("credentials_socket: %w", err)
		}
	}
	cs := newCredServer(svc, store, al, refused, m, log)
	done := make(chan struct{})
	go func() { cs.serve(l); close(done) }()
	log.Info("serving systemd credentials", "socket", path, "store", cfg.CredentialsDir)
	return func() { l.Close(); <-done }, nil
}

// refusalSize is one byte over what systemd reads as a credential
// (CREDENTIAL_SIZE_MAX, 1 MiB). systemd takes an empty answer for an empty
// credential and starts the unit; an answer this long fails the read, and
// with it the unit's start ("Failed to set up credentials"), which is what
// a refusal must do.
const refusalSize = 1<<20 + 1

var zeros [64 << 10]byte

// refuse answers a refused request with refusalSize zero bytes: no secret,
// and a credential systemd will not accept. A peer that is not systemd
// learns nothing from it.
func refuse(c *net.UnixConn) {
	for left := refusalSize; left > 0; {
		n, err := c.Write(zeros[:min(left, len(zeros))])
		if err != nil {
			return
		}
		left -= n
	}
	c.CloseWrite()
}
