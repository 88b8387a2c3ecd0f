package daemon

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/keyward/keyward/audit"
	"github.com/keyward/keyward/envelope"
	"github.com/keyward/keyward/internal/secretfile"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/policy"
)

// The Kubernetes KMS v2 endpoint (k8s.io/kms/apis/v2, KeyManagementService)
// on kms_socket: kube-apiserver sends it the seeds of its data keys to
// encrypt under kms_key. Each call runs through the same gate, interceptors,
// policy (kms.encrypt, kms.decrypt) and audit as keyward's own API.
//
// A ciphertext is a keyward envelope of kms_key bound to kmsContext. The
// context is fixed: Kubernetes passes nothing that is the same at Encrypt
// and Decrypt time except the annotations, which the plugin itself returns
// (none) and which etcd stores in clear, and the request uid, which differs
// per call. Its key is in the reserved namespace (keys.ReservedContextPrefix)
// that the main API refuses in a caller's context: no caller of Wrap,
// Unwrap, Rewrap or GenerateDataKey can open a Kubernetes ciphertext or
// make one Decrypt accepts, whatever the policy grants it on kms_key.
var kmsContext = keys.Context{kmsPurpose: "kubernetes-kms-v2"}

// kmsProbeContext binds the health probe's throwaway blobs, so that one
// can never pass for a Kubernetes ciphertext.
var kmsProbeContext = keys.Context{kmsPurpose: "kubernetes-kms-v2-health-probe"}

// kmsPurpose is the reserved context key naming what a blob of keywardd's
// own is for.
const kmsPurpose = keys.ReservedContextPrefix + "purpose"

// kmsMessageLimits replace max_message on the KMS socket (later options
// win): a KMS request is a few KiB at most (a 32-byte seed or a 1 KiB
// ciphertext, a uid, annotations of at most 32 KiB), so a caller cannot
// make keywardd hold max_message per call there.
var kmsMessageLimits = []grpc.ServerOption{grpc.MaxRecvMsgSize(kmsMaxMessage), grpc.MaxSendMsgSize(kmsMaxMessage)}

// kmsMaxMessage bounds a KMS request or reply.
const kmsMaxMessage = 64 << 10

// Limits of the KMS v2 contract and of this endpoint.
const (
	kmsMaxKeyID      = 1024 // the apiserver refuses longer
	kmsMaxCiphertext = 1024 // likewise
	// kmsMaxPlaintext keeps every ciphertext under kmsMaxCiphertext (an
	// envelope adds at most 13 + 128 + 4 + 1 + 12 + 16 bytes); the
	// apiserver sends 32.
	kmsMaxPlaintext = 512
	kmsMaxUID       = audit.MaxCallerRef
	kmsAPIVersion   = "v2"
	// kmsProbeMaxAge is how long a health probe's result stands: the
	// apiserver polls once a minute, and any caller of the socket may ask.
	kmsProbeMaxAge  = 10 * time.Second
	kmsProbeTimeout = 2 * time.Second // within the apiserver's 3 s
)

// kmsServer serves KeyManagementService for Service s with key.
type kmsServer struct {
	kmsapi.UnimplementedKeyManagementServiceServer
	s       *Service
	key     string
	now     func() time.Time // the probe cache's clock (tests move it)
	encrypt dataOp[*kmsapi.EncryptRequest, *kmsapi.EncryptResponse]
	decrypt dataOp[*kmsapi.DecryptRequest, *kmsapi.DecryptResponse]

	probing sync.Mutex // one probe at a time; Status callers wait for it
	mu      sync.Mutex // guards the fields below; never held across a device call
	gen     uint64     // bumped when the key changes: a result of an older generation is stale
	probed  time.Time  // when health was found; zero: none
	healthG uint64     // the generation health belongs to
	health  kmsHealth
}

// kmsHealth is the last probe's outcome: the current key_id, or why not.
type kmsHealth struct {
	keyID   string
	version uint32
	err     error
}

func newKMSServer(s *Service, key string) *kmsServer {
	k := &kmsServer{s: s, key: key, now: time.Now}
	k.encrypt = dataOp[*kmsapi.EncryptRequest, *kmsapi.EncryptResponse]{
		m:      kmsMethods["Encrypt"],
		target: func(r *kmsapi.EncryptRequest) opTarget { return opTarget{key: key, ref: r.GetUid()} },
		check:  func(_ *Service, r *kmsapi.EncryptRequest, _ opTarget) error { return checkEncrypt(r) },
		run: func(_ *Service, ctx context.Context, r *kmsapi.EncryptRequest, _ opTarget) (*kmsapi.EncryptResponse, error) {
			return k.wrapSeed(ctx, r)
		},
		recorded: func(_ *kmsapi.EncryptRequest, r *kmsapi.EncryptResponse, _ error) (uint32, string) {
			return kmsKeyIDVersion(key, r.GetKeyId()), ""
		},
	}
	k.decrypt = dataOp[*kmsapi.DecryptRequest, *kmsapi.DecryptResponse]{
		m: kmsMethods["Decrypt"],
		target: func(r *kmsapi.DecryptRequest) opTarget {
			t := blobTarget(r.GetCiphertext(), nil)
			t.ref = r.GetUid()
			return t
		},
		check: func(_ *Service, r *kmsapi.DecryptRequest, t opTarget) error { return k.checkDecrypt(r, t) },
		run: func(_ *Service, ctx context.Context, r *kmsapi.DecryptRequest, t opTarget) (*kmsapi.DecryptResponse, error) {
			return k.unwrapSeed(ctx, r, t)
		},
	}
	return k
}

// kmsKeyID is the key_id of version v of key info: its name and version,
// and a digest of both creation times, so that a key destroyed and made
// again under the same name never reports a key_id the apiserver has seen.
// Versions only grow, so a rotation never re-uses one either.
func kmsKeyID(info keys.KeyInfo, v uint32) (string, error) {
	vi, err := info.Version(v)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	h.Write([]byte("keyward kms key_id\x00"))
	h.Write([]byte(info.Name))
	h.Write(binary.BigEndian.AppendUint64(nil, uint64(info.Created.UnixNano())))
	h.Write(binary.BigEndian.AppendUint32(nil, v))
	h.Write(binary.BigEndian.AppendUint64(nil, uint64(vi.Created.UnixNano())))
	return "keyward:" + info.Name + ":v" + strconv.FormatUint(uint64(v), 10) + ":" + hex.EncodeToString(h.Sum(nil)[:8]), nil
}

// kmsKeyIDVersion reads the version out of a key_id of key: 0 when it is
// not one of kmsKeyID's for that key.
func kmsKeyIDVersion(key, keyID string) uint32 {
	rest, ok := strings.CutPrefix(keyID, "keyward:"+key+":v")
	if !ok {
		return 0
	}
	num, _, ok := strings.Cut(rest, ":")
	v, err := strconv.ParseUint(num, 10, 32)
	if !ok || err != nil {
		return 0
	}
	return uint32(v)
}

// keyIDOf is the key_id of version v of the key.
func (k *kmsServer) keyIDOf(ctx context.Context, v uint32) (string, error) {
	info, err := k.s.be.DescribeKey(ctx, k.key)
	if err != nil {
		return "", err
	}
	return kmsKeyID(info, v)
}

// checkUID refuses a request uid the audit record cannot hold.
func checkUID(uid string) error {
	if len(uid) > kmsMaxUID {
		return invalid("uid is %d bytes, at most %d", len(uid), kmsMaxUID)
	}
	return nil
}

// checkEncrypt refuses a seed the contract or the ciphertext limit refuse.
func checkEncrypt(r *kmsapi.EncryptRequest) error {
	if err := checkUID(r.GetUid()); err != nil {
		return err
	}
	if n := len(r.GetPlaintext()); n == 0 || n > kmsMaxPlaintext {
		return invalid("plaintext is %d bytes, want 1..%d", n, kmsMaxPlaintext)
	}
	return nil
}

// Encrypt wraps the apiserver's seed under the newest version of the key.
func (k *kmsServer) Encrypt(ctx context.Context, req *kmsapi.EncryptRequest) (*kmsapi.EncryptResponse, error) {
	return serve(k.s, ctx, &k.encrypt, req)
}

func (k *kmsServer) wrapSeed(ctx context.Context, r *kmsapi.EncryptRequest) (*kmsapi.EncryptResponse, error) {
	blob, err := k.s.be.Wrap(ctx, k.key, r.GetPlaintext(), kmsContext)
	if err != nil {
		return nil, err
	}
	h, _, err := envelope.Decode(blob)
	if err != nil {
		return nil, err
	}
	if len(blob) > kmsMaxCiphertext { // cannot happen with kmsMaxPlaintext; never send one the apiserver refuses
		return nil, fmt.Errorf("kms: ciphertext of %d bytes: %w", len(blob), keys.ErrInvalidArgument)
	}
	id, err := k.keyIDOf(ctx, h.Version)
	if err != nil {
		return nil, err
	}
	k.noteVersion(h.Version)
	return &kmsapi.EncryptResponse{Ciphertext: blob, KeyId: id}, nil
}

// Decrypt unwraps a ciphertext of the key, after checking that key_id is
// the one of the version the ciphertext names.
func (k *kmsServer) Decrypt(ctx context.Context, req *kmsapi.DecryptRequest) (*kmsapi.DecryptResponse, error) {
	return serve(k.s, ctx, &k.decrypt, req)
}

func (k *kmsServer) checkDecrypt(r *kmsapi.DecryptRequest, t opTarget) error {
	if err := checkUID(r.GetUid()); err != nil {
		return err
	}
	if n := len(r.GetKeyId()); n == 0 || n > kmsMaxKeyID {
		return invalid("key_id is %d bytes, want 1..%d", n, kmsMaxKeyID)
	}
	if n := len(r.GetCiphertext()); n == 0 || n > kmsMaxCiphertext {
		return invalid("ciphertext is %d bytes, want 1..%d", n, kmsMaxCiphertext)
	}
	if len(r.GetAnnotations()) > 0 {
		return invalid("annotations: this plugin sets none, so a ciphertext of its own has none")
	}
	if t.err != nil {
		return t.err // not a keyward envelope: MALFORMED_CIPHERTEXT
	}
	if t.key != k.key {
		return invalid("the ciphertext is not of this endpoint's key (kms_key)")
	}
	return nil
}

func (k *kmsServer) unwrapSeed(ctx context.Context, r *kmsapi.DecryptRequest, t opTarget) (*kmsapi.DecryptResponse, error) {
	want, err := k.keyIDOf(ctx, t.version)
	if err != nil {
		return nil, err
	}
	if r.GetKeyId() != want {
		return nil, invalid("key_id does not name the key version the ciphertext was made with")
	}
	u, err := k.s.be.Unwrap(ctx, r.GetCiphertext(), kmsContext)
	if err != nil {
		return nil, err
	}
	return &kmsapi.DecryptResponse{Plaintext: u.Plaintext}, nil
}

// noteVersion makes the next Status probe again when an Encrypt used a
// version other than the one the last probe saw (a rotation since).
func (k *kmsServer) noteVersion(v uint32) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.health.err == nil && k.health.version != v {
		k.gen++
	}
}

// invalidate drops the cached probe result when key is the KMS key: it
// changed (rotated, enabled, disabled, destroyed) through this daemon.
func (k *kmsServer) invalidate(key string) {
	if key != k.key {
		return
	}
	k.mu.Lock()
	k.gen++
	k.mu.Unlock()
}

// Status reports healthz "ok" only when a wrap and unwrap through the
// device succeeded within kmsProbeMaxAge and the caller may use the key;
// otherwise a short reason. key_id is the current version's.
func (k *kmsServer) Status(ctx context.Context, _ *kmsapi.StatusRequest) (*kmsapi.StatusResponse, error) {
	h := k.probe(ctx)
	out := &kmsapi.StatusResponse{Version: kmsAPIVersion, Healthz: "ok", KeyId: h.keyID}
	switch {
	case h.err != nil:
		out.Healthz = h.err.Error()
	default:
		if why := k.callerMayNot(ctx); why != "" {
			out.Healthz = why
		}
	}
	return out, nil
}

// callerMayNot says which operation the policy denies the caller on the
// key ("" for none): a revoked permission shows in the apiserver's health
// check, not only in its first failed write.
func (k *kmsServer) callerMayNot(ctx context.Context) string {
	id, ok := identityFrom(ctx)
	if !ok {
		return "not allowed"
	}
	pol := k.s.pol.Load()
	for _, op := range []policy.Operation{policy.OpKMSEncrypt, policy.OpKMSDecrypt} {
		if !pol.Decide(id, policy.Request{Op: op, Key: k.key}, k.s.reserved()).Allowed {
			return fmt.Sprintf("not allowed: uid %d may not %s with %s", id.UID, op, k.key)
		}
	}
	return ""
}

// errKMSProbe: the probe's plaintext did not come back.
var errKMSProbe = errors.New("health probe: unwrap returned other bytes")

// probe returns the last probe's result while it is fresh, else probes.
func (k *kmsServer) probe(ctx context.Context) kmsHealth {
	k.probing.Lock()
	defer k.probing.Unlock()
	k.mu.Lock()
	gen, last := k.gen, k.health
	fresh := !k.probed.IsZero() && k.healthG == gen && k.now().Sub(k.probed) < kmsProbeMaxAge
	k.mu.Unlock()
	if fresh {
		return last
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), kmsProbeTimeout)
	defer cancel()
	h := k.roundTrip(pctx)
	if h.err != nil {
		detail := h.err.Error()
		h.err = fmt.Errorf("kms_key %s: %s", k.key, messages[reasonOf(h.err)])
		h.keyID = last.keyID                                      // the last known, for the apiserver's log
		if last.err == nil || last.err.Error() != h.err.Error() { // said once per reason, not every 10 s
			k.s.log.Warn("kms health probe failed; Status reports unhealthy", "key", k.key, "err", detail)
		}
	} else if last.err != nil {
		k.s.log.Info("kms health probe succeeds again", "key", k.key, "key_id", h.keyID)
	}
	if h.err == nil && h.keyID != last.keyID {
		if last.keyID != "" {
			k.s.log.Info("kms key_id changed", "key", k.key, "version", h.version)
		}
		k.s.metrics.kmsKeyIDChanged()
	}
	k.mu.Lock()
	k.health, k.healthG, k.probed = h, gen, k.now()
	k.mu.Unlock()
	return h
}

// roundTrip wraps and unwraps a random probe through the device.
func (k *kmsServer) roundTrip(ctx context.Context) kmsHealth {
	probe := make([]byte, 32)
	rand.Read(probe)
	defer secretfile.Zero(probe)
	blob, err := k.s.be.Wrap(ctx, k.key, probe, kmsProbeContext)
	if err != nil {
		return kmsHealth{err: err}
	}
	u, err := k.s.be.Unwrap(ctx, blob, kmsProbeContext)
	if err != nil {
		return kmsHealth{err: err}
	}
	defer secretfile.Zero(u.Plaintext)
	if string(u.Plaintext) != string(probe) {
		return kmsHealth{err: fmt.Errorf("kms: %w: %w", errKMSProbe, keys.ErrIntegrity)}
	}
	id, err := k.keyIDOf(ctx, u.Version)
	if err != nil {
		return kmsHealth{err: err}
	}
	return kmsHealth{keyID: id, version: u.Version}
}
