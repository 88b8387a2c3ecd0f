package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
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
	// are closed at once, counted in the refusal summaries. systemd asks
	// once per credential per unit start.
	credMaxConns = 64
	// credTimeout bounds one credential request, from accept to close.
	credTimeout = 10 * time.Second
	// credOp is the audit record's op of a credential request.
	credOp = string(policy.OpCredential)
)

// credServer answers systemd's LoadCredential= requests: each connection
// is one credential of one unit, named by the abstract address its peer
// bound; the plaintext is written and the connection closed, or the
// refusal (refuse) is, which systemd does not accept as a credential.
type credServer struct {
	svc     *Service
	store   *credstore.Store
	audit   auditLog  // nil: audit off
	refused *refusals // nil: refusals are not summarised
	log     *slog.Logger
	results *prometheus.CounterVec
	slots   chan struct{}
	wg      sync.WaitGroup
	timeout time.Duration
}

func newCredServer(svc *Service, store *credstore.Store, al auditLog, refused *refusals, m *Metrics, log *slog.Logger) *credServer {
	cs := &credServer{svc: svc, store: store, audit: al, refused: refused, log: log,
		slots: make(chan struct{}, credMaxConns), timeout: credTimeout,
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyward_credential_requests_total",
			Help: "systemd credential requests (LoadCredential=) answered, by result: OK, PERMISSION_DENIED, NOT_FOUND, or an ErrorReason.",
		}, []string{"result"}),
	}
	if m != nil {
		m.Registry().MustRegister(cs.results)
	}
	return cs
}

// serve accepts until l is closed, then waits for the requests in flight.
func (cs *credServer) serve(l net.Listener) {
	defer cs.wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				cs.log.Error("credential socket: accept failed; no more credentials are served", "err", err.Error())
			}
			return
		}
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

// busy refuses a request over credMaxConns: closed at once, summarised.
func (cs *credServer) busy(c *net.UnixConn) {
	p, _ := socket.PeerOf(c)
	c.Close()
	cs.results.WithLabelValues(resultTooMany).Inc()
	if cs.refused != nil {
		cs.refused.note(audit.Peer{UID: p.UID, GID: p.GID, PID: p.PID, Unit: p.Unit}, credOp, resultTooMany)
	}
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

// handle answers one connection.
func (cs *credServer) handle(c *net.UnixConn) {
	defer c.Close()
	r := &credRequest{start: time.Now()}
	c.SetDeadline(r.start.Add(cs.timeout))
	ctx, cancel := context.WithDeadline(context.Background(), r.start.Add(cs.timeout))
	defer cancel()
	plain, err := cs.answer(ctx, c, r)
	defer secretfile.Zero(plain)
	result, reason := credResult(err)
	if aerr := cs.record(ctx, r, result, reason); aerr != nil && err == nil {
		cs.log.Error("audit log write failed: credential not served", "unit", r.req.Unit, "credential", r.req.ID, "err", aerr.Error())
		result, err = resultFor(ErrAuditUnavailable), ErrAuditUnavailable
	}
	cs.results.WithLabelValues(result).Inc()
	if err != nil {
		cs.log.Warn("credential refused", "unit", r.req.Unit, "credential", r.req.ID, "peer", r.peer.String(), "result", result, "reason", reason)
		refuse(c)
		return
	}
	if _, err := c.Write(plain); err != nil {
		cs.log.Warn("credential not delivered: writing to systemd failed", "unit", r.req.Unit, "credential", r.req.ID, "err", err.Error())
		return
	}
	c.CloseWrite()
	cs.log.Info("credential served", "unit", r.req.Unit, "credential", r.req.ID, "key", r.key, "version", r.version,
		"from", r.from, "took_us", time.Since(r.start).Microseconds())
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

// record writes the request's audit record and waits until it is durable:
// the plaintext is written only after.
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
	return cs.audit.Append(context.WithoutCancel(ctx), rec)
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
