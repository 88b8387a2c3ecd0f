package daemon

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/envelope"
	"github.com/keyward/keyward/internal/secretfile"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/policy"
)

// opTarget is what one data operation is authorised and recorded against.
type opTarget struct {
	key     string
	version uint32 // recorded unless the operation's recorded says otherwise
	ref     string // the caller's reference for the request (audit.Record.CallerRef)
	ctx     map[string]string
	err     error // a blob whose header could not be read
}

// dataOp is one data operation, the parts that differ between operations;
// runOp does the rest the same way for all: check, authorise, run, record.
// Its funcs capture nothing, so a call allocates no closure.
type dataOp[Req, Resp any] struct {
	m *method
	// target reads what the request names; it runs before any check, so
	// that even a refused request is recorded with its key.
	target func(Req) opTarget
	// check refuses a malformed request before the policy is asked.
	check func(*Service, Req, opTarget) error
	// run does the work, once authorised.
	run func(*Service, context.Context, Req, opTarget) (Resp, error)
	// recorded is the version and result the record carries; nil: the
	// target's version and the error's result.
	recorded func(Req, Resp, error) (uint32, string)
}

// runOp checks, authorises, runs and records one data operation (one batch
// item), and returns its internal error; serve maps it for the wire.
func runOp[Req, Resp any](s *Service, ctx context.Context, op *dataOp[Req, Resp], req Req) (resp Resp, err error) {
	start := time.Now()
	t := op.target(req)
	var grant string // the break-glass grant that allowed it, if one did
	if err = op.check(s, req, t); err == nil {
		if grant, err = s.authorizeGrant(ctx, op.m.op, t.key, t.ctx); err == nil {
			resp, err = op.run(s, ctx, req, t)
		}
	}
	v, result := t.version, ""
	if op.recorded != nil {
		v, result = op.recorded(req, resp, err)
	}
	auditOpGrant(ctx, opRecord{op: op.m.audit, key: t.key, version: v, ctx: t.ctx, ref: t.ref, grant: grant, result: result}, start, err)
	return resp, err
}

// serve answers a single data call: runOp, with its error mapped for the wire.
func serve[Req, Resp any](s *Service, ctx context.Context, op *dataOp[Req, Resp], req Req) (Resp, error) {
	resp, err := runOp(s, ctx, op, req)
	if err != nil {
		var zero Resp
		return zero, s.fail(ctx, op.m.log, err)
	}
	return resp, nil
}

// batchOp is a batch RPC: its items are single calls of item, answered one
// by one as ok or failed results of type Res.
type batchOp[Req, Resp, Res any] struct {
	m      *method
	item   *dataOp[Req, Resp]
	ok     func(Resp) Res
	failed func(*pb.ItemError) Res
	// oneAtATime: the items never run in parallel. For verify-mac, whose
	// failed-guess limit is checked before an item and counted after it:
	// items in flight together would all pass the check.
	oneAtATime bool
}

// serveBatch runs every item through runOp, up to limits.batch_parallelism
// at once for the caller across all its batch calls, serial ones included
// (batchSlots): each is authorised and recorded on its own (its audit record in
// item order), and an item's error is its result, not the call's.
func serveBatch[Req, Resp, Res any](s *Service, ctx context.Context, b *batchOp[Req, Resp, Res], items []Req) ([]Res, error) {
	if err := s.checkBatch(len(items)); err != nil {
		return nil, s.fail(ctx, b.m.log, err)
	}
	expectOps(ctx, len(items))
	out := make([]Res, len(items))
	item := func(ctx context.Context, i int) {
		r, err := runOp(s, ctx, b.item, items[i])
		if err != nil {
			out[i] = b.failed(itemError(err))
			return
		}
		out[i] = b.ok(r)
	}
	limit := s.lim.Load().BatchParallelism
	id, _ := identityFrom(ctx)
	who := callerOf(id)
	slots := s.batchSlots.join(who, limit) // a serial batch's items count too
	defer s.batchSlots.leave(who, slots)
	par := min(limit, len(items)) // workers for this batch; the caller's slots are limit
	if par <= 1 || b.oneAtATime {
		for i := range items {
			slots.run(ctx, func() { item(ctx, i) })
		}
		return out, nil
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range par {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < len(items); i = int(next.Add(1) - 1) {
				ictx := withItem(ctx, i)
				slots.run(ictx, func() { item(ictx, i) })
			}
		})
	}
	wg.Wait()
	orderItems(ctx)
	return out, nil
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

// keyed is the target of an operation on a named key.
func keyed(key string, c map[string]string) opTarget { return opTarget{key: key, ctx: c} }

// blobTarget is the target of an operation on a blob: the key and version
// its header names (empty for a malformed blob), read before anything else.
func blobTarget(blob []byte, c map[string]string) opTarget {
	h, _, err := envelope.Decode(blob)
	if err != nil {
		return opTarget{ctx: c, err: err}
	}
	return opTarget{key: h.Name, version: h.Version, ctx: c}
}

// checkBlob refuses a blob too long or unreadable, or a malformed context.
func checkBlob(blob []byte, t opTarget) error {
	if len(blob) > keys.MaxBlob {
		return invalid("ciphertext is %d bytes, at most %d", len(blob), keys.MaxBlob)
	}
	if err := checkContext(t.ctx); err != nil {
		return err
	}
	if len(blob) == 0 {
		return invalid("ciphertext is empty")
	}
	return t.err
}

// checkMessage refuses a bad key name or a message over the size limit.
func (s *Service) checkMessage(key string, msg []byte) error {
	if err := s.checkKey(key); err != nil {
		return err
	}
	return s.checkData("message", msg)
}

// newest records the version that answered.
func newest[Resp interface{ GetVersion() uint32 }, Req any](_ Req, r Resp, _ error) (uint32, string) {
	return r.GetVersion(), ""
}

var opWrap = dataOp[*pb.WrapRequest, *pb.WrapResponse]{
	m:      methodOf("Wrap"),
	target: func(r *pb.WrapRequest) opTarget { return keyed(r.GetKey(), r.GetContext()) },
	check: func(s *Service, r *pb.WrapRequest, _ opTarget) error {
		if err := s.checkKey(r.GetKey()); err != nil {
			return err
		}
		if err := s.checkData("plaintext", r.GetPlaintext()); err != nil {
			return err
		}
		return checkContext(r.GetContext())
	},
	run: func(s *Service, ctx context.Context, r *pb.WrapRequest, _ opTarget) (*pb.WrapResponse, error) {
		blob, err := s.be.Wrap(ctx, r.GetKey(), r.GetPlaintext(), r.GetContext())
		if err != nil {
			return nil, err
		}
		h, _, err := envelope.Decode(blob)
		if err != nil {
			return nil, err
		}
		return &pb.WrapResponse{Ciphertext: blob, Key: h.Name, Version: h.Version}, nil
	},
	recorded: newest[*pb.WrapResponse, *pb.WrapRequest],
}

var opUnwrap = dataOp[*pb.UnwrapRequest, *pb.UnwrapResponse]{
	m:      methodOf("Unwrap"),
	target: func(r *pb.UnwrapRequest) opTarget { return blobTarget(r.GetCiphertext(), r.GetContext()) },
	check:  func(_ *Service, r *pb.UnwrapRequest, t opTarget) error { return checkBlob(r.GetCiphertext(), t) },
	run: func(s *Service, ctx context.Context, r *pb.UnwrapRequest, _ opTarget) (*pb.UnwrapResponse, error) {
		u, err := s.be.Unwrap(ctx, r.GetCiphertext(), r.GetContext())
		if err != nil {
			return nil, err
		}
		return &pb.UnwrapResponse{Plaintext: u.Plaintext, Key: u.Name, Version: u.Version}, nil
	},
}

// opRewrap is a rewrap's authorised, recorded part: the unwrap. Rewrap
// wraps the plaintext again under the same authorisation.
var opRewrap = dataOp[*pb.RewrapRequest, keys.Unwrapped]{
	m:      methodOf("Rewrap"),
	target: func(r *pb.RewrapRequest) opTarget { return blobTarget(r.GetCiphertext(), r.GetContext()) },
	check:  func(_ *Service, r *pb.RewrapRequest, t opTarget) error { return checkBlob(r.GetCiphertext(), t) },
	run: func(s *Service, ctx context.Context, r *pb.RewrapRequest, _ opTarget) (keys.Unwrapped, error) {
		return s.be.Unwrap(ctx, r.GetCiphertext(), r.GetContext())
	},
}

// dataKeyLength is the length a data-key request asks for (0: 32 bytes).
func dataKeyLength(r *pb.GenerateDataKeyRequest) int {
	if n := int(r.GetLength()); n != 0 {
		return n
	}
	return 32
}

var opDataKey = dataOp[*pb.GenerateDataKeyRequest, *pb.GenerateDataKeyResponse]{
	m:      methodOf("GenerateDataKey"),
	target: func(r *pb.GenerateDataKeyRequest) opTarget { return keyed(r.GetKey(), r.GetContext()) },
	check: func(s *Service, r *pb.GenerateDataKeyRequest, _ opTarget) error {
		if err := s.checkKey(r.GetKey()); err != nil {
			return err
		}
		if err := checkContext(r.GetContext()); err != nil {
			return err
		}
		if n := dataKeyLength(r); n < 16 || n > keys.MaxRandom {
			return invalid("length %d: want 16..%d bytes", n, keys.MaxRandom)
		}
		return nil
	},
	run:      (*Service).generateDataKey,
	recorded: newest[*pb.GenerateDataKeyResponse, *pb.GenerateDataKeyRequest],
}

func (s *Service) generateDataKey(ctx context.Context, r *pb.GenerateDataKeyRequest, _ opTarget) (*pb.GenerateDataKeyResponse, error) {
	dk, err := s.be.Random(ctx, dataKeyLength(r))
	if err != nil {
		return nil, err
	}
	blob, err := s.be.Wrap(ctx, r.GetKey(), dk, r.GetContext())
	if err != nil {
		secretfile.Zero(dk)
		return nil, err
	}
	h, _, _ := envelope.Decode(blob)
	out := &pb.GenerateDataKeyResponse{Ciphertext: blob, Key: h.Name, Version: h.Version}
	if r.GetWithoutPlaintext() {
		secretfile.Zero(dk)
	} else {
		out.Plaintext = dk
	}
	return out, nil
}

var opSign = dataOp[*pb.SignRequest, *pb.SignResponse]{
	m:      methodOf("Sign"),
	target: func(r *pb.SignRequest) opTarget { return keyed(r.GetKey(), nil) },
	check: func(s *Service, r *pb.SignRequest, _ opTarget) error {
		return s.checkMessage(r.GetKey(), r.GetMessage())
	},
	run: func(s *Service, ctx context.Context, r *pb.SignRequest, _ opTarget) (*pb.SignResponse, error) {
		sig, err := s.be.Sign(ctx, r.GetKey(), r.GetMessage())
		if err != nil {
			return nil, err
		}
		return &pb.SignResponse{Signature: sig.Bytes, Key: sig.Name, Version: sig.Version}, nil
	},
	recorded: newest[*pb.SignResponse, *pb.SignRequest],
}

var opVerify = dataOp[*pb.VerifyRequest, *pb.VerifyResponse]{
	m:      methodOf("Verify"),
	target: func(r *pb.VerifyRequest) opTarget { return keyed(r.GetKey(), nil) },
	check: func(s *Service, r *pb.VerifyRequest, _ opTarget) error {
		if err := s.checkMessage(r.GetKey(), r.GetMessage()); err != nil {
			return err
		}
		if len(r.GetSignature()) > 1024 {
			return invalid("signature is %d bytes, at most 1024", len(r.GetSignature()))
		}
		return nil
	},
	run: func(s *Service, ctx context.Context, r *pb.VerifyRequest, _ opTarget) (*pb.VerifyResponse, error) {
		ok, v, err := s.verifyAny(ctx, r.GetKey(), r.GetVersion(), func(v uint32) error {
			return s.be.Verify(ctx, r.GetKey(), v, r.GetMessage(), r.GetSignature())
		})
		if err != nil {
			return nil, err
		}
		if !ok {
			s.metrics.verifyFailed(policy.OpVerify)
		}
		return &pb.VerifyResponse{Valid: ok, Version: v}, nil
	},
	recorded: func(r *pb.VerifyRequest, resp *pb.VerifyResponse, err error) (uint32, string) {
		return max(resp.GetVersion(), r.GetVersion()), validity(resp.GetValid(), err)
	},
}

var opMAC = dataOp[*pb.MacRequest, *pb.MacResponse]{
	m:      methodOf("Mac"),
	target: func(r *pb.MacRequest) opTarget { return keyed(r.GetKey(), nil) },
	check: func(s *Service, r *pb.MacRequest, _ opTarget) error {
		return s.checkMessage(r.GetKey(), r.GetMessage())
	},
	run: func(s *Service, ctx context.Context, r *pb.MacRequest, _ opTarget) (*pb.MacResponse, error) {
		m, err := s.be.MAC(ctx, r.GetKey(), r.GetMessage())
		if err != nil {
			return nil, err
		}
		return &pb.MacResponse{Mac: m.Bytes, Key: m.Name, Version: m.Version}, nil
	},
	recorded: newest[*pb.MacResponse, *pb.MacRequest],
}

var opVerifyMAC = dataOp[*pb.VerifyMacRequest, *pb.VerifyMacResponse]{
	m:      methodOf("VerifyMac"),
	target: func(r *pb.VerifyMacRequest) opTarget { return keyed(r.GetKey(), nil) },
	check: func(s *Service, r *pb.VerifyMacRequest, _ opTarget) error {
		if err := s.checkMessage(r.GetKey(), r.GetMessage()); err != nil {
			return err
		}
		if len(r.GetMac()) > 64 {
			return invalid("mac is %d bytes, at most 64", len(r.GetMac()))
		}
		return nil
	},
	run: (*Service).verifyMAC,
	recorded: func(r *pb.VerifyMacRequest, resp *pb.VerifyMacResponse, err error) (uint32, string) {
		return max(resp.GetVersion(), r.GetVersion()), validity(resp.GetValid(), err)
	},
}

// verifyMAC checks a MAC once authorised; a caller whose MACs keep failing
// is refused for a while (a guessing oracle costs it its rate).
func (s *Service) verifyMAC(ctx context.Context, r *pb.VerifyMacRequest, _ opTarget) (*pb.VerifyMacResponse, error) {
	id, _ := identityFrom(ctx)
	limit := s.lim.Load().MaxFailedVerifyMacPerMinute
	if s.abuse.over(callerOf(id), abuseBadMAC, limit) {
		s.metrics.rateLimited(abuseBadMAC)
		return nil, fmt.Errorf("verify-mac: uid %d: %w", id.UID, ErrRateLimited)
	}
	ok, v, err := s.verifyAny(ctx, r.GetKey(), r.GetVersion(), func(v uint32) error {
		return s.be.VerifyMAC(ctx, r.GetKey(), v, r.GetMessage(), r.GetMac())
	})
	if err != nil {
		return nil, err
	}
	if !ok {
		s.abuse.note(callerOf(id), abuseBadMAC, limit)
		s.metrics.verifyFailed(policy.OpVerifyMAC)
	}
	return &pb.VerifyMacResponse{Valid: ok, Version: v}, nil
}

var opPublicKey = dataOp[*pb.GetPublicKeyRequest, *pb.GetPublicKeyResponse]{
	m:      methodOf("GetPublicKey"),
	target: func(r *pb.GetPublicKeyRequest) opTarget { return keyed(r.GetKey(), nil) },
	check:  func(s *Service, r *pb.GetPublicKeyRequest, _ opTarget) error { return s.checkKey(r.GetKey()) },
	run:    (*Service).publicKey,
	recorded: func(r *pb.GetPublicKeyRequest, resp *pb.GetPublicKeyResponse, _ error) (uint32, string) {
		return max(resp.GetVersion(), r.GetVersion()), ""
	},
}

func (s *Service) publicKey(ctx context.Context, r *pb.GetPublicKeyRequest, _ opTarget) (*pb.GetPublicKeyResponse, error) {
	pub, v, err := s.be.PublicKey(ctx, r.GetKey(), r.GetVersion())
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("marshal public key: %w", err)
	}
	info, err := s.be.DescribeKey(ctx, r.GetKey())
	if err != nil {
		return nil, err
	}
	return &pb.GetPublicKeyResponse{Key: r.GetKey(), Version: v, KeyType: string(info.Type), PublicKeyDer: der,
		PublicKeyPem: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))}, nil
}

var batchWrap = batchOp[*pb.WrapRequest, *pb.WrapResponse, *pb.BatchWrapResult]{
	m: methodOf("BatchWrap"), item: &opWrap,
	ok: func(r *pb.WrapResponse) *pb.BatchWrapResult {
		return &pb.BatchWrapResult{Result: &pb.BatchWrapResult_Ok{Ok: r}}
	},
	failed: func(e *pb.ItemError) *pb.BatchWrapResult {
		return &pb.BatchWrapResult{Result: &pb.BatchWrapResult_Error{Error: e}}
	},
}

var batchUnwrap = batchOp[*pb.UnwrapRequest, *pb.UnwrapResponse, *pb.BatchUnwrapResult]{
	m: methodOf("BatchUnwrap"), item: &opUnwrap,
	ok: func(r *pb.UnwrapResponse) *pb.BatchUnwrapResult {
		return &pb.BatchUnwrapResult{Result: &pb.BatchUnwrapResult_Ok{Ok: r}}
	},
	failed: func(e *pb.ItemError) *pb.BatchUnwrapResult {
		return &pb.BatchUnwrapResult{Result: &pb.BatchUnwrapResult_Error{Error: e}}
	},
}

var batchMAC = batchOp[*pb.MacRequest, *pb.MacResponse, *pb.BatchMacResult]{
	m: methodOf("BatchMac"), item: &opMAC,
	ok: func(r *pb.MacResponse) *pb.BatchMacResult {
		return &pb.BatchMacResult{Result: &pb.BatchMacResult_Ok{Ok: r}}
	},
	failed: func(e *pb.ItemError) *pb.BatchMacResult {
		return &pb.BatchMacResult{Result: &pb.BatchMacResult_Error{Error: e}}
	},
}

var batchVerifyMAC = batchOp[*pb.VerifyMacRequest, *pb.VerifyMacResponse, *pb.BatchVerifyMacResult]{
	m: methodOf("BatchVerifyMac"), item: &opVerifyMAC, oneAtATime: true,
	ok: func(r *pb.VerifyMacResponse) *pb.BatchVerifyMacResult {
		return &pb.BatchVerifyMacResult{Result: &pb.BatchVerifyMacResult_Ok{Ok: r}}
	},
	failed: func(e *pb.ItemError) *pb.BatchVerifyMacResult {
		return &pb.BatchVerifyMacResult{Result: &pb.BatchVerifyMacResult_Error{Error: e}}
	},
}

func (s *Service) Wrap(ctx context.Context, req *pb.WrapRequest) (*pb.WrapResponse, error) {
	return serve(s, ctx, &opWrap, req)
}

func (s *Service) Unwrap(ctx context.Context, req *pb.UnwrapRequest) (*pb.UnwrapResponse, error) {
	return serve(s, ctx, &opUnwrap, req)
}

// auditRewrapWrap is the op of the record of a rewrap whose unwrap was
// done (and recorded as rewrap) but whose wrap failed.
const auditRewrapWrap = "rewrap.wrap"

func (s *Service) Rewrap(ctx context.Context, req *pb.RewrapRequest) (*pb.RewrapResponse, error) {
	u, err := runOp(s, ctx, &opRewrap, req)
	if err != nil {
		return nil, s.fail(ctx, opRewrap.m.log, err)
	}
	defer secretfile.Zero(u.Plaintext)
	start := time.Now()
	blob, err := s.be.Wrap(ctx, u.Name, u.Plaintext, req.GetContext())
	if err != nil {
		auditOp(ctx, auditRewrapWrap, u.Name, 0, req.GetContext(), "", start, err)
		return nil, s.fail(ctx, opRewrap.m.log, err)
	}
	h, _, _ := envelope.Decode(blob)
	return &pb.RewrapResponse{Ciphertext: blob, Key: h.Name, Version: h.Version, PreviousVersion: u.Version}, nil
}

func (s *Service) GenerateDataKey(ctx context.Context, req *pb.GenerateDataKeyRequest) (*pb.GenerateDataKeyResponse, error) {
	return serve(s, ctx, &opDataKey, req)
}

func (s *Service) Sign(ctx context.Context, req *pb.SignRequest) (*pb.SignResponse, error) {
	return serve(s, ctx, &opSign, req)
}

func (s *Service) Verify(ctx context.Context, req *pb.VerifyRequest) (*pb.VerifyResponse, error) {
	return serve(s, ctx, &opVerify, req)
}

func (s *Service) Mac(ctx context.Context, req *pb.MacRequest) (*pb.MacResponse, error) {
	return serve(s, ctx, &opMAC, req)
}

func (s *Service) VerifyMac(ctx context.Context, req *pb.VerifyMacRequest) (*pb.VerifyMacResponse, error) {
	return serve(s, ctx, &opVerifyMAC, req)
}

func (s *Service) GetPublicKey(ctx context.Context, req *pb.GetPublicKeyRequest) (*pb.GetPublicKeyResponse, error) {
	return serve(s, ctx, &opPublicKey, req)
}

func (s *Service) BatchWrap(ctx context.Context, req *pb.BatchWrapRequest) (*pb.BatchWrapResponse, error) {
	res, err := serveBatch(s, ctx, &batchWrap, req.GetItems())
	if err != nil {
		return nil, err
	}
	return &pb.BatchWrapResponse{Results: res}, nil
}

func (s *Service) BatchUnwrap(ctx context.Context, req *pb.BatchUnwrapRequest) (*pb.BatchUnwrapResponse, error) {
	res, err := serveBatch(s, ctx, &batchUnwrap, req.GetItems())
	if err != nil {
		return nil, err
	}
	return &pb.BatchUnwrapResponse{Results: res}, nil
}

func (s *Service) BatchMac(ctx context.Context, req *pb.BatchMacRequest) (*pb.BatchMacResponse, error) {
	res, err := serveBatch(s, ctx, &batchMAC, req.GetItems())
	if err != nil {
		return nil, err
	}
	return &pb.BatchMacResponse{Results: res}, nil
}

func (s *Service) BatchVerifyMac(ctx context.Context, req *pb.BatchVerifyMacRequest) (*pb.BatchVerifyMacResponse, error) {
	res, err := serveBatch(s, ctx, &batchVerifyMAC, req.GetItems())
	if err != nil {
		return nil, err
	}
	return &pb.BatchVerifyMacResponse{Results: res}, nil
}
