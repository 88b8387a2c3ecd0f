package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/audit"
	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/keys/keystest"
	"github.com/keyward/keyward/policy"
	"github.com/keyward/keyward/socket"
)

// memTrail is an audit log in memory: the records as the service hands
// them over, durable at once.
type memTrail struct {
	mu   sync.Mutex
	recs []audit.Record
	fail error // set: every append fails, and the log is not accepting
}

func (m *memTrail) Append(ctx context.Context, r audit.Record) error {
	return m.AppendAll(ctx, []audit.Record{r})
}

func (m *memTrail) AppendAll(_ context.Context, rs []audit.Record) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return m.fail
	}
	m.recs = append(m.recs, rs...)
	return nil
}

func (m *memTrail) Accepting() bool { m.mu.Lock(); defer m.mu.Unlock(); return m.fail == nil }
func (m *memTrail) Status() (bool, error, int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.fail != nil, m.fail, 0
}
func (m *memTrail) ContextDigest(canonical []byte) [32]byte { return [32]byte{1} }
func (m *memTrail) SyncMode() audit.SyncMode                { return audit.SyncEach }
func (m *memTrail) Stats() audit.Stats                      { return audit.Stats{} }

// results lists each record as "op key result".
func (m *memTrail) results() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for _, r := range m.recs {
		out = append(out, r.Op+" "+r.Key+" "+r.Result)
	}
	return out
}

// countingMetrics counts denials by operation.
type countingMetrics struct {
	mu        sync.Mutex
	denied    map[policy.Operation]int
	kmsKeyIDs int
}

func (c *countingMetrics) deny(op policy.Operation) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.denied[op]++
}
func (c *countingMetrics) rateLimited(abuseKind)         {}
func (c *countingMetrics) refusedAtOpen(string)          {}
func (c *countingMetrics) verifyFailed(policy.Operation) {}
func (c *countingMetrics) kmsKeyIDChanged() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.kmsKeyIDs++
}

const memAppUID, memOtherUID = 1000, 2000

// memService is a Service on an in-memory backend with a trail and
// counters in memory: no device, no socket. uid memAppUID may wrap and
// create under app/.
func memService(t *testing.T) (*Service, *memTrail, *countingMetrics) {
	t.Helper()
	pol, err := policy.Compile([]policy.Rule{{Name: "app", UIDs: []uint32{memAppUID}, Keys: []string{"app/**"},
		Operations: []string{"wrap", "unwrap", "key.create"}}}, policy.SystemResolver())
	if err != nil {
		t.Fatal(err)
	}
	svc := NewService(keystest.NewMem(), "mem", "test", pol, config.Defaults().Limits, slog.New(slog.NewTextHandler(io.Discard, nil)))
	trail, m := &memTrail{}, &countingMetrics{denied: map[policy.Operation]int{}}
	svc.audit, svc.metrics = trail, m
	return svc, trail, m
}

// asUID is a call's context as the socket makes it for uid.
func asUID(uid uint32) context.Context {
	return peer.NewContext(context.Background(), &peer.Peer{AuthInfo: socket.AuthInfo{Peer: socket.Peer{UID: uid, GID: uid, PID: 7}}})
}

// through runs fn as the RPC method would be run: inside the audit
// interceptor, so that its records reach the trail.
func through[R any](svc *Service, ctx context.Context, method string, fn func(context.Context) (R, error)) (R, error) {
	var zero R
	ic := svc.auditInterceptor(svc.audit, nil)
	resp, err := ic(ctx, nil, &grpc.UnaryServerInfo{FullMethod: "/keyward.v1.Keyward/" + method},
		func(ctx context.Context, _ any) (any, error) { return fn(ctx) })
	if err != nil {
		return zero, err
	}
	return resp.(R), nil
}

// TestServiceAuthorizationMem: the policy decides per uid and key; a
// denial is PERMISSION_DENIED, counted by operation, and never reaches the
// backend.
func TestServiceAuthorizationMem(t *testing.T) {
	svc, _, m := memService(t)
	if _, err := svc.CreateKey(asUID(memAppUID), &pb.CreateKeyRequest{Key: "app/k", KeyType: string(keys.AES256GCM)}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		uid  uint32
		key  string
		want codes.Code
	}{
		{"allowed", memAppUID, "app/k", codes.OK},
		{"other uid", memOtherUID, "app/k", codes.PermissionDenied},
		{"key outside the rule", memAppUID, "ops/k", codes.PermissionDenied},
		{"invalid name", memAppUID, "../k", codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := svc.Wrap(asUID(tt.uid), &pb.WrapRequest{Key: tt.key, Plaintext: []byte("p")})
			if got := status.Code(err); got != tt.want {
				t.Fatalf("Wrap = %v, want %v", err, tt.want)
			}
			if tt.want == codes.OK && len(resp.GetCiphertext()) == 0 {
				t.Fatal("no ciphertext")
			}
		})
	}
	if m.denied[policy.OpWrap] != 2 {
		t.Errorf("denied wrap counted %d times, want 2", m.denied[policy.OpWrap])
	}
}

// TestServiceAuditRecordsMem: every operation leaves its record, a key
// change an intent record (STARTED) before it; a trail that cannot be
// written refuses the call before it acts.
func TestServiceAuditRecordsMem(t *testing.T) {
	svc, trail, _ := memService(t)
	app, other := asUID(memAppUID), asUID(memOtherUID)
	_, err := through(svc, app, "CreateKey", func(ctx context.Context) (*pb.KeyInfo, error) {
		return svc.CreateKey(ctx, &pb.CreateKeyRequest{Key: "app/k", KeyType: string(keys.AES256GCM)})
	})
	if err != nil {
		t.Fatal(err)
	}
	wrap := func(ctx context.Context, key string) error {
		_, err := through(svc, ctx, "Wrap", func(ctx context.Context) (*pb.WrapResponse, error) {
			return svc.Wrap(ctx, &pb.WrapRequest{Key: key, Plaintext: []byte("p"), Context: map[string]string{"app": "web"}})
		})
		return err
	}
	if err := wrap(app, "app/k"); err != nil {
		t.Fatal(err)
	}
	if err := wrap(other, "app/k"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("other uid: %v, want PermissionDenied", err)
	}
	want := []string{"key.create app/k STARTED", "key.create app/k OK", "wrap app/k OK", "wrap app/k PERMISSION_DENIED"}
	if got := trail.results(); !slices.Equal(got, want) {
		t.Fatalf("trail:\n%q\nwant:\n%q", got, want)
	}
	trail.mu.Lock()
	ok, denied := trail.recs[2], trail.recs[3]
	trail.mu.Unlock()
	if ok.Peer.UID != memAppUID || !ok.ContextKeyed || ok.RequestID == "" {
		t.Errorf("wrap record = %+v, want uid %d, a keyed context digest and a request id", ok, memAppUID)
	}
	if denied.Peer.UID != memOtherUID || denied.Reason == "" {
		t.Errorf("denied record = %+v, want uid %d and the policy's reason", denied, memOtherUID)
	}

	trail.mu.Lock()
	trail.fail = errors.New("disk full")
	trail.mu.Unlock()
	if err := wrap(app, "app/k"); reasonOfStatus(err) != pb.ErrorReason_AUDIT_UNAVAILABLE.String() {
		t.Fatalf("wrap with a failing trail: %v, want AUDIT_UNAVAILABLE", err)
	}
}

// TestServiceBatchItemsMem: a batch's items are decided and recorded one by
// one; one item's refusal does not fail the others.
func TestServiceBatchItemsMem(t *testing.T) {
	svc, trail, _ := memService(t)
	app := asUID(memAppUID)
	if _, err := svc.CreateKey(app, &pb.CreateKeyRequest{Key: "app/k", KeyType: string(keys.AES256GCM)}); err != nil {
		t.Fatal(err)
	}
	resp, err := through(svc, app, "BatchWrap", func(ctx context.Context) (*pb.BatchWrapResponse, error) {
		return svc.BatchWrap(ctx, &pb.BatchWrapRequest{Items: []*pb.WrapRequest{
			{Key: "app/k", Plaintext: []byte("a")},
			{Key: "ops/k", Plaintext: []byte("b")},
			{Key: "app/missing", Plaintext: []byte("c")},
			{Key: "app/k", Plaintext: []byte("d")},
		}})
	})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range resp.GetResults() {
		if e := r.GetError(); e != nil {
			got = append(got, e.GetReason().String())
		} else {
			got = append(got, "OK")
		}
	}
	want := []string{"OK", "PERMISSION_DENIED", "KEY_NOT_FOUND", "OK"}
	if !slices.Equal(got, want) {
		t.Fatalf("items = %q, want %q", got, want)
	}
	wantTrail := []string{"wrap app/k OK", "wrap ops/k PERMISSION_DENIED", "wrap app/missing KEY_NOT_FOUND", "wrap app/k OK"}
	if got := trail.results(); !slices.Equal(got, wantTrail) {
		t.Fatalf("trail:\n%q\nwant:\n%q", got, wantTrail)
	}
}

// reasonOfStatus is the ErrorReason a status error carries.
func reasonOfStatus(err error) string {
	if err == nil {
		return "OK"
	}
	return resultOf(err)
}
