package daemon

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/credstore"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/policy"
)

func sprintf(format string, a ...any) string { return fmt.Sprintf(format, a...) }

// Service implements the keyward.v1 API on a keys.Backend. Every data and
// admin call is authorised against the current policy with the caller's
// kernel identity; the policy and limits can be swapped atomically (SIGHUP).
type Service struct {
	pb.UnimplementedKeywardServer
	be      keys.Backend
	kind    string
	version string
	log     *slog.Logger
	started time.Time
	pol     atomic.Pointer[policy.Policy]
	lim     atomic.Pointer[config.Limits]
	abuse   *abuse
	// batchSlots bounds a caller's batch items in flight (batchslots.go).
	batchSlots batchSlots
	health     backendHealth
	metrics    serviceMetrics // never nil: noMetrics when none
	audit      auditLog       // nil: audit off
	// checkpointKey signs audit checkpoints: no caller may sign with it.
	checkpointKey string
	kms           *kmsServer       // nil: no KMS endpoint
	creds         *credstore.Store // systemd credentials (credentials_dir)
	// credMu serialises changes to the credential store (put, rm, and
	// rewrap's check-then-replace), all of which go through this service.
	credMu sync.Mutex
	// beforeCredReplace, when set, runs in a rewrap between the new blob's
	// wrap and its check-then-replace (tests: a concurrent put).
	beforeCredReplace func()

	statusMu    sync.Mutex // the shared view Status answers from
	statusAt    time.Time
	statusNames []string
	statusErr   error
	served      atomic.Uint64 // calls that reached their handler (STATUS= under systemd)
	// turns: the device takes turns between callers (keys.TurnTaker), so
	// calls name theirs (keys.WithCaller); for others that costs nothing.
	turns bool
	// bg is break-glass (breakglass_service.go); nil when the backend
	// keeps no grants.
	bg *breakglass
}

// NewService returns a service on be with policy pol and limits lim.
func NewService(be keys.Backend, kind, version string, pol *policy.Policy, lim config.Limits, log *slog.Logger) *Service {
	s := &Service{be: be, kind: kind, version: version, log: log, started: time.Now(), abuse: newAbuse(log), metrics: noMetrics{}}
	if tt, ok := be.(keys.TurnTaker); ok {
		s.turns = tt.TakesTurns()
	}
	s.pol.Store(pol)
	s.lim.Store(&lim)
	return s
}

// SetPolicy swaps the policy; requests in flight finish under the old one.
func (s *Service) SetPolicy(p *policy.Policy) { s.pol.Store(p) }

// SetLimits swaps the request limits.
func (s *Service) SetLimits(l config.Limits) { s.lim.Store(&l) }

// Served returns how many calls reached their handler, whatever their result.
func (s *Service) Served() uint64 { return s.served.Load() }

// authorize checks op on key for the caller. The caller learns only "not
// allowed"; the log keeps who, what and why.
func (s *Service) authorize(ctx context.Context, op policy.Operation, key string, c map[string]string) error {
	_, err := s.authorizeGrant(ctx, op, key, c)
	return err
}

// authorizeGrant is authorize that also returns the id of the break-glass
// grant that allowed a request the rules deny ("" when the rules allow).
func (s *Service) authorizeGrant(ctx context.Context, op policy.Operation, key string, c map[string]string) (string, error) {
	id, ok := identityFrom(ctx)
	if !ok {
		s.log.Error("request without a peer identity", "op", string(op))
		return "", ErrDenied
	}
	lim := s.lim.Load()
	if s.abuse.over(callerOf(id), abuseDenied, lim.MaxDeniedPerMinute) {
		s.metrics.rateLimited(abuseDenied)
		return "", fmt.Errorf("%s %s: uid %d: %w", op, key, id.UID, ErrRateLimited)
	}
	pol := s.pol.Load()
	d := pol.Decide(id, policy.Request{Op: op, Key: key, Context: c}, s.reserved())
	if !d.Allowed {
		// A reserved use no grant allows: the grant store is not read.
		if !s.reserved().Withholds(op, key) {
			if g := s.grantFor(ctx, pol, id, op, key, c); g != nil {
				s.usedGrant(g, id, op)
				return g.id, nil
			}
		}
		s.log.Warn("denied", "op", string(op), "key", key, "uid", id.UID, "gid", id.GID, "pid", id.PID, "unit", id.Unit, "reason", d.Reason)
		s.abuse.note(callerOf(id), abuseDenied, lim.MaxDeniedPerMinute)
		s.metrics.deny(op)
		return "", &deniedError{reason: d.Reason, err: fmt.Errorf("%s %s: %w", op, key, ErrDenied)}
	}
	if s.log.Enabled(ctx, slog.LevelDebug) { // its arguments cost allocations on every call
		s.log.Debug("allowed", "op", string(op), "key", key, "uid", id.UID, "rule", d.Rule)
	}
	return "", nil
}

// reserved is what no caller gets whatever the policy says: sign with the
// key that signs audit checkpoints (a caller who could would forge them).
func (s *Service) reserved() policy.Reserved {
	return policy.Reserved{CheckpointKey: s.checkpointKey}
}

// fail logs an unexpected error with its detail and returns the wire status.
// A caller that gave up is not a device fault; a backend that stays
// unavailable is said once, not once per failed call (backendHealth).
func (s *Service) fail(ctx context.Context, op string, err error) error {
	if callerGaveUp(ctx, err) {
		s.log.Debug("caller gave up", "op", op, "err", err.Error())
		return statusFor(context.Canceled)
	}
	r := reasonOf(err)
	switch {
	case errors.Is(err, keys.ErrBusy):
		// The device answered: another writer holds the key (keywardd
		// doctor lists claims). Not a failure of the backend.
		s.log.Warn("key change refused for now: another writer is changing the key, or left a claim on it (keywardd doctor lists claims); the caller may retry", "op", op, "err", err.Error())
	case errors.Is(err, errNameLookup):
		// The user database, not the device, did not answer.
		s.log.Warn("break-glass call refused for now: the caller's user name could not be looked up", "op", op, "err", err.Error())
	case r == pb.ErrorReason_BACKEND_UNAVAILABLE:
		if s.health.failed() {
			s.log.Error("key backend unavailable; further failures are counted, not logged, until a call succeeds", "op", op, "err", err.Error())
		}
	case r == pb.ErrorReason_INTEGRITY:
		s.log.Error("operation failed", "op", op, "err", err.Error())
	default:
		s.log.Debug("operation refused", "op", op, "reason", r.String())
	}
	return statusFor(err)
}

// backendHealth is whether the last device call failed as unavailable, so
// that the log says so once when it starts and once when it ends.
type backendHealth struct {
	down  atomic.Bool
	mu    sync.Mutex
	since time.Time
	count uint64
}

// failed counts a failure and reports whether it is the first of a run.
func (h *backendHealth) failed() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.count++
	if h.down.Load() {
		return false
	}
	h.down.Store(true)
	h.since, h.count = time.Now(), 1
	return true
}

// ok ends a run of failures; it returns how many calls failed and since
// when, or 0 when none was running.
func (h *backendHealth) ok() (uint64, time.Time) {
	if !h.down.Load() { // the common case: one atomic load per call
		return 0, time.Time{}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.down.Load() {
		return 0, time.Time{}
	}
	h.down.Store(false)
	return h.count, h.since
}

func (s *Service) checkKey(name string) error {
	if err := keys.ValidateName(name); err != nil {
		return err
	}
	return nil
}

func (s *Service) checkData(field string, b []byte) error {
	if max := s.lim.Load().MaxPlaintext; len(b) > max {
		return invalid("%s is %d bytes, at most %d", field, len(b), max)
	}
	return nil
}

// checkContext refuses a caller's context over the limits or with a key
// of the namespace keywardd keeps for its own blobs (KMS ciphertexts,
// systemd credentials): no caller may open or make one through this API.
func checkContext(c map[string]string) error {
	if err := keys.CheckContext(c); err != nil {
		return invalid("context: at most %d pairs, keys non-empty, keys and values at most %d bytes", keys.MaxContext, keys.MaxContextKV)
	}
	if keys.HasReservedContextKey(c) {
		return invalid("context: keys beginning with %q are reserved for keywardd's own blobs (Kubernetes KMS, systemd credentials)", keys.ReservedContextPrefix)
	}
	return nil
}

// candidates lists the versions a signature or MAC may be checked against:
// version v if given, else every version allowed to verify, newest first.
func (s *Service) candidates(ctx context.Context, name string, v uint32) ([]uint32, error) {
	if v != 0 {
		return []uint32{v}, nil
	}
	info, err := s.be.DescribeKey(ctx, name)
	if err != nil {
		return nil, err
	}
	var out []uint32
	for i := len(info.Versions) - 1; i >= 0; i-- {
		if info.CheckDecrypt(info.Versions[i].Version) == nil {
			out = append(out, info.Versions[i].Version)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: %w", name, keys.ErrNoEnabledVersion)
	}
	return out, nil
}

// verifyAny runs check on each candidate; a signature that no version
// accepts is (false, nil), not an error.
func (s *Service) verifyAny(ctx context.Context, name string, v uint32, check func(uint32) error) (bool, uint32, error) {
	vs, err := s.candidates(ctx, name, v)
	if err != nil {
		return false, 0, err
	}
	for _, cv := range vs {
		err := check(cv)
		if err == nil {
			return true, cv, nil
		}
		if !errors.Is(err, keys.ErrInvalidSignature) {
			return false, 0, err
		}
	}
	return false, 0, nil
}

// keyInfo converts a backend KeyInfo for the wire.
func keyInfo(k keys.KeyInfo) *pb.KeyInfo {
	out := &pb.KeyInfo{Key: k.Name, KeyType: string(k.Type), Created: timestamppb.New(k.Created), MinDecryptVersion: k.MinDecryptVersion, Adopted: k.Adopted}
	if next, ok := k.NextRotation(); ok {
		out.RotationPeriodSeconds, out.NextRotation = uint64(k.RotationPeriod/time.Second), timestamppb.New(next)
	}
	out.DisableAfterSeconds = uint64(k.DisableAfter / time.Second)
	if next, ok := k.NextDisable(); ok {
		out.NextDisable = timestamppb.New(next)
	}
	for _, v := range k.Versions {
		st := map[keys.State]pb.VersionState{keys.Enabled: pb.VersionState_ENABLED, keys.Disabled: pb.VersionState_DISABLED, keys.Destroyed: pb.VersionState_DESTROYED}[v.State]
		out.Versions = append(out.Versions, &pb.KeyVersion{Version: v.Version, State: st, Created: timestamppb.New(v.Created)})
	}
	return out
}

// The admin RPCs' entries in the method table.
var (
	mCreateKey   = methodOf("CreateKey")
	mRotateKey   = methodOf("RotateKey")
	mDescribeKey = methodOf("DescribeKey")
	mListKeys    = methodOf("ListKeys")
	mDestroy     = methodOf("DestroyVersion")
	mSetMin      = methodOf("SetMinDecryptVersion")
	mAdoptKey    = methodOf("AdoptKey")
	mSetRotation = methodOf("SetRotationPolicy")
	mSetDisable  = methodOf("SetDisableAfter")
)

// admin runs one lifecycle operation after authorising it, and audits it;
// a change (anything but key.read) is recorded as started before it runs.
// Its records carry the version the change names (enable, disable,
// destroy, the new minimum), or with 0, the key's newest after it (the one
// a create, rotation or adoption made).
func (s *Service) admin(ctx context.Context, op policy.Operation, key string, named uint32, fn func() (keys.KeyInfo, error)) (*pb.KeyInfo, error) {
	start := time.Now()
	info, err := func() (keys.KeyInfo, error) {
		if err := s.checkKey(key); err != nil {
			return keys.KeyInfo{}, err
		}
		if err := s.authorize(ctx, op, key, nil); err != nil {
			return keys.KeyInfo{}, err
		}
		if op != policy.OpKeyRead {
			if err := s.auditIntent(ctx, string(op), key, named); err != nil {
				return keys.KeyInfo{}, err
			}
		}
		return fn()
	}()
	auditOp(ctx, string(op), key, cmp.Or(named, uint32(len(info.Versions))), nil, "", start, err)
	if err != nil {
		return nil, s.fail(ctx, string(op), err)
	}
	if op != policy.OpKeyRead {
		if s.kms != nil {
			s.kms.invalidate(key) // the next KMS Status probes the changed key
		}
		id, _ := identityFrom(ctx)
		s.log.Info("key lifecycle", "op", string(op), "key", key, "uid", id.UID, "pid", id.PID, "unit", id.Unit)
	}
	return keyInfo(info), nil
}

func (s *Service) CreateKey(ctx context.Context, req *pb.CreateKeyRequest) (*pb.KeyInfo, error) {
	return s.admin(ctx, mCreateKey.op, req.GetKey(), 0, func() (keys.KeyInfo, error) {
		t, err := keys.ParseType(req.GetKeyType())
		if err != nil {
			return keys.KeyInfo{}, err
		}
		return s.be.CreateKey(ctx, req.GetKey(), t)
	})
}

func (s *Service) RotateKey(ctx context.Context, req *pb.RotateKeyRequest) (*pb.KeyInfo, error) {
	return s.admin(ctx, mRotateKey.op, req.GetKey(), 0, func() (keys.KeyInfo, error) { return s.be.RotateKey(ctx, req.GetKey()) })
}

// SetRotationPolicy sets or stops the key's scheduled rotation.
func (s *Service) SetRotationPolicy(ctx context.Context, req *pb.SetRotationPolicyRequest) (*pb.KeyInfo, error) {
	return s.admin(ctx, mSetRotation.op, req.GetKey(), 0, func() (keys.KeyInfo, error) {
		secs := req.GetRotationPeriodSeconds()
		d := time.Duration(secs) * time.Second
		if secs > uint64(keys.MaxRotationPeriod/time.Second) || keys.CheckRotationPeriod(d) != nil {
			return keys.KeyInfo{}, invalid("rotation period of %d seconds: want 0 (none) or between %s and %s",
				secs, keys.FormatPeriod(keys.MinRotationPeriod), keys.FormatPeriod(keys.MaxRotationPeriod))
		}
		return s.be.SetRotationPeriod(ctx, req.GetKey(), d)
	})
}

// SetDisableAfter sets or stops the scheduled disabling of the key's
// superseded versions.
func (s *Service) SetDisableAfter(ctx context.Context, req *pb.SetDisableAfterRequest) (*pb.KeyInfo, error) {
	return s.admin(ctx, mSetDisable.op, req.GetKey(), 0, func() (keys.KeyInfo, error) {
		secs := req.GetDisableAfterSeconds()
		d := time.Duration(secs) * time.Second
		if secs > uint64(keys.MaxDisableAfter/time.Second) || keys.CheckDisableAfter(d) != nil {
			return keys.KeyInfo{}, invalid("disable-after of %d seconds: want 0 (never) or between %s and %s",
				secs, keys.FormatPeriod(keys.MinDisableAfter), keys.FormatPeriod(keys.MaxDisableAfter))
		}
		return s.be.SetDisableAfter(ctx, req.GetKey(), d)
	})
}

func (s *Service) DescribeKey(ctx context.Context, req *pb.DescribeKeyRequest) (*pb.KeyInfo, error) {
	return s.admin(ctx, mDescribeKey.op, req.GetKey(), 0, func() (keys.KeyInfo, error) { return s.be.DescribeKey(ctx, req.GetKey()) })
}

// ListKeys returns the keys the caller may read (key.read); others are
// left out rather than refused.
func (s *Service) ListKeys(ctx context.Context, req *pb.ListKeysRequest) (*pb.ListKeysResponse, error) {
	all, err := s.be.ListKeys(ctx)
	if err != nil {
		return nil, s.fail(ctx, mListKeys.log, err)
	}
	id, ok := identityFrom(ctx)
	if !ok {
		return nil, statusFor(ErrDenied)
	}
	pol := s.pol.Load()
	out := &pb.ListKeysResponse{}
	for _, k := range all {
		if pol.Decide(id, policy.Request{Op: mListKeys.op, Key: k.Name}, s.reserved()).Allowed {
			out.Keys = append(out.Keys, keyInfo(k))
		}
	}
	return out, nil
}

func (s *Service) SetVersionState(ctx context.Context, req *pb.SetVersionStateRequest) (*pb.KeyInfo, error) {
	so, ok := stateOps[req.GetState()]
	if !ok {
		return nil, statusFor(invalid("state must be ENABLED or DISABLED (DestroyVersion destroys)"))
	}
	return s.admin(ctx, so.op, req.GetKey(), req.GetVersion(), func() (keys.KeyInfo, error) {
		return s.be.SetVersionState(ctx, req.GetKey(), req.GetVersion(), so.state)
	})
}

func (s *Service) DestroyVersion(ctx context.Context, req *pb.DestroyVersionRequest) (*pb.KeyInfo, error) {
	return s.admin(ctx, mDestroy.op, req.GetKey(), req.GetVersion(), func() (keys.KeyInfo, error) {
		return s.be.DestroyVersion(ctx, req.GetKey(), req.GetVersion())
	})
}

func (s *Service) SetMinDecryptVersion(ctx context.Context, req *pb.SetMinDecryptVersionRequest) (*pb.KeyInfo, error) {
	return s.admin(ctx, mSetMin.op, req.GetKey(), req.GetVersion(), func() (keys.KeyInfo, error) {
		return s.be.SetMinDecryptVersion(ctx, req.GetKey(), req.GetVersion())
	})
}

func (s *Service) AdoptKey(ctx context.Context, req *pb.AdoptKeyRequest) (*pb.KeyInfo, error) {
	return s.admin(ctx, mAdoptKey.op, req.GetKey(), 0, func() (keys.KeyInfo, error) {
		a, ok := s.be.(keys.Adopter)
		if !ok {
			return keys.KeyInfo{}, fmt.Errorf("adopt: %w", keys.ErrUnsupported)
		}
		t, err := keys.ParseType(req.GetKeyType())
		if err != nil {
			return keys.KeyInfo{}, err
		}
		if len(req.GetUri()) == 0 || len(req.GetUri()) > 1024 {
			return keys.KeyInfo{}, invalid("uri: 1..1024 bytes")
		}
		return a.AdoptKey(ctx, req.GetKey(), t, req.GetUri())
	})
}

// Status answers every caller: health, and who the kernel says they are.
func (s *Service) Status(ctx context.Context, req *pb.StatusRequest) (*pb.StatusResponse, error) {
	out := &pb.StatusResponse{Version: s.version, Backend: s.kind, Started: timestamppb.New(s.started), BackendHealthy: true}
	names, herr := s.statusView(ctx)
	if herr != nil {
		out.BackendHealthy = false
		out.BackendError = messages[reasonOf(herr)]
	}
	out.Audit = "off"
	if s.audit != nil {
		out.Audit = "ok"
		out.AuditSync, out.AuditUnsynced = s.audit.SyncMode().String(), s.audit.Stats().Unsynced()
		if failing, _, _ := s.audit.Status(); failing {
			out.Audit = "failing: the audit log cannot be written; operations are refused (the daemon log says why)"
		}
	}
	if id, ok := identityFrom(ctx); ok {
		out.You = &pb.Peer{Uid: id.UID, Gid: id.GID, Groups: id.Groups, Pid: id.PID, Unit: id.Unit}
		lim := s.lim.Load()
		out.RateLimited = s.abuse.limitedUntil(callerOf(id), map[abuseKind]int{abuseDenied: lim.MaxDeniedPerMinute, abuseBadMAC: lim.MaxFailedVerifyMacPerMinute})
		// Count only keys this caller may read: status tells nobody more than that.
		pol := s.pol.Load()
		for _, n := range names {
			if pol.Decide(id, policy.Request{Op: policy.OpKeyRead, Key: n}, s.reserved()).Allowed {
				out.Keys++
			}
		}
	}
	return out, nil
}

// statusMaxAge bounds how stale a status answer may be. Status answers
// anyone who may connect, unaudited; one health probe and one key listing
// per statusMaxAge, shared by every caller, keeps a flood of status calls
// from becoming a flood of device calls.
const statusMaxAge = time.Second

// statusView returns the key names and the health probe's error, from a
// view at most statusMaxAge old.
func (s *Service) statusView(ctx context.Context) ([]string, error) {
	s.statusMu.Lock()
	defer s.statusMu.Unlock()
	if !s.statusAt.IsZero() && time.Since(s.statusAt) < statusMaxAge {
		return s.statusNames, s.statusErr
	}
	hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	s.statusNames, s.statusErr = nil, s.be.Health(hctx)
	if s.statusErr == nil {
		if all, err := s.be.ListKeys(hctx); err == nil {
			for _, k := range all {
				s.statusNames = append(s.statusNames, k.Name)
			}
		}
	}
	s.statusAt = time.Now()
	return s.statusNames, s.statusErr
}
