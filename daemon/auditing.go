package daemon

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/audit"
	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/envelope"
	"github.com/keyward/keyward/keys"
)

// openAudit opens the configured audit log (nil when it is "off") and
// registers its metrics. A log that cannot be opened (a corrupt chain, no
// permission) stops the daemon from starting.
func openAudit(cfg config.Config, be keys.Backend, m *Metrics, log *slog.Logger) (*audit.Log, error) {
	if cfg.AuditLog == "off" {
		log.Warn("audit log is off: operations leave no evidence")
		return nil, nil
	}
	fsync := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "keyward_audit_fsync_seconds", Help: "Time of one sync of the audit log (one batch of records): an fdatasync of records written into free space, else an fsync.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
	})
	if err := os.MkdirAll(filepath.Dir(cfg.AuditLog), 0o750); err != nil {
		return nil, fmt.Errorf("audit log directory: %w", err)
	}
	mode, err := audit.ParseSyncMode(cfg.AuditSync)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", config.ErrConfig, err)
	}
	opts := audit.Options{MaxFileSize: cfg.AuditMaxFileSize, Logger: log, MaxWait: auditTimeout, Sync: mode, SyncInterval: cfg.AuditSyncInterval.Duration,
		OnFsync: func(d time.Duration) { fsync.Observe(d.Seconds()) }}
	opts.NoPreallocate = !cfg.AuditPreallocate
	if cfg.AuditCheckpointKey != "" {
		opts.Checkpoint = checkpointSigner{be: be, key: cfg.AuditCheckpointKey}
		opts.CheckpointEvery = cfg.AuditCheckpointEvery
		opts.CheckpointInterval = cfg.AuditCheckpointInterval.Duration
		if ki, err := be.DescribeKey(context.Background(), cfg.AuditCheckpointKey); err != nil {
			log.Warn("audit checkpoint key not usable yet; checkpoints start once it exists", "key", cfg.AuditCheckpointKey, "err", err.Error())
		} else if !ki.Type.Asymmetric() {
			return nil, fmt.Errorf("audit_checkpoint_key %s is a %s key, not a signing key: %w", cfg.AuditCheckpointKey, ki.Type, config.ErrConfig)
		}
	}
	al, err := audit.Open(cfg.AuditLog, opts)
	if err != nil {
		return nil, fmt.Errorf("audit log %s: %w", cfg.AuditLog, err)
	}
	m.Registry().MustRegister(fsync, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "keyward_audit_queue", Help: "Audit records waiting to be written.",
	}, func() float64 { _, _, q := al.Status(); return float64(q) }), prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "keyward_audit_failing", Help: "1 while the audit log cannot be written (operations are refused).",
	}, func() float64 {
		if failing, _, _ := al.Status(); failing {
			return 1
		}
		return 0
	}))
	m.Registry().MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "keyward_audit_checkpoints_total", Help: "Signed checkpoint records written to the audit log.",
	}, func() float64 { return float64(al.Stats().Checkpoints) }), prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "keyward_audit_checkpoint_failures_total", Help: "Checkpoints due but not written because signing failed.",
	}, func() float64 { return float64(al.Stats().CheckpointFailures) }), prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "keyward_audit_unsynced_records",
		Help: "Audit records written and acknowledged but not yet fsynced (audit_sync = \"write\"; always 0 with \"fsync\").",
	}, func() float64 { return float64(al.Stats().Unsynced()) }))
	log.Info("audit log", "path", cfg.AuditLog, "sync", mode.String(), "checkpoint_key", cfg.AuditCheckpointKey)
	return al, nil
}

// checkpointSigner signs audit checkpoints with the configured key, on the
// daemon's own authority (no caller, no policy).
type checkpointSigner struct {
	be  keys.Backend
	key string
}

func (s checkpointSigner) SignCheckpoint(ctx context.Context, msg []byte) (string, uint32, []byte, error) {
	sig, err := s.be.Sign(ctx, s.key, msg)
	if err != nil {
		return "", 0, nil, err
	}
	return sig.Name, sig.Version, sig.Bytes, nil
}

// auditTimeout bounds how long a reply waits for its records to be durable.
const auditTimeout = 10 * time.Second

// call collects the audit records of one RPC: one per operation, so a batch
// call has one per item.
type call struct {
	log auditLog // keys the context digests
	// unnamed: no rule names the caller, so its refused operations count
	// towards its denied-request limit (abuseOf), and past it are
	// summarised, not recorded one by one.
	unnamed bool
	abuse   *abuse
	limit   int
	id      string
	peer    audit.Peer
	start   time.Time
	mu      sync.Mutex
	recs    []audit.Record
	one     [1]audit.Record // recs' storage for a single operation
	items   []itemRecord    // a parallel batch's records, put in item order by orderItems
	summ    []audit.Record  // refusals past the caller's limit, for the summary
}

// itemRecord is the record of a batch's item i.
type itemRecord struct {
	i int
	r audit.Record
}

type itemKey struct{}

// withItem marks ctx as item i's of a batch whose items run in parallel:
// its record waits in call.items for orderItems.
func withItem(ctx context.Context, i int) context.Context {
	return context.WithValue(ctx, itemKey{}, i)
}

// orderItems appends a parallel batch's records to the call's in item
// order, the order a batch run one item after another writes.
func orderItems(ctx context.Context) {
	cl, ok := ctx.Value(callKey{}).(*call)
	if !ok {
		return
	}
	cl.mu.Lock()
	defer cl.mu.Unlock()
	slices.SortStableFunc(cl.items, func(a, b itemRecord) int { return cmp.Compare(a.i, b.i) })
	for _, ir := range cl.items {
		cl.recs = append(cl.recs, ir.r)
	}
	cl.items = nil
}

// expectOps makes room for the n records of a batch call.
func expectOps(ctx context.Context, n int) {
	if cl, ok := ctx.Value(callKey{}).(*call); ok {
		cl.mu.Lock()
		cl.recs = slices.Grow(cl.recs, n)
		cl.mu.Unlock()
	}
}

type callKey struct{}

func newRequestID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// auditOp records one operation of the current call: its key and version, a
// digest of its context (never the values), and its result: "OK", "INVALID"
// for a signature or MAC that did not verify, or the error reason. reason is
// internal detail for the audit trail only (the policy's deny reason).
func auditOp(ctx context.Context, op, key string, version uint32, c map[string]string, result string, started time.Time, err error) {
	auditOpRef(ctx, op, key, version, c, "", result, started, err)
}

// auditOpRef is auditOp with the caller's own reference for the request
// (audit.Record.CallerRef; "" for none).
func auditOpRef(ctx context.Context, op, key string, version uint32, c map[string]string, ref, result string, started time.Time, err error) {
	auditOpGrant(ctx, opRecord{op: op, key: key, version: version, ctx: c, ref: ref, result: result}, started, err)
}

// opRecord is what one operation's audit record says beyond its caller,
// time and error.
type opRecord struct {
	op, key string
	version uint32
	ctx     map[string]string
	ref     string // audit.Record.CallerRef
	grant   string // audit.Record.Grant: the break-glass grant that allowed it or that it is about
	reason  string // audit.Record.Reason unless a denial gives one
	result  string // "" for the error's
}

// auditOpGrant records one operation of the current call, as auditOpRef.
func auditOpGrant(ctx context.Context, o opRecord, started time.Time, err error) {
	op, key, version, c, ref, result := o.op, o.key, o.version, o.ctx, o.ref, o.result
	cl, ok := ctx.Value(callKey{}).(*call)
	if !ok {
		return
	}
	key = clipText(key, keys.MaxNameLen) // not a key name: never more of it than a name's length
	r := audit.Record{Peer: cl.peer, Op: op, Key: key, Version: version, Result: result, Reason: o.reason,
		CallerRef: clipCallerRef(ref), Grant: o.grant, Duration: time.Since(started), RequestID: cl.id}
	if len(c) > 0 {
		// Keyed, so that a reader of the log cannot test guesses of the
		// values against it (see audit.ContextDigest).
		canonical := envelope.CanonicalContext(c)
		r.ContextDigest, r.ContextKeyed = cl.log.ContextDigest(canonical), true
		clear(canonical)
	}
	if r.Result == "" {
		r.Result = resultFor(err)
		if callerGaveUp(ctx, err) {
			r.Result = ResultCancelled
		}
	}
	var d *deniedError
	if errors.As(err, &d) {
		r.Reason = d.reason
	}
	cl.add(ctx, r)
}

// add queues r, one operation's record, with the call's: summarised with
// the caller's other refusals once it is past its limit (overLimit), in
// item order for a batch item.
func (cl *call) add(ctx context.Context, r audit.Record) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.overLimit(r.Result) {
		cl.summ = append(cl.summ, r) // summarised with the caller's other refusals
		return
	}
	if i, ok := ctx.Value(itemKey{}).(int); ok {
		cl.items = append(cl.items, itemRecord{i, r})
		return
	}
	cl.recs = append(cl.recs, r)
}

// overLimit reports whether a refused operation of a caller no rule names
// is past its denied-request limit. Its denials were counted by authorize;
// its invalid requests (which fail before authorize: a bad key name, a
// malformed blob) are counted here, so that they cannot be recorded one by
// one without bound either.
func (cl *call) overLimit(result string) bool {
	if !cl.unnamed || cl.abuse == nil {
		return false
	}
	who := caller{uid: cl.peer.UID, unit: cl.peer.Unit}
	switch result {
	case resultDenied:
		return cl.abuse.over(who, abuseDenied, cl.limit)
	case resultInvalid, resultInvalidName, resultMalformed:
		return cl.abuse.note(who, abuseDenied, cl.limit)
	}
	return false
}

// ResultStarted is the result of an intent record: written, durably, before
// a key lifecycle change reaches the device, so a change is never
// unrecorded even if the log fails between the change and its outcome
// record (then the caller gets AUDIT_UNAVAILABLE, and the trail shows the
// change as started, without an outcome: check the key).
const ResultStarted = "STARTED"

// auditIntent appends an intent record for op on key (and the version the
// change names, 0 when it names none) and waits until it is durable; an
// error means the change must not be attempted.
func (s *Service) auditIntent(ctx context.Context, op, key string, version uint32) error {
	cl, ok := ctx.Value(callKey{}).(*call)
	if !ok || s.audit == nil {
		return nil
	}
	err := s.audit.Append(context.WithoutCancel(ctx), audit.Record{Peer: cl.peer, Op: op, Key: key, Version: version, Result: ResultStarted,
		Duration: time.Since(cl.start), RequestID: cl.id})
	if err != nil {
		s.log.Error("audit log write failed: refusing a key change before it starts", "op", op, "key", key, "err", err.Error())
		return fmt.Errorf("%s %s: intent record: %v: %w", op, key, err, ErrAuditUnavailable)
	}
	return nil
}

// ResultCancelled is the result of an operation the caller gave up on
// (cancelled, or its deadline passed) while it waited: not a device fault.
const ResultCancelled = "CANCELLED"

// resultFor is "OK" or the reason name an error maps to on the wire.
func resultFor(err error) string {
	if err == nil {
		return "OK"
	}
	return reasonOf(err).String()
}

// callerGaveUp reports whether err is the caller's own cancellation or
// deadline, seen through ctx (the call's context), rather than a deadline
// of the daemon's or the device's.
func callerGaveUp(ctx context.Context, err error) bool {
	return ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded))
}

// validity is the audit result of a verification: "INVALID" when it ran
// and the signature or MAC did not verify.
func validity(valid bool, err error) string {
	if err == nil && !valid {
		return "INVALID"
	}
	return ""
}

// deniedError carries the policy's reason for the audit trail; callers see
// only "not allowed".
type deniedError struct {
	reason string
	err    error
}

func (e *deniedError) Error() string { return e.err.Error() }
func (e *deniedError) Unwrap() error { return e.err }

// auditInterceptor makes every call leave its records in the audit log,
// durable before the reply is sent. While the log is failing, calls are
// refused before anything is done; if writing the records fails after the
// operation, the reply is replaced by AUDIT_UNAVAILABLE (the caller does not
// get a result that was not recorded).
//
// Items refused by a rate or concurrency limit are not recorded one by one:
// refused counts them into the caller's summary record (OpRefused), so a
// caller that is being refused cannot grow the log faster than the summary
// budget (audit_refusal_interval, audit_refusal_max_records).
func (s *Service) auditInterceptor(al auditLog, refused *refusals) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		method := info.FullMethod
		if m := methodFor(method); al == nil || m != nil && m.kind == kindStatus {
			return handler(ctx, req)
		}
		if !al.Accepting() { // failing, and no retry due: refuse before acting
			_, lastErr, _ := al.Status()
			s.log.Debug("refusing a call: the audit log cannot be written", "method", method, "err", fmt.Sprint(lastErr))
			return nil, statusFor(ErrAuditUnavailable)
		}
		id, _ := identityFrom(ctx)
		cl := &call{log: al, id: newRequestID(), start: time.Now(),
			peer:    audit.Peer{UID: id.UID, GID: id.GID, PID: id.PID, Unit: id.Unit},
			unnamed: !s.pol.Load().Names(id), abuse: s.abuse, limit: s.lim.Load().MaxDeniedPerMinute}
		cl.recs = cl.one[:0]
		resp, err := handler(context.WithValue(ctx, callKey{}, cl), req)
		cl.mu.Lock()
		recs, summ := cl.recs, cl.summ
		cl.mu.Unlock()
		if len(recs) == 0 && len(summ) == 0 { // refused before any operation began (bad request)
			recs = []audit.Record{{Peer: cl.peer, Op: methodOp(method), Result: resultOf(err), Duration: time.Since(cl.start), RequestID: cl.id}}
		}
		for _, r := range summ {
			if refused != nil {
				refused.note(r.Peer, r.Op, r.Result)
			}
		}
		if recs = summarised(recs, refused); len(recs) == 0 {
			return resp, err
		}
		// Not cancelled with the call: a record may not be abandoned once
		// its operation ran (the log's MaxWait bounds the wait).
		if aerr := al.AppendAll(context.WithoutCancel(ctx), recs); aerr != nil {
			s.log.Error("audit log write failed: refusing the reply", "method", method, "request_id", cl.id, "err", aerr.Error())
			return nil, statusFor(ErrAuditUnavailable)
		}
		return resp, err
	}
}

// summarised counts the records of refusals by a limit into refused and
// returns the others (in place).
func summarised(recs []audit.Record, refused *refusals) []audit.Record {
	if refused == nil {
		return recs
	}
	return slices.DeleteFunc(recs, func(r audit.Record) bool {
		if r.Result != resultRateLimited && r.Result != resultTooMany {
			return false
		}
		refused.note(r.Peer, r.Op, r.Result)
		return true
	})
}

var (
	resultRateLimited = pb.ErrorReason_RATE_LIMITED.String()
	resultTooMany     = pb.ErrorReason_TOO_MANY_REQUESTS.String()
	resultDenied      = pb.ErrorReason_PERMISSION_DENIED.String()
	resultInvalid     = pb.ErrorReason_INVALID_REQUEST.String()
	resultInvalidName = pb.ErrorReason_INVALID_KEY_NAME.String()
	resultMalformed   = pb.ErrorReason_MALFORMED_CIPHERTEXT.String()
)

// clipText cuts a caller's text that a check refused to max bytes and
// "...", so that no caller makes a record too long to write.
func clipText(s string, max int) string {
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}
