package daemon

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/hsm"
	"github.com/keyward/keyward/internal/harden"
	"github.com/keyward/keyward/internal/version"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/policy"
	"github.com/keyward/keyward/socket"
	"github.com/keyward/keyward/tpm"
)

// Version is the daemon's build version: the Makefile stamps it from git
// (package internal/version says how, and what an unstamped build reports).
var Version = version.String()

// identityFrom returns the caller's kernel identity, read at accept time.
func identityFrom(ctx context.Context) (policy.Identity, bool) {
	p, ok := socket.PeerFromContext(ctx)
	if !ok {
		return policy.Identity{}, false
	}
	return policy.Identity{UID: p.UID, GID: p.GID, Groups: p.Groups, PID: p.PID, Unit: p.Unit}, true
}

// interceptor refuses calls without a kernel identity and new calls while
// shutting down (the gate admitted them at their stream's start), and says
// when the backend answers again after failing.
func (s *Service) interceptor(stopping *atomicBool) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if stopping.Load() {
			return nil, statusFor(ErrShuttingDown)
		}
		id, ok := identityFrom(ctx)
		if !ok {
			s.log.Error("call without a peer identity", "method", info.FullMethod)
			return nil, statusFor(ErrDenied)
		}
		start := time.Now()
		if s.turns { // a TPM takes turns between callers by this name
			ctx = keys.WithCaller(ctx, strconv.FormatUint(uint64(id.UID), 10)+"/"+id.Unit)
		}
		resp, err := handler(ctx, req)
		clearSecrets(req) // done with; replies never refer to a request's bytes
		s.served.Add(1)
		if err == nil && s.health.down.Load() && !isStatus(info.FullMethod) { // Status answers with the device away
			if n, since := s.health.ok(); n > 0 {
				s.log.Info("key backend answers again", "failed_calls", n, "unavailable_for", time.Since(since).Round(time.Millisecond))
			}
		}
		if s.log.Enabled(ctx, slog.LevelDebug) { // its attributes cost allocations on every call
			s.log.Debug("call", "method", info.FullMethod, "uid", id.UID, "pid", id.PID, "took", time.Since(start), "failed", err != nil)
		}
		return resp, err
	}
}

type atomicBool struct {
	mu sync.Mutex
	v  bool
}

func (b *atomicBool) Load() bool   { b.mu.Lock(); defer b.mu.Unlock(); return b.v }
func (b *atomicBool) Store(v bool) { b.mu.Lock(); b.v = v; b.mu.Unlock() }

// HardenProcess refuses core dumps and ptrace by other processes of the
// same uid: a dump would hold plaintexts and the PIN (harden.Process).
func HardenProcess() error { return harden.Process() }

// OpenBackend opens the configured key device. Its errors wrap the
// backend's sentinels (hsm.ErrCredential, tpm.ErrCredential, tpm.ErrConfig...), which
// keywardd turns into exit codes.
func OpenBackend(ctx context.Context, cfg config.Config, log *slog.Logger) (keys.Backend, error) {
	b := cfg.Backend
	var be keys.Backend
	var err error
	switch b.Kind {
	case "pkcs11":
		var t *hsm.Token
		t, err = openToken(ctx, hsm.Config{Module: b.Module, TokenLabel: b.Token, URI: b.URI, PINFile: b.PINFile,
			Sessions: b.Sessions, MetadataMaxAge: b.MetadataMaxAge.Duration, Logger: log}, log)
		be = t
	case "tpm":
		var t *tpm.TPM
		t, err = tpm.Open(ctx, tpm.Config{Device: b.Device, StateDir: b.StateDir, PINFile: b.PINFile,
			ParentHandle: uint32(b.ParentHandle), NoRollbackCounter: b.RollbackCounter != nil && !*b.RollbackCounter, Logger: log})
		be = t
	default:
		err = fmt.Errorf("backend.kind %q: %w", b.Kind, config.ErrConfig)
	}
	if err != nil {
		return nil, err // never a nil *Token in a non-nil interface
	}
	return be, nil
}

// tokenAttempts and tokenRetryAfter bound how often opening a token that
// the module does not list is tried again. SoftHSM2 lists the tokens it
// could read at C_Initialize, and one whose token.object another process
// is rewriting at that moment (every C_Login does) is left out; a network
// HSM's partition can also show late. Each attempt loads the module anew.
const (
	tokenAttempts   = 4
	tokenRetryAfter = 250 * time.Millisecond
)

// openToken is hsm.Open, tried again when the token is not found.
func openToken(ctx context.Context, cfg hsm.Config, log *slog.Logger) (*hsm.Token, error) {
	for attempt := 1; ; attempt++ {
		t, err := hsm.Open(ctx, cfg)
		if err == nil || !errors.Is(err, hsm.ErrTokenNotFound) || attempt == tokenAttempts {
			return t, err
		}
		log.Warn("pkcs11 token not found; trying again", "err", err, "attempt", attempt, "of", tokenAttempts)
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(tokenRetryAfter):
		}
	}
}

// restartOnly lists what a reload cannot change in a running daemon, so
// the log says so instead of pretending the whole file applied.
func restartOnly(old, cur config.Config) []string {
	var out []string
	if old.Socket != cur.Socket || old.SocketGroup != cur.SocketGroup || old.SystemdSocketName != cur.SystemdSocketName {
		out = append(out, "socket")
	}
	if old.KMSSocket != cur.KMSSocket || old.KMSKey != cur.KMSKey {
		out = append(out, "kms_socket, kms_key")
	}
	if old.CredentialsSocket != cur.CredentialsSocket || old.CredentialsDir != cur.CredentialsDir {
		out = append(out, "credentials_socket, credentials_dir")
	}
	if old.LogLevel != cur.LogLevel {
		out = append(out, "log_level")
	}
	if old.Backend != cur.Backend {
		out = append(out, "backend")
	}
	if old.AuditLog != cur.AuditLog || old.AuditMaxFileSize != cur.AuditMaxFileSize || old.AuditCheckpointKey != cur.AuditCheckpointKey ||
		old.AuditCheckpointEvery != cur.AuditCheckpointEvery || old.AuditCheckpointInterval != cur.AuditCheckpointInterval ||
		old.AuditSync != cur.AuditSync || old.AuditSyncInterval != cur.AuditSyncInterval ||
		old.AuditPreallocate != cur.AuditPreallocate {
		out = append(out, "audit_log, audit_max_file_size, audit_sync*, audit_preallocate, audit_checkpoint_*")
	}
	ol, nl := old.Limits, cur.Limits
	if ol.MaxMessage != nl.MaxMessage || ol.MaxConnections != nl.MaxConnections || ol.HandshakeTimeout != nl.HandshakeTimeout ||
		ol.IdleTimeout != nl.IdleTimeout || ol.ShutdownGrace != nl.ShutdownGrace || ol.MaxConnectionsPerUID != nl.MaxConnectionsPerUID ||
		ol.MaxStreamsPerConnection != nl.MaxStreamsPerConnection {
		out = append(out, "limits.max_message, max_connections, max_connections_per_uid, max_streams_per_connection, handshake_timeout, idle_timeout, shutdown_grace")
	}
	if old.AuditRefusalInterval != cur.AuditRefusalInterval || old.AuditRefusalMaxRecords != cur.AuditRefusalMaxRecords {
		out = append(out, "audit_refusal_interval, audit_refusal_max_records")
	}
	if old.MetricsSocket != cur.MetricsSocket || old.MetricsListen != cur.MetricsListen {
		out = append(out, "metrics_socket, metrics_listen")
	}
	if old.RotationCheckInterval != cur.RotationCheckInterval {
		out = append(out, "rotation_check_interval")
	}
	if old.BreakglassState != cur.BreakglassState {
		out = append(out, "breakglass_state")
	}
	return out
}

// serverOptions are the gRPC server's settings: what bounds a connection
// and a call before any handler runs (the gate, header and stream limits,
// fixed flow-control windows) and the interceptor chain.
func serverOptions(lim config.Limits, g *gate, metrics *Metrics, svc *Service, al auditLog) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.Creds(limitedCreds(lim, g)),
		grpc.InTapHandle(g.tap),
		// Unbuffered: the connection (socket.LimitedCredentials) buffers, and
		// counts each frame as it hands it to gRPC.
		grpc.ReadBufferSize(0),
		grpc.MaxRecvMsgSize(lim.MaxMessage),
		grpc.MaxSendMsgSize(lim.MaxMessage),
		grpc.MaxHeaderListSize(maxHeaderListSize),
		// Fixed windows (no BDP growth up to 16 MiB per stream): what a
		// stream may have buffered beyond what its handler has read.
		grpc.InitialWindowSize(windowSize),
		grpc.InitialConnWindowSize(4 * windowSize),
		grpc.ConnectionTimeout(lim.HandshakeTimeout.Duration),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: lim.IdleTimeout.Duration}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second}),
		grpc.MaxConcurrentStreams(uint32(lim.MaxStreamsPerConnection)),
		// Reuse handler goroutines instead of one new goroutine (and its
		// stack growth) per call: 3.5-5% of the daemon's CPU in profiles.
		grpc.NumStreamWorkers(64),
		// Stop waits for the handlers (drain): a call cut at shutdown still
		// writes its audit record before the log closes.
		grpc.WaitForHandlers(true),
		grpc.ForceServerCodecV2(newCodec()),
		grpc.UnknownServiceHandler(unknownMethod),
		grpc.ChainUnaryInterceptor(g.received, metrics.interceptor(), svc.interceptor(g.stopping), svc.auditInterceptor(al, g.refused), checkDecoded),
	}
}

// limitedCreds bounds a socket's connections (in all, per uid, those kept
// for root) and counts each uid's open calls on it for the gate.
func limitedCreds(lim config.Limits, g *gate) credentials.TransportCredentials {
	return socket.LimitedCredentials(socket.ConnLimits{Max: lim.MaxConnections, PerUID: min(lim.MaxConnectionsPerUID, lim.MaxConnections),
		Reserved: reservedRootConns(lim.MaxConnections), Refused: g.connRefused})
}

// windowSize is the HTTP/2 flow-control window of a stream.
const windowSize = 256 << 10

// reservedRootConns is how many of max connections only uid 0 may take:
// 1/16th, at most 16.
func reservedRootConns(max int) int { return min(16, max/16) }

// Options are what Run needs beyond the config file.
type Options struct {
	ConfigPath string // re-read on SIGHUP; "" for none (dev mode)
	Logger     *slog.Logger
	// Metrics, if set, is used instead of a new set (so callers can add theirs).
	Metrics *Metrics
	// Ready is called once the socket is serving.
	Ready func(socketPath string)
	// Notifier, when set, hears READY=1 once the keyring has been read,
	// STATUS=, RELOADING=1 and READY=1 around a reload, and STOPPING=1
	// (SystemdNotifier; see notify.go).
	Notifier Notifier
	// Watchdog is the service manager's watchdog timeout (0: none):
	// WATCHDOG=1 goes to Notifier every Watchdog/2 while the backend answers
	// its health probe.
	Watchdog time.Duration
	// SchedulerClock, when set, is the scheduler's clock (tests): scheduled
	// rotation and the disabling of superseded versions.
	SchedulerClock func() time.Time
	// BreakglassClock, when set, is break-glass grants' clock: their
	// requests' and grants' expiry (tests).
	BreakglassClock func() time.Time
	// BreakglassHost, when set, replaces the machine id that ties
	// break-glass grants to this host (tests: two hosts in one process).
	BreakglassHost string
	// BreakglassSweepEvery, when set, replaces how often expiries are
	// recorded and old grants pruned (tests).
	BreakglassSweepEvery time.Duration
	// ShutdownWait, when set, replaces how long handlers still running when
	// the shutdown grace ends are waited for (tests); 0: the grace again.
	ShutdownWait time.Duration
	// Hangups, when set, delivers the SIGHUPs the caller catches from its
	// start (keywardd's main does, before opening anything: the default
	// action of one sent during start-up would end the process); one
	// caught before Run serves is a reload once it does. nil: Run catches
	// SIGHUP itself once it serves.
	Hangups <-chan os.Signal
}

// Run serves be under pol until ctx ends. The caller opens and closes the
// backend (OpenBackend) and hardens the process (HardenProcess). In order,
// Run opens the audit log (unless cfg.AuditLog is "off") and the metrics
// listener, takes the socket (the one systemd passed by name, or its own:
// listen), starts the refusal summaries' flusher and the SIGHUP reload
// (reloadOnHUP: a good file swaps the policy and the per-call limits, a bad
// one keeps the running ones; nothing to reload when opts.ConfigPath is
// ""), reads the keyring once (an error here is returned before serving:
// the device or its records are not usable), tells opts.Notifier READY=1
// and starts the watchdog, then serves and calls opts.Ready. When ctx ends
// it answers new calls UNAVAILABLE, lets calls in flight run for up to
// cfg.Limits.ShutdownGrace (drain), writes the last refusal summaries and
// closes the audit log. It returns nil after a clean stop.
func Run(ctx context.Context, cfg config.Config, pol *policy.Policy, be keys.Backend, opts Options) error {
	log := opts.Logger
	svc := NewService(be, cfg.Backend.Kind, Version, pol, cfg.Limits, log)
	sm := newLifecycle(opts, svc, log)
	metrics := opts.Metrics
	if metrics == nil {
		metrics = NewMetrics(be)
	}
	svc.metrics = metrics
	svc.registerBackendUp(metrics.Registry())
	al, err := openAudit(cfg, be, metrics, log)
	if err != nil {
		return err
	}
	var trail auditLog // stays nil (audit off) rather than hold a nil *audit.Log
	if al != nil {
		defer al.Close() // after the server has drained: every reply's records are written
		trail = al
		svc.audit, svc.checkpointKey = al, cfg.AuditCheckpointKey
	}
	stopBreakglass, err := startBreakglass(ctx, svc, cfg, pol, opts, metrics, trail)
	if err != nil {
		return err
	}
	defer stopBreakglass()
	stopMetrics, err := serveMetrics(ctx, metrics, cfg.MetricsSocket, cfg.MetricsListen, log)
	if err != nil {
		return err
	}
	defer stopMetrics()
	l, path, err := listen(cfg, log)
	if err != nil {
		return err
	}
	stopping, refused := &atomicBool{}, newRefusals(time.Now)
	flusher := startRefusalFlusher(cfg, refused, trail, log)
	defer flusher.Stop() // after the server has drained, before the audit log closes
	stopCreds, err := serveCredentials(cfg, svc, trail, refused, metrics, log)
	if err != nil {
		l.Close()
		return err
	}
	defer stopCreds() // before the audit log closes: every credential served is recorded
	g := newGate(svc, stopping, refused)
	sweepCtx, stopSweep := context.WithCancel(context.Background()) // on through the drain
	defer stopSweep()
	go g.sweep(sweepCtx)
	srv := grpc.NewServer(serverOptions(cfg.Limits, g, metrics, svc, trail)...)
	pb.RegisterKeywardServer(srv, svc)
	kms, err := openKMS(ctx, cfg, svc, serverOptions(cfg.Limits, g, metrics, svc, trail), log)
	if err != nil {
		l.Close()
		return err
	}
	stopReload := reloadOnHUP(ctx, opts.ConfigPath, opts.Hangups, cfg, svc, sm, log)
	defer stopReload()
	if err := sm.start(ctx); err != nil {
		l.Close()
		kms.close()
		return err
	}
	stopScheduler := startScheduler(ctx, &scheduler{be: be, log: log, audit: trail, every: cfg.RotationCheckInterval.Duration,
		now: opts.SchedulerClock, metrics: newRotationMetrics(metrics.Registry()), disables: newDisableMetrics(metrics.Registry())})
	defer stopScheduler()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	kms.serve()
	log.Info("serving", "socket", path, "backend", cfg.Backend.Kind, "rules", pol.Rules())
	if opts.Ready != nil {
		opts.Ready(path)
	}
	grace := shutdown{grace: cfg.Limits.ShutdownGrace.Duration, wait: cmp.Or(opts.ShutdownWait, cfg.Limits.ShutdownGrace.Duration)}
	return serveUntilDone(ctx, srv, errc, kms, grace, func() {
		sm.stopping()
		stopping.Store(true)
	}, log)
}

// serveUntilDone waits until ctx ends or a server fails; then stop marks
// the daemon stopping and both servers drain their calls for up to grace.
func serveUntilDone(ctx context.Context, srv *grpc.Server, errc chan error, kms *kmsEndpoint, grace shutdown, stop func(), log *slog.Logger) error {
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case err := <-kms.failed():
		return fmt.Errorf("kms serve: %w", err)
	case <-ctx.Done():
	}
	stop()
	log.Info("shutting down: draining in-flight calls", "grace", grace.grace)
	kmsDone := kms.drainAsync(grace)
	err := drain(srv, errc, grace, log)
	<-kmsDone
	return err
}

// listen takes the socket systemd passed (by name) or binds its own, and
// bounds its connections. It returns the path the socket serves on.
func listen(cfg config.Config, log *slog.Logger) (net.Listener, string, error) {
	l, ok, err := socket.Systemd(cfg.SystemdSocketName)
	if err != nil {
		return nil, "", fmt.Errorf("socket activation: %w", err)
	}
	path := cfg.Socket
	if ok {
		log.Info("using the socket passed by systemd", "name", cfg.SystemdSocketName)
		path = l.Addr().String()
	} else if l, err = socket.Listen(socket.Config{Path: cfg.Socket, Group: cfg.SocketGroup, Mode: 0o660}); err != nil {
		return nil, "", err
	}
	return socket.LimitListener(l, cfg.Limits.MaxConnections), path, nil
}

// startRefusalFlusher writes refusal summaries to trail (nil: audit off)
// every audit_refusal_interval until Stop.
func startRefusalFlusher(cfg config.Config, refused *refusals, trail auditLog, log *slog.Logger) *refusalFlusher {
	f := &refusalFlusher{r: refused, al: trail, log: log, interval: cfg.AuditRefusalInterval.Duration,
		maxRecords: cfg.AuditRefusalMaxRecords, stop: make(chan struct{}), done: make(chan struct{})}
	go f.run()
	return f
}

// reloadOnHUP re-reads configPath on every SIGHUP until ctx ends or the
// returned stop is called: a good file swaps the policy and the per-call
// limits, a bad one keeps the running ones.
func reloadOnHUP(ctx context.Context, configPath string, hangups <-chan os.Signal, cfg config.Config, svc *Service, sm *lifecycle, log *slog.Logger) (stop func()) {
	hup, stop := hangups, func() {}
	if hup == nil {
		own := make(chan os.Signal, 1)
		signal.Notify(own, syscall.SIGHUP)
		hup, stop = own, func() { signal.Stop(own) }
	}
	go func() {
		applied := cfg // the configuration the rules and limits came from
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				applied = reload(ctx, configPath, cfg, applied, svc, sm, log)
			}
		}
	}()
	return stop
}

// reload is one SIGHUP: check the file, then apply what a running daemon
// can change and say what it cannot. cfg is the configuration keywardd
// started with (what needs a restart is judged against it), applied the
// one its rules and limits come from now; it returns the one they come
// from after. Applied or refused, the audit trail records it.
func reload(ctx context.Context, configPath string, cfg, applied config.Config, svc *Service, sm *lifecycle, log *slog.Logger) config.Config {
	if configPath == "" {
		log.Info("SIGHUP: no config file to reload")
		return applied
	}
	sm.reloading()
	defer sm.reloaded(ctx)
	ncfg, npol, err := config.CheckConfig(configPath)
	if err == nil {
		err = svc.breakglassFits(npol)
	}
	if err != nil {
		log.Error("reload failed; keeping the running policy and limits", "err", err)
		auditReload(ctx, svc.audit, applied, ncfg, fmt.Errorf("%w: %w", err, keys.ErrInvalidArgument), log)
		return applied
	}
	svc.SetPolicy(npol)
	svc.SetLimits(ncfg.Limits)
	log.Info("reloaded the rules and limits.max_plaintext, max_batch, batch_parallelism, max_concurrent_per_uid, max_denied_per_minute, max_failed_verify_mac_per_minute, receive_timeout", "rules", npol.Rules())
	auditReload(ctx, svc.audit, applied, ncfg, nil, log)
	if changed := restartOnly(cfg, ncfg); len(changed) > 0 {
		log.Warn("changed settings that apply only after a restart", "settings", strings.Join(changed, "; "))
	}
	return ncfg
}

// shutdown is how long calls in flight may run on at a stop (grace), and
// how long their handlers are waited for once their connections closed
// (wait: the grace again, unless a test sets it).
type shutdown struct{ grace, wait time.Duration }

// drain lets calls in flight finish for up to grace, then closes what
// remains, and returns Serve's error unless it only says the server stopped.
//
// Stop ends the connections and cancels the calls' contexts, and (the
// server waits for handlers: grpc.WaitForHandlers) returns once their
// handlers have: a key change under way when grace ends still reaches the
// device, and its outcome must be recorded before the audit log closes.
// A handler stuck in a device call is waited for up to wait.
func drain(srv *grpc.Server, errc <-chan error, grace shutdown, log *slog.Logger) error {
	done := make(chan struct{})
	go func() { srv.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace.grace):
		log.Warn("grace period over: closing remaining connections")
		stopped := make(chan struct{})
		go func() { srv.Stop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(grace.wait):
			// Serve returns only once Stop has, which waits for the
			// handlers: do not wait for it either.
			log.Error("calls still running a grace period after their connections closed (a device call that does not return): stopping without them; a change they make is in the audit log as started, not as done")
			return nil
		}
	}
	if err := <-errc; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}
