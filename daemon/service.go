package daemon

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/audit"
	"github.com/keyward/keyward/envelope"
	"github.com/keyward/keyward/internal/secretfile"
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
	lim     atomic.Pointer[Limits]
	abuse   *abuse
	health  backendHealth
	metrics *Metrics   // nil-safe
	audit   *audit.Log // nil: audit off
	// checkpointKey signs audit checkpoints: no caller may sign with it.
	checkpointKey string

	statusMu    sync.Mutex // the shared view Status answers from
	statusAt    time.Time
	statusNames []string
	statusErr   error
	served      atomic.Uint64 // calls that reached their handler (STATUS= under systemd)
}

// NewService returns a service on be with policy pol and limits lim.
func NewService(be keys.Backend, kind, version string, pol *policy.Policy, lim Limits, log *slog.Logger) *Service {
	s := &Service{be: be, kind: kind, version: version, log: log, started: time.Now(), abuse: newAbuse(log)}
	s.pol.Store(pol)
	s.lim.Store(&lim)
	return s
}

// SetPolicy swaps the policy; requests in flight finish under the old one.
func (s *Service) SetPolicy(p *policy.Policy) { s.pol.Store(p) }

// SetLimits swaps the request limits.
func (s *Service) SetLimits(l Limits) { s.lim.Store(&l) }

// Served returns how many calls reached their handler, whatever their result.
func (s *Service) Served() uint64 { return s.served.Load() }

// authorize checks op on key for the caller. The caller learns only "not
// allowed"; the log keeps who, what and why.
func (s *Service) authorize(ctx context.Context, op policy.Operation, key string, c map[string]string) error {
	id, ok := identityFrom(ctx)
	if !ok {
		s.log.Error("request without a peer identity", "op", string(op))
		return ErrDenied
	}
	lim := s.lim.Load()
	if s.abuse.over(callerOf(id), abuseDenied, lim.MaxDeniedPerMinute) {
		s.metrics.rateLimited(abuseDenied)
		return fmt.Errorf("%s %s: uid %d: %w", op, key, id.UID, ErrRateLimited)
	}
	d := s.pol.Load().Decide(id, policy.Request{Op: op, Key: key, Context: c}, s.reserved())
	if !d.Allowed {
		s.log.Warn("denied", "op", string(op), "key", key, "uid", id.UID, "gid", id.GID, "pid", id.PID, "unit", id.Unit, "reason", d.Reason)
		s.abuse.note(callerOf(id), abuseDenied, lim.MaxDeniedPerMinute)
		s.metrics.deny(op)
		return &deniedError{reason: d.Reason, err: fmt.Errorf("%s %s: %w", op, key, ErrDenied)}
	}
	if s.log.Enabled(ctx, slog.LevelDebug) { // its arguments cost allocations on every call
		s.log.Debug("allowed", "op", string(op), "key", key, "uid", id.UID, "rule", d.Rule)
	}
	return nil
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
	switch r {
	case pb.ErrorReason_BACKEND_UNAVAILABLE:
		if s.health.failed() {
			s.log.Error("key backend unavailable; further failures are counted, not logged, until a call succeeds", "op", op, "err", err.Error())
		}
	case pb.ErrorReason_INTEGRITY:
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

func checkContext(c map[string]string) error {
	if err := keys.CheckContext(c); err != nil {
		return invalid("context: at most %d pairs, keys non-empty, keys and values at most %d bytes", keys.MaxContext, keys.MaxContextKV)
	}
	return nil
}

// blobKey reads the key name from a blob's header, to authorise before the
// device is touched.
func blobKey(blob []byte) (envelope.Header, error) {
	if len(blob) == 0 {
		return envelope.Header{}, invalid("ciphertext is empty")
	}
	h, _, err := envelope.Decode(blob)
	return h, err
}

func (s *Service) wrap(ctx context.Context, req *pb.WrapRequest) (resp *pb.WrapResponse, err error) {
	defer func(start time.Time) {
		auditOp(ctx, "wrap", req.GetKey(), resp.GetVersion(), req.GetContext(), "", start, err)
	}(time.Now())
	if err := s.checkKey(req.GetKey()); err != nil {
		return nil, err
	}
	if err := s.checkData("plaintext", req.GetPlaintext()); err != nil {
		return nil, err
	}
	if err := checkContext(req.GetContext()); err != nil {
		return nil, err
	}
	if err := s.authorize(ctx, policy.OpWrap, req.GetKey(), req.GetContext()); err != nil {
		return nil, err
	}
	blob, err := s.be.Wrap(ctx, req.GetKey(), req.GetPlaintext(), req.GetContext())
	if err != nil {
		return nil, err
	}
	h, _, err := envelope.Decode(blob)
	if err != nil {
		return nil, err
	}
	return &pb.WrapResponse{Ciphertext: blob, Key: h.Name, Version: h.Version}, nil
}

func (s *Service) Wrap(ctx context.Context, req *pb.WrapRequest) (*pb.WrapResponse, error) {
	resp, err := s.wrap(ctx, req)
	if err != nil {
		return nil, s.fail(ctx, "wrap", err)
	}
	return resp, nil
}

func (s *Service) unwrap(ctx context.Context, op policy.Operation, blob []byte, c map[string]string) (u keys.Unwrapped, err error) {
	defer func(start time.Time) { auditBlob(ctx, string(op), blob, c, start, err) }(time.Now())
	if len(blob) > keys.MaxBlob {
		return keys.Unwrapped{}, invalid("ciphertext is %d bytes, at most %d", len(blob), keys.MaxBlob)
	}
	if err := checkContext(c); err != nil {
		return keys.Unwrapped{}, err
	}
	h, err := blobKey(blob)
	if err != nil {
		return keys.Unwrapped{}, err
	}
	if err := s.authorize(ctx, op, h.Name, c); err != nil {
		return keys.Unwrapped{}, err
	}
	return s.be.Unwrap(ctx, blob, c)
}

func (s *Service) Unwrap(ctx context.Context, req *pb.UnwrapRequest) (*pb.UnwrapResponse, error) {
	u, err := s.unwrap(ctx, policy.OpUnwrap, req.GetCiphertext(), req.GetContext())
	if err != nil {
		return nil, s.fail(ctx, "unwrap", err)
	}
	return &pb.UnwrapResponse{Plaintext: u.Plaintext, Key: u.Name, Version: u.Version}, nil
}

func (s *Service) Rewrap(ctx context.Context, req *pb.RewrapRequest) (*pb.RewrapResponse, error) {
	u, err := s.unwrap(ctx, policy.OpRewrap, req.GetCiphertext(), req.GetContext())
	if err != nil {
		return nil, s.fail(ctx, "rewrap", err)
	}
	defer secretfile.Zero(u.Plaintext)
	start := time.Now()
	blob, err := s.be.Wrap(ctx, u.Name, u.Plaintext, req.GetContext())
	if err != nil {
		auditOp(ctx, "rewrap.wrap", u.Name, 0, req.GetContext(), "", start, err)
		return nil, s.fail(ctx, "rewrap", err)
	}
	h, _, _ := envelope.Decode(blob)
	return &pb.RewrapResponse{Ciphertext: blob, Key: h.Name, Version: h.Version, PreviousVersion: u.Version}, nil
}

func (s *Service) GenerateDataKey(ctx context.Context, req *pb.GenerateDataKeyRequest) (*pb.GenerateDataKeyResponse, error) {
	start := time.Now()
	resp, err := func() (*pb.GenerateDataKeyResponse, error) {
		if err := s.checkKey(req.GetKey()); err != nil {
			return nil, err
		}
		if err := checkContext(req.GetContext()); err != nil {
			return nil, err
		}
		n := int(req.GetLength())
		if n == 0 {
			n = 32
		}
		if n < 16 || n > keys.MaxRandom {
			return nil, invalid("length %d: want 16..%d bytes", n, keys.MaxRandom)
		}
		if err := s.authorize(ctx, policy.OpDataKey, req.GetKey(), req.GetContext()); err != nil {
			return nil, err
		}
		dk, err := s.be.Random(ctx, n)
		if err != nil {
			return nil, err
		}
		blob, err := s.be.Wrap(ctx, req.GetKey(), dk, req.GetContext())
		if err != nil {
			secretfile.Zero(dk)
			return nil, err
		}
		h, _, _ := envelope.Decode(blob)
		out := &pb.GenerateDataKeyResponse{Ciphertext: blob, Key: h.Name, Version: h.Version}
		if req.GetWithoutPlaintext() {
			secretfile.Zero(dk)
		} else {
			out.Plaintext = dk
		}
		return out, nil
	}()
	auditOp(ctx, "datakey", req.GetKey(), resp.GetVersion(), req.GetContext(), "", start, err)
	if err != nil {
		return nil, s.fail(ctx, "datakey", err)
	}
	return resp, nil
}

func (s *Service) Sign(ctx context.Context, req *pb.SignRequest) (*pb.SignResponse, error) {
	start := time.Now()
	resp, err := func() (*pb.SignResponse, error) {
		if err := s.checkKey(req.GetKey()); err != nil {
			return nil, err
		}
		if err := s.checkData("message", req.GetMessage()); err != nil {
			return nil, err
		}
		if err := s.authorize(ctx, policy.OpSign, req.GetKey(), nil); err != nil {
			return nil, err
		}
		sig, err := s.be.Sign(ctx, req.GetKey(), req.GetMessage())
		if err != nil {
			return nil, err
		}
		return &pb.SignResponse{Signature: sig.Bytes, Key: sig.Name, Version: sig.Version}, nil
	}()
	auditOp(ctx, "sign", req.GetKey(), resp.GetVersion(), nil, "", start, err)
	if err != nil {
		return nil, s.fail(ctx, "sign", err)
	}
	return resp, nil
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

func (s *Service) Verify(ctx context.Context, req *pb.VerifyRequest) (*pb.VerifyResponse, error) {
	start := time.Now()
	resp, err := func() (*pb.VerifyResponse, error) {
		if err := s.checkKey(req.GetKey()); err != nil {
			return nil, err
		}
		if err := s.checkData("message", req.GetMessage()); err != nil {
			return nil, err
		}
		if len(req.GetSignature()) > 1024 {
			return nil, invalid("signature is %d bytes, at most 1024", len(req.GetSignature()))
		}
		if err := s.authorize(ctx, policy.OpVerify, req.GetKey(), nil); err != nil {
			return nil, err
		}
		ok, v, err := s.verifyAny(ctx, req.GetKey(), req.GetVersion(), func(v uint32) error {
			return s.be.Verify(ctx, req.GetKey(), v, req.GetMessage(), req.GetSignature())
		})
		if err != nil {
			return nil, err
		}
		return &pb.VerifyResponse{Valid: ok, Version: v}, nil
	}()
	auditOp(ctx, "verify", req.GetKey(), max(resp.GetVersion(), req.GetVersion()), nil, validity(resp.GetValid(), err), start, err)
	if err != nil {
		return nil, s.fail(ctx, "verify", err)
	}
	return resp, nil
}

func (s *Service) mac(ctx context.Context, req *pb.MacRequest) (resp *pb.MacResponse, err error) {
	defer func(start time.Time) {
		auditOp(ctx, "mac", req.GetKey(), resp.GetVersion(), nil, "", start, err)
	}(time.Now())
	if err := s.checkKey(req.GetKey()); err != nil {
		return nil, err
	}
	if err := s.checkData("message", req.GetMessage()); err != nil {
		return nil, err
	}
	if err := s.authorize(ctx, policy.OpMAC, req.GetKey(), nil); err != nil {
		return nil, err
	}
	m, err := s.be.MAC(ctx, req.GetKey(), req.GetMessage())
	if err != nil {
		return nil, err
	}
	return &pb.MacResponse{Mac: m.Bytes, Key: m.Name, Version: m.Version}, nil
}

func (s *Service) Mac(ctx context.Context, req *pb.MacRequest) (*pb.MacResponse, error) {
	resp, err := s.mac(ctx, req)
	if err != nil {
		return nil, s.fail(ctx, "mac", err)
	}
	return resp, nil
}

func (s *Service) verifyMac(ctx context.Context, req *pb.VerifyMacRequest) (resp *pb.VerifyMacResponse, err error) {
	defer func(start time.Time) {
		auditOp(ctx, "verify-mac", req.GetKey(), max(resp.GetVersion(), req.GetVersion()), nil, validity(resp.GetValid(), err), start, err)
	}(time.Now())
	if err := s.checkKey(req.GetKey()); err != nil {
		return nil, err
	}
	if err := s.checkData("message", req.GetMessage()); err != nil {
		return nil, err
	}
	if len(req.GetMac()) > 64 {
		return nil, invalid("mac is %d bytes, at most 64", len(req.GetMac()))
	}
	if err := s.authorize(ctx, policy.OpVerifyMAC, req.GetKey(), nil); err != nil {
		return nil, err
	}
	id, _ := identityFrom(ctx)
	limit := s.lim.Load().MaxFailedVerifyMacPerMinute
	if s.abuse.over(callerOf(id), abuseBadMAC, limit) {
		s.metrics.rateLimited(abuseBadMAC)
		return nil, fmt.Errorf("verify-mac: uid %d: %w", id.UID, ErrRateLimited)
	}
	ok, v, err := s.verifyAny(ctx, req.GetKey(), req.GetVersion(), func(v uint32) error {
		return s.be.VerifyMAC(ctx, req.GetKey(), v, req.GetMessage(), req.GetMac())
	})
	if err != nil {
		return nil, err
	}
	if !ok {
		s.abuse.note(callerOf(id), abuseBadMAC, limit)
	}
	return &pb.VerifyMacResponse{Valid: ok, Version: v}, nil
}

func (s *Service) VerifyMac(ctx context.Context, req *pb.VerifyMacRequest) (*pb.VerifyMacResponse, error) {
	resp, err := s.verifyMac(ctx, req)
	if err != nil {
		return nil, s.fail(ctx, "verify-mac", err)
	}
	return resp, nil
}

func (s *Service) GetPublicKey(ctx context.Context, req *pb.GetPublicKeyRequest) (*pb.GetPublicKeyResponse, error) {
	start := time.Now()
	resp, err := func() (*pb.GetPublicKeyResponse, error) {
		if err := s.checkKey(req.GetKey()); err != nil {
			return nil, err
		}
		if err := s.authorize(ctx, policy.OpPublicKey, req.GetKey(), nil); err != nil {
			return nil, err
		}
		pub, v, err := s.be.PublicKey(ctx, req.GetKey(), req.GetVersion())
		if err != nil {
			return nil, err
		}
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			return nil, fmt.Errorf("marshal public key: %w", err)
		}
		info, err := s.be.DescribeKey(ctx, req.GetKey())
		if err != nil {
			return nil, err
		}
		return &pb.GetPublicKeyResponse{Key: req.GetKey(), Version: v, KeyType: string(info.Type), PublicKeyDer: der,
			PublicKeyPem: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))}, nil
	}()
	auditOp(ctx, "public-key", req.GetKey(), max(resp.GetVersion(), req.GetVersion()), nil, "", start, err)
	if err != nil {
		return nil, s.fail(ctx, "public-key", err)
	}
	return resp, nil
}

func (s *Service) checkBatch(n int) error {
	if n == 0 {
		return invalid("batch has no items")
	}
	if max := s.lim.Load().MaxBatch; n > max {
		return invalid("batch has %d items, at most %d", n, max)
	}
	return nil
}

func (s *Service) BatchWrap(ctx context.Context, req *pb.BatchWrapRequest) (*pb.BatchWrapResponse, error) {
	if err := s.checkBatch(len(req.GetItems())); err != nil {
		return nil, s.fail(ctx, "batch-wrap", err)
	}
	expectOps(ctx, len(req.GetItems()))
	out := &pb.BatchWrapResponse{Results: make([]*pb.BatchWrapResult, len(req.GetItems()))}
	for i, it := range req.GetItems() {
		r, err := s.wrap(ctx, it)
		if err != nil {
			out.Results[i] = &pb.BatchWrapResult{Result: &pb.BatchWrapResult_Error{Error: itemError(err)}}
			continue
		}
		out.Results[i] = &pb.BatchWrapResult{Result: &pb.BatchWrapResult_Ok{Ok: r}}
	}
	return out, nil
}

func (s *Service) BatchUnwrap(ctx context.Context, req *pb.BatchUnwrapRequest) (*pb.BatchUnwrapResponse, error) {
	if err := s.checkBatch(len(req.GetItems())); err != nil {
		return nil, s.fail(ctx, "batch-unwrap", err)
	}
	expectOps(ctx, len(req.GetItems()))
	out := &pb.BatchUnwrapResponse{Results: make([]*pb.BatchUnwrapResult, len(req.GetItems()))}
	for i, it := range req.GetItems() {
		u, err := s.unwrap(ctx, policy.OpUnwrap, it.GetCiphertext(), it.GetContext())
		if err != nil {
			out.Results[i] = &pb.BatchUnwrapResult{Result: &pb.BatchUnwrapResult_Error{Error: itemError(err)}}
			continue
		}
		out.Results[i] = &pb.BatchUnwrapResult{Result: &pb.BatchUnwrapResult_Ok{Ok: &pb.UnwrapResponse{Plaintext: u.Plaintext, Key: u.Name, Version: u.Version}}}
	}
	return out, nil
}

func (s *Service) BatchMac(ctx context.Context, req *pb.BatchMacRequest) (*pb.BatchMacResponse, error) {
	if err := s.checkBatch(len(req.GetItems())); err != nil {
		return nil, s.fail(ctx, "batch-mac", err)
	}
	expectOps(ctx, len(req.GetItems()))
	out := &pb.BatchMacResponse{Results: make([]*pb.BatchMacResult, len(req.GetItems()))}
	for i, it := range req.GetItems() {
		r, err := s.mac(ctx, it)
		if err != nil {
			out.Results[i] = &pb.BatchMacResult{Result: &pb.BatchMacResult_Error{Error: itemError(err)}}
			continue
		}
		out.Results[i] = &pb.BatchMacResult{Result: &pb.BatchMacResult_Ok{Ok: r}}
	}
	return out, nil
}

func (s *Service) BatchVerifyMac(ctx context.Context, req *pb.BatchVerifyMacRequest) (*pb.BatchVerifyMacResponse, error) {
	if err := s.checkBatch(len(req.GetItems())); err != nil {
		return nil, s.fail(ctx, "batch-verify-mac", err)
	}
	expectOps(ctx, len(req.GetItems()))
	out := &pb.BatchVerifyMacResponse{Results: make([]*pb.BatchVerifyMacResult, len(req.GetItems()))}
	for i, it := range req.GetItems() {
		r, err := s.verifyMac(ctx, it)
		if err != nil {
			out.Results[i] = &pb.BatchVerifyMacResult{Result: &pb.BatchVerifyMacResult_Error{Error: itemError(err)}}
			continue
		}
		out.Results[i] = &pb.BatchVerifyMacResult{Result: &pb.BatchVerifyMacResult_Ok{Ok: r}}
	}
	return out, nil
}

// keyInfo converts a backend KeyInfo for the wire.
func keyInfo(k keys.KeyInfo) *pb.KeyInfo {
	out := &pb.KeyInfo{Key: k.Name, KeyType: string(k.Type), Created: timestamppb.New(k.Created), MinDecryptVersion: k.MinDecryptVersion, Adopted: k.Adopted}
	for _, v := range k.Versions {
		st := map[keys.State]pb.VersionState{keys.Enabled: pb.VersionState_ENABLED, keys.Disabled: pb.VersionState_DISABLED, keys.Destroyed: pb.VersionState_DESTROYED}[v.State]
		out.Versions = append(out.Versions, &pb.KeyVersion{Version: v.Version, State: st, Created: timestamppb.New(v.Created)})
	}
	return out
}

// admin runs one lifecycle operation after authorising it, and audits it.
func (s *Service) admin(ctx context.Context, op policy.Operation, key string, fn func() (keys.KeyInfo, error)) (*pb.KeyInfo, error) {
	start := time.Now()
	info, err := func() (keys.KeyInfo, error) {
		if err := s.checkKey(key); err != nil {
			return keys.KeyInfo{}, err
		}
		if err := s.authorize(ctx, op, key, nil); err != nil {
			return keys.KeyInfo{}, err
		}
		if op != policy.OpKeyRead {
			if err := s.auditIntent(ctx, string(op), key); err != nil {
				return keys.KeyInfo{}, err
			}
		}
		return fn()
	}()
	auditOp(ctx, string(op), key, uint32(len(info.Versions)), nil, "", start, err)
	if err != nil {
		return nil, s.fail(ctx, string(op), err)
	}
	if op != policy.OpKeyRead {
		id, _ := identityFrom(ctx)
		s.log.Info("key lifecycle", "op", string(op), "key", key, "uid", id.UID, "pid", id.PID, "unit", id.Unit)
	}
	return keyInfo(info), nil
}

func (s *Service) CreateKey(ctx context.Context, req *pb.CreateKeyRequest) (*pb.KeyInfo, error) {
	return s.admin(ctx, policy.OpKeyCreate, req.GetKey(), func() (keys.KeyInfo, error) {
		t, err := keys.ParseType(req.GetKeyType())
		if err != nil {
			return keys.KeyInfo{}, err
		}
		return s.be.CreateKey(ctx, req.GetKey(), t)
	})
}

func (s *Service) RotateKey(ctx context.Context, req *pb.RotateKeyRequest) (*pb.KeyInfo, error) {
	return s.admin(ctx, policy.OpKeyRotate, req.GetKey(), func() (keys.KeyInfo, error) { return s.be.RotateKey(ctx, req.GetKey()) })
}

func (s *Service) DescribeKey(ctx context.Context, req *pb.DescribeKeyRequest) (*pb.KeyInfo, error) {
	return s.admin(ctx, policy.OpKeyRead, req.GetKey(), func() (keys.KeyInfo, error) { return s.be.DescribeKey(ctx, req.GetKey()) })
}

// ListKeys returns the keys the caller may read (key.read); others are
// left out rather than refused.
func (s *Service) ListKeys(ctx context.Context, req *pb.ListKeysRequest) (*pb.ListKeysResponse, error) {
	all, err := s.be.ListKeys(ctx)
	if err != nil {
		return nil, s.fail(ctx, "list", err)
	}
	id, ok := identityFrom(ctx)
	if !ok {
		return nil, statusFor(ErrDenied)
	}
	pol := s.pol.Load()
	out := &pb.ListKeysResponse{}
	for _, k := range all {
		if pol.Decide(id, policy.Request{Op: policy.OpKeyRead, Key: k.Name}, s.reserved()).Allowed {
			out.Keys = append(out.Keys, keyInfo(k))
		}
	}
	return out, nil
}

func (s *Service) SetVersionState(ctx context.Context, req *pb.SetVersionStateRequest) (*pb.KeyInfo, error) {
	var op policy.Operation
	var st keys.State
	switch req.GetState() {
	case pb.VersionState_ENABLED:
		op, st = policy.OpKeyEnable, keys.Enabled
	case pb.VersionState_DISABLED:
		op, st = policy.OpKeyDisable, keys.Disabled
	default:
		return nil, statusFor(invalid("state must be ENABLED or DISABLED (DestroyVersion destroys)"))
	}
	return s.admin(ctx, op, req.GetKey(), func() (keys.KeyInfo, error) {
		return s.be.SetVersionState(ctx, req.GetKey(), req.GetVersion(), st)
	})
}

func (s *Service) DestroyVersion(ctx context.Context, req *pb.DestroyVersionRequest) (*pb.KeyInfo, error) {
	return s.admin(ctx, policy.OpKeyDestroy, req.GetKey(), func() (keys.KeyInfo, error) {
		return s.be.DestroyVersion(ctx, req.GetKey(), req.GetVersion())
	})
}

func (s *Service) SetMinDecryptVersion(ctx context.Context, req *pb.SetMinDecryptVersionRequest) (*pb.KeyInfo, error) {
	return s.admin(ctx, policy.OpKeySetMin, req.GetKey(), func() (keys.KeyInfo, error) {
		return s.be.SetMinDecryptVersion(ctx, req.GetKey(), req.GetVersion())
	})
}

func (s *Service) AdoptKey(ctx context.Context, req *pb.AdoptKeyRequest) (*pb.KeyInfo, error) {
	return s.admin(ctx, policy.OpKeyAdopt, req.GetKey(), func() (keys.KeyInfo, error) {
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
