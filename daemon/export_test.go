package daemon

import (
	"context"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/keyward/keyward/audit"
	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/credstore"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/keys/keystest"
	"github.com/keyward/keyward/policy"
)

// CredHarness is a credential server on the in-memory backend and an
// in-memory audit trail, serving a real Unix socket, for the external
// tests whose requesters run in unit cgroups. Its audit can be stalled and
// its timeouts shortened: the server instance's own hooks.
type CredHarness struct {
	Sock  string
	Dir   string // the credential store
	cs    *credServer
	trail *stallTrail
}

// stallTrail is memTrail with an optional step run before each append.
type stallTrail struct {
	memTrail
	mu    sync.Mutex
	stall func(context.Context, string) error
}

func (s *stallTrail) Append(ctx context.Context, r audit.Record) error {
	s.mu.Lock()
	f := s.stall
	s.mu.Unlock()
	if f != nil {
		if err := f(ctx, r.Result); err != nil {
			return err
		}
	}
	return s.memTrail.Append(ctx, r)
}

// CredOptions are a CredHarness server's hooks, set before it serves.
type CredOptions struct {
	// Listen, when set, wraps the listener the server accepts on.
	Listen func(net.Listener) net.Listener
	// Work, Write and Refuse replace the work, answer-write and
	// busy-refusal bounds when not zero.
	Work, Write, Refuse time.Duration
	// BeforeWrite runs after a request's work, before its answer is written.
	BeforeWrite func()
}

// NewCredHarness serves credentials under rules on a socket in dir.
func NewCredHarness(t *testing.T, dir string, rules []policy.Rule, o CredOptions) *CredHarness {
	t.Helper()
	pol, err := policy.Compile(rules, policy.SystemResolver())
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	svc := NewService(keystest.NewMem(), "mem", "test", pol, config.Defaults().Limits, log)
	h := &CredHarness{Sock: filepath.Join(dir, "credentials.sock"), Dir: filepath.Join(dir, "credstore"), trail: &stallTrail{}}
	svc.audit = h.trail
	store := credstore.New(h.Dir)
	svc.creds = store
	l, err := net.Listen("unix", h.Sock)
	if err != nil {
		t.Fatal(err)
	}
	if o.Listen != nil {
		l = o.Listen(l)
	}
	h.cs = newCredServer(svc, store, h.trail, nil, nil, log)
	for _, d := range []struct {
		to   *time.Duration
		from time.Duration
	}{{&h.cs.timeout, o.Work}, {&h.cs.writeTimeout, o.Write}, {&h.cs.refuseTimeout, o.Refuse}} {
		if d.from != 0 {
			*d.to = d.from
		}
	}
	h.cs.beforeWrite = o.BeforeWrite
	done := make(chan struct{})
	go func() { h.cs.serve(l); close(done) }()
	t.Cleanup(func() { l.Close(); <-done })
	return h
}

// Put stores secret as credential id of unit, wrapped with key (made when
// missing), as credential put does.
func (h *CredHarness) Put(t *testing.T, unit, id, key string, secret []byte) {
	t.Helper()
	ctx := context.Background()
	if _, err := h.cs.svc.be.DescribeKey(ctx, key); err != nil {
		if _, err := h.cs.svc.be.CreateKey(ctx, key, keys.AES256GCM); err != nil {
			t.Fatal(err)
		}
	}
	blob, err := h.cs.svc.be.Wrap(ctx, key, secret, credstore.Context(unit, id))
	if err != nil {
		t.Fatal(err)
	}
	if err := h.cs.store.Write(unit, id, blob, true); err != nil {
		t.Fatal(err)
	}
}

// StallAudit runs f with each record's result before its audit append
// (nil: none); an error from f fails the append.
func (h *CredHarness) StallAudit(f func(context.Context, string) error) {
	h.trail.mu.Lock()
	h.trail.stall = f
	h.trail.mu.Unlock()
}

// Records lists the audit records as "op key result".
func (h *CredHarness) Records() []string { return h.trail.results() }

// Counted is keyward_credential_requests_total{result}.
func (h *CredHarness) Counted(result string) float64 {
	var m dto.Metric
	h.cs.results.WithLabelValues(result).Write(&m)
	return m.GetCounter().GetValue()
}
