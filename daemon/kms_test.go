package daemon

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/keys/keystest"
	"github.com/keyward/keyward/policy"
)

const memKMSKey = "k8s/etcd"

// kmsMem is a KMS endpoint on an in-memory backend: uid memAppUID is the
// apiserver (kms.encrypt, kms.decrypt on k8s/etcd), memOtherUID manages
// keys and may wrap and unwrap with every key, but has no KMS operation.
func kmsMem(t testing.TB) (*kmsServer, *memTrail, *countingMetrics, *time.Time) {
	t.Helper()
	pol, err := policy.Compile([]policy.Rule{
		{Name: "apiserver", UIDs: []uint32{memAppUID}, Keys: []string{memKMSKey}, Operations: []string{"kms.encrypt", "kms.decrypt"}},
		{Name: "admin", UIDs: []uint32{memOtherUID}, Keys: []string{"**"},
			Operations: []string{"key.create", "key.rotate", "key.read", "key.disable", "wrap", "unwrap"}},
	}, policy.SystemResolver())
	if err != nil {
		t.Fatal(err)
	}
	svc := NewService(keystest.NewMem(), "mem", "test", pol, config.Defaults().Limits, slog.New(slog.NewTextHandler(io.Discard, nil)))
	trail, m := &memTrail{}, &countingMetrics{denied: map[policy.Operation]int{}}
	svc.audit, svc.metrics = trail, m
	k := newKMSServer(svc, memKMSKey)
	svc.kms = k
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	k.now = func() time.Time { return now }
	return k, trail, m, &now
}

// kmsCall runs fn as the KMS method would be run, inside the audit
// interceptor.
func kmsCall[R any](k *kmsServer, ctx context.Context, method string, fn func(context.Context) (R, error)) (R, error) {
	var zero R
	ic := k.s.auditInterceptor(k.s.audit, nil)
	resp, err := ic(ctx, nil, &grpc.UnaryServerInfo{FullMethod: kmsService + method},
		func(ctx context.Context, _ any) (any, error) { return fn(ctx) })
	if err != nil {
		return zero, err
	}
	return resp.(R), nil
}

func memAdmin(t *testing.T, k *kmsServer, op string, key string) {
	t.Helper()
	ctx := asUID(memOtherUID)
	var err error
	switch op {
	case "create":
		_, err = k.s.CreateKey(ctx, &pb.CreateKeyRequest{Key: key, KeyType: string(keys.AES256GCM)})
	case "rotate":
		_, err = k.s.RotateKey(ctx, &pb.RotateKeyRequest{Key: key})
	}
	if err != nil {
		t.Fatalf("%s %s: %v", op, key, err)
	}
}

// TestKMSEncryptDecryptMem: a seed comes back from its ciphertext; key_id
// names the key and version and changes with a rotation; old ciphertexts
// still decrypt with their own key_id; every call is recorded with the
// request uid.
func TestKMSEncryptDecryptMem(t *testing.T) {
	k, trail, _, _ := kmsMem(t)
	memAdmin(t, k, "create", memKMSKey)
	app := asUID(memAppUID)
	seed := []byte("0123456789abcdef0123456789abcdef")
	enc, err := kmsCall(k, app, "Encrypt", func(ctx context.Context) (*kmsapi.EncryptResponse, error) {
		return k.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: append([]byte(nil), seed...), Uid: "uid-1"})
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(enc.KeyId, "keyward:k8s/etcd:v1:") || len(enc.Ciphertext) > kmsMaxCiphertext || len(enc.Annotations) != 0 {
		t.Fatalf("Encrypt = key_id %q, %d bytes, annotations %v", enc.KeyId, len(enc.Ciphertext), enc.Annotations)
	}
	memAdmin(t, k, "rotate", memKMSKey)
	enc2, err := k.Encrypt(app, &kmsapi.EncryptRequest{Plaintext: append([]byte(nil), seed...)})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(enc2.KeyId, "keyward:k8s/etcd:v2:") || enc2.KeyId == enc.KeyId {
		t.Fatalf("after rotate key_id %q (before %q)", enc2.KeyId, enc.KeyId)
	}
	for _, e := range []*kmsapi.EncryptResponse{enc, enc2} {
		dec, err := kmsCall(k, app, "Decrypt", func(ctx context.Context) (*kmsapi.DecryptResponse, error) {
			return k.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: e.Ciphertext, KeyId: e.KeyId, Uid: "uid-2"})
		})
		if err != nil || string(dec.GetPlaintext()) != string(seed) {
			t.Fatalf("Decrypt(%s) = %q, %v", e.KeyId, dec.GetPlaintext(), err)
		}
	}
	trail.mu.Lock()
	defer trail.mu.Unlock()
	var got []string
	for _, r := range trail.recs {
		got = append(got, r.Op+" "+r.Key+" "+r.Result+" "+r.CallerRef)
		if r.Op == "kms.decrypt" && r.Version == 0 {
			t.Errorf("decrypt record without its version: %+v", r)
		}
	}
	want := "kms.encrypt k8s/etcd OK uid-1|kms.decrypt k8s/etcd OK uid-2|kms.decrypt k8s/etcd OK uid-2"
	if strings.Join(got, "|") != want {
		t.Fatalf("trail %q, want %q", strings.Join(got, "|"), want)
	}
}

// TestKMSKeyIDNeverReused: a key destroyed and made again under the same
// name gets other key_ids than the first one's versions of the same number.
func TestKMSKeyIDNeverReused(t *testing.T) {
	created := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	a := keys.KeyInfo{Name: "k8s/etcd", Created: created, Versions: []keys.VersionInfo{{Version: 1, Created: created}}}
	b := a
	b.Created = created.Add(time.Hour)
	b.Versions = []keys.VersionInfo{{Version: 1, Created: b.Created}}
	ia, err := kmsKeyID(a, 1)
	if err != nil {
		t.Fatal(err)
	}
	ib, _ := kmsKeyID(b, 1)
	if ia == ib {
		t.Fatalf("two incarnations of a key share key_id %q", ia)
	}
	if v := kmsKeyIDVersion("k8s/etcd", ia); v != 1 {
		t.Fatalf("version of %q = %d", ia, v)
	}
	if _, err := kmsKeyID(a, 2); err == nil {
		t.Fatal("key_id of a version that does not exist")
	}
}

// TestKMSMalformedMem: requests the contract or the key refuse get
// INVALID_ARGUMENT (MALFORMED_CIPHERTEXT for a blob that is no envelope)
// with the reason, and leave a record.
func TestKMSMalformedMem(t *testing.T) {
	k, trail, _, _ := kmsMem(t)
	memAdmin(t, k, "create", memKMSKey)
	memAdmin(t, k, "create", "other/key")
	app := asUID(memAppUID)
	enc, err := k.Encrypt(app, &kmsapi.EncryptRequest{Plaintext: make([]byte, 32)})
	if err != nil {
		t.Fatal(err)
	}
	// A blob of another key with the KMS context (the API refuses the
	// reserved context: made through the backend, as keywardd could).
	otherBlob, err := k.s.be.Wrap(context.Background(), "other/key", make([]byte, 32), kmsContext)
	if err != nil {
		t.Fatal(err)
	}
	other := &pb.WrapResponse{Ciphertext: otherBlob}
	tampered := append([]byte(nil), enc.Ciphertext...)
	tampered[len(tampered)-1] ^= 1
	long := strings.Repeat("k", kmsMaxKeyID+1)
	tests := []struct {
		name string
		req  *kmsapi.DecryptRequest
		want string // in the message
		code codes.Code
	}{
		{"key_id over 1 KiB", &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: long}, "key_id is 1025 bytes", codes.InvalidArgument},
		{"no key_id", &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext}, "key_id is 0 bytes", codes.InvalidArgument},
		{"no ciphertext", &kmsapi.DecryptRequest{KeyId: enc.KeyId}, "ciphertext is 0 bytes", codes.InvalidArgument},
		{"ciphertext over 1 KiB", &kmsapi.DecryptRequest{Ciphertext: make([]byte, 1025), KeyId: enc.KeyId}, "ciphertext is 1025 bytes", codes.InvalidArgument},
		{"foreign ciphertext", &kmsapi.DecryptRequest{Ciphertext: []byte("k8s:enc:aescbc:v1:key1:garbage"), KeyId: enc.KeyId}, "malformed ciphertext", codes.InvalidArgument},
		{"ciphertext of another key", &kmsapi.DecryptRequest{Ciphertext: other.Ciphertext, KeyId: enc.KeyId}, "not of this endpoint's key", codes.InvalidArgument},
		{"key_id of another version", &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: strings.Replace(enc.KeyId, ":v1:", ":v2:", 1)}, "key_id does not name", codes.InvalidArgument},
		{"annotations", &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId, Annotations: map[string][]byte{"a.example.com": nil}}, "annotations", codes.InvalidArgument},
		{"uid too long", &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId, Uid: strings.Repeat("u", kmsMaxUID+1)}, "uid is", codes.InvalidArgument},
		{"tampered", &kmsapi.DecryptRequest{Ciphertext: tampered, KeyId: enc.KeyId}, "decryption failed", codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			trail.mu.Lock()
			before := len(trail.recs)
			trail.mu.Unlock()
			_, err := kmsCall(k, app, "Decrypt", func(ctx context.Context) (*kmsapi.DecryptResponse, error) { return k.Decrypt(ctx, tt.req) })
			st, _ := status.FromError(err)
			if st.Code() != tt.code || !strings.Contains(st.Message(), tt.want) {
				t.Fatalf("Decrypt = %v, want %v with %q", err, tt.code, tt.want)
			}
			trail.mu.Lock()
			defer trail.mu.Unlock()
			if len(trail.recs) != before+1 || trail.recs[before].Op != "kms.decrypt" {
				t.Fatalf("records %v, want one kms.decrypt more", trail.recs[before:])
			}
		})
	}
	for _, n := range []int{0, kmsMaxPlaintext + 1} {
		if _, err := k.Encrypt(app, &kmsapi.EncryptRequest{Plaintext: make([]byte, n)}); status.Code(err) != codes.InvalidArgument {
			t.Errorf("Encrypt of %d bytes = %v, want InvalidArgument", n, err)
		}
	}
}

// TestKMSDeniedMem: a uid without kms.encrypt/kms.decrypt is refused (even
// one that may wrap and unwrap with the key), and the refusal is recorded.
func TestKMSDeniedMem(t *testing.T) {
	k, trail, m, _ := kmsMem(t)
	memAdmin(t, k, "create", memKMSKey)
	enc, err := k.Encrypt(asUID(memAppUID), &kmsapi.EncryptRequest{Plaintext: make([]byte, 32)})
	if err != nil {
		t.Fatal(err)
	}
	other := asUID(memOtherUID)
	_, err = kmsCall(k, other, "Encrypt", func(ctx context.Context) (*kmsapi.EncryptResponse, error) {
		return k.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: make([]byte, 32), Uid: "denied-1"})
	})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("Encrypt by another uid = %v", err)
	}
	_, err = kmsCall(k, other, "Decrypt", func(ctx context.Context) (*kmsapi.DecryptResponse, error) {
		return k.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId, Uid: "denied-2"})
	})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("Decrypt by another uid = %v", err)
	}
	trail.mu.Lock()
	defer trail.mu.Unlock()
	var got []string
	for _, r := range trail.recs {
		if r.Peer.UID == memOtherUID && strings.HasPrefix(r.Op, "kms.") {
			got = append(got, r.Op+" "+r.Key+" "+r.Result+" "+r.CallerRef)
		}
	}
	want := "kms.encrypt k8s/etcd PERMISSION_DENIED denied-1|kms.decrypt k8s/etcd PERMISSION_DENIED denied-2"
	if strings.Join(got, "|") != want {
		t.Fatalf("records %q, want %q", strings.Join(got, "|"), want)
	}
	if m.denied[policy.OpKMSEncrypt] != 1 || m.denied[policy.OpKMSDecrypt] != 1 {
		t.Fatalf("denials counted %v", m.denied)
	}
}

// TestKMSStatusMem: healthz is ok only after a probe through the backend;
// the result stands kmsProbeMaxAge (an injected clock), a rotation through
// the daemon shows at once, a missing key and a caller without the
// operations are reported, and each new key_id is counted.
func TestKMSStatusMem(t *testing.T) {
	k, _, m, now := kmsMem(t)
	app := asUID(memAppUID)
	st, err := k.Status(app, &kmsapi.StatusRequest{})
	if err != nil || st.Version != "v2" || st.Healthz == "ok" || !strings.Contains(st.Healthz, "not found") {
		t.Fatalf("Status before the key exists = %+v, %v", st, err)
	}
	memAdmin(t, k, "create", memKMSKey) // invalidates the cached failure
	st, _ = k.Status(app, &kmsapi.StatusRequest{})
	if st.Healthz != "ok" || !strings.HasPrefix(st.KeyId, "keyward:k8s/etcd:v1:") {
		t.Fatalf("Status = %+v", st)
	}
	v1 := st.KeyId
	// A rotation the daemon did not see (another daemon on the token) shows
	// once the probe's result is older than kmsProbeMaxAge.
	if _, err := k.s.be.RotateKey(context.Background(), memKMSKey); err != nil {
		t.Fatal(err)
	}
	if st, _ = k.Status(app, &kmsapi.StatusRequest{}); st.KeyId != v1 {
		t.Fatalf("Status within the cache = %q, want the cached %q", st.KeyId, v1)
	}
	*now = now.Add(kmsProbeMaxAge)
	st, _ = k.Status(app, &kmsapi.StatusRequest{})
	if !strings.HasPrefix(st.KeyId, "keyward:k8s/etcd:v2:") || st.Healthz != "ok" {
		t.Fatalf("Status after expiry = %+v", st)
	}
	memAdmin(t, k, "rotate", memKMSKey) // through the daemon: at once
	if st, _ = k.Status(app, &kmsapi.StatusRequest{}); !strings.HasPrefix(st.KeyId, "keyward:k8s/etcd:v3:") {
		t.Fatalf("Status after a rotation through the daemon = %+v", st)
	}
	if m.kmsKeyIDs != 3 {
		t.Fatalf("key_id changes counted %d, want 3", m.kmsKeyIDs)
	}
	st, _ = k.Status(asUID(memOtherUID), &kmsapi.StatusRequest{})
	if st.Healthz != "not allowed: uid 2000 may not kms.encrypt with k8s/etcd" {
		t.Fatalf("Status to a uid without the operations = %+v", st)
	}
	if _, err := k.s.SetVersionState(asUID(memOtherUID), &pb.SetVersionStateRequest{Key: memKMSKey, Version: 3, State: pb.VersionState_DISABLED}); err != nil {
		t.Fatal(err)
	}
	if st, _ = k.Status(app, &kmsapi.StatusRequest{}); !strings.HasPrefix(st.KeyId, "keyward:k8s/etcd:v2:") || st.Healthz != "ok" {
		t.Fatalf("Status after disabling the newest version = %+v", st)
	}
}

// TestKMSMethodTable: every RPC of the KMS v2 service has an entry in
// kmsMethods and every entry an RPC; a data entry has its own operation, and
// a full method name finds its own service's entry (both have a Status).
func TestKMSMethodTable(t *testing.T) {
	var rpcs []string
	for _, md := range kmsapi.KeyManagementService_ServiceDesc.Methods {
		rpcs = append(rpcs, md.MethodName)
		m := methodFor(kmsService + md.MethodName)
		if m == nil {
			t.Errorf("KMS RPC %s is not in kmsMethods", md.MethodName)
			continue
		}
		if m.kind == kindData && (m.op == "" || m.audit != string(m.op) || m.op.Admin()) {
			t.Errorf("%s: entry %+v", md.MethodName, *m)
		}
	}
	if len(kmsapi.KeyManagementService_ServiceDesc.Streams) != 0 || len(rpcs) != len(kmsMethods) {
		t.Errorf("KMS service has %v (and %d streams), the table %d entries", rpcs, len(kmsapi.KeyManagementService_ServiceDesc.Streams), len(kmsMethods))
	}
	if kmsService != "/"+kmsapi.KeyManagementService_ServiceDesc.ServiceName+"/" {
		t.Errorf("kmsService %q, the descriptor's %q", kmsService, kmsapi.KeyManagementService_ServiceDesc.ServiceName)
	}
	if methodFor(kmsService+"Status") == methodFor(keywardService+"Status") || methodOp(kmsService+"Encrypt") != "kms.encrypt" ||
		methodOp("/other.Service/Encrypt") != "unknown" || metricName(kmsService+"Status") != "kms.Status" {
		t.Error("full method names do not find their own service's entries")
	}
}

// FuzzKMSDecrypt: whatever a caller sends to Decrypt, the endpoint answers
// with the plaintext of a genuine ciphertext or a refusal from the closed
// set, never a panic.
func FuzzKMSDecrypt(f *testing.F) {
	k, _, _, _ := kmsMem(f)
	ctx := asUID(memOtherUID)
	if _, err := k.s.CreateKey(ctx, &pb.CreateKeyRequest{Key: memKMSKey, KeyType: string(keys.AES256GCM)}); err != nil {
		f.Fatal(err)
	}
	enc, err := k.Encrypt(asUID(memAppUID), &kmsapi.EncryptRequest{Plaintext: []byte("seed")})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(enc.Ciphertext, enc.KeyId, "uid")
	f.Add([]byte("KWv1"), "keyward:k8s/etcd:v1:", "")
	f.Add(enc.Ciphertext[:len(enc.Ciphertext)/2], enc.KeyId+"0", strings.Repeat("u", 300))
	f.Fuzz(func(t *testing.T, blob []byte, keyID, uid string) {
		resp, err := k.Decrypt(asUID(memAppUID), &kmsapi.DecryptRequest{Ciphertext: blob, KeyId: keyID, Uid: uid})
		switch status.Code(err) {
		case codes.OK:
			if string(resp.GetPlaintext()) != "seed" || keyID != enc.KeyId {
				t.Fatalf("Decrypt accepted key_id %q and returned %q", keyID, resp.GetPlaintext())
			}
		case codes.InvalidArgument, codes.NotFound, codes.FailedPrecondition:
		default:
			t.Fatalf("Decrypt = %v", err)
		}
	})
}

// probeGate holds the health probe's wraps until the test releases them,
// and counts them.
type probeGate struct {
	keys.Backend
	mu      sync.Mutex
	held    chan struct{} // non-nil: probe wraps wait for it to close
	entered chan struct{}
	probes  int
}

func (g *probeGate) Wrap(ctx context.Context, name string, pt []byte, c keys.Context) ([]byte, error) {
	if c[kmsPurpose] == kmsProbeContext[kmsPurpose] {
		g.mu.Lock()
		g.probes++
		held, entered := g.held, g.entered
		g.mu.Unlock()
		if held != nil {
			entered <- struct{}{}
			<-held
		}
	}
	return g.Backend.Wrap(ctx, name, pt, c)
}

// TestKMSProbeGenerations: a probe holds no lock that Encrypt needs, and a
// key change made while a probe is in flight makes its result stale: the
// next Status probes again.
func TestKMSProbeGenerations(t *testing.T) {
	k, _, _, _ := kmsMem(t)
	memAdmin(t, k, "create", memKMSKey)
	g := &probeGate{Backend: k.s.be, held: make(chan struct{}), entered: make(chan struct{}, 1)}
	k.s.be = g
	app := asUID(memAppUID)
	done := make(chan *kmsapi.StatusResponse)
	go func() {
		st, _ := k.Status(app, &kmsapi.StatusRequest{})
		done <- st
	}()
	<-g.entered // the probe is in the device
	if _, err := k.Encrypt(app, &kmsapi.EncryptRequest{Plaintext: make([]byte, 32)}); err != nil {
		t.Fatalf("Encrypt during a probe: %v", err)
	}
	memAdmin(t, k, "rotate", memKMSKey)
	g.mu.Lock()
	held := g.held
	g.held = nil
	g.mu.Unlock()
	close(held)
	if st := <-done; st.Healthz != "ok" {
		t.Fatalf("Status = %+v", st)
	}
	st, _ := k.Status(app, &kmsapi.StatusRequest{})
	g.mu.Lock()
	probes := g.probes
	g.mu.Unlock()
	if probes != 2 || !strings.HasPrefix(st.KeyId, "keyward:k8s/etcd:v2:") {
		t.Fatalf("after a rotation during a probe: %d probes, key_id %q; want 2 and v2", probes, st.KeyId)
	}
}
