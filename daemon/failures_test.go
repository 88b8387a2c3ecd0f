package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/keyward/keyward/audit"
	"github.com/keyward/keyward/internal/testutil"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/socket"
)

// TestCallerGaveUp: an operation whose caller cancelled while it waited (for
// a PKCS#11 session, say) is recorded CANCELLED and logged at debug, not as
// BACKEND_UNAVAILABLE at ERROR; a deadline of the daemon's own, with the
// caller still waiting, stays a backend failure.
func TestCallerGaveUp(t *testing.T) {
	// hsm's error while waiting for a session, with the caller's context.
	sessionWait := func(ctx context.Context) error { return fmt.Errorf("waiting for a pkcs11 session: %w", ctx.Err()) }
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel2 := context.WithDeadline(context.Background(), time.Unix(1, 0))
	defer cancel2()
	cases := []struct {
		name       string
		ctx        context.Context
		err        error
		code       codes.Code
		result     string
		errorLines int
	}{
		{"cancelled", cancelled, sessionWait(cancelled), codes.Canceled, ResultCancelled, 0},
		{"deadline passed", expired, sessionWait(expired), codes.Canceled, ResultCancelled, 0},
		{"device timeout, caller waiting", context.Background(), fmt.Errorf("C_Encrypt: %w: %w", keys.ErrUnavailable, context.DeadlineExceeded),
			codes.Unavailable, "BACKEND_UNAVAILABLE", 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var logs testutil.SyncBuffer
			s := &Service{log: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
			if got := status.Code(s.fail(c.ctx, "wrap", c.err)); got != c.code {
				t.Errorf("code %v, want %v", got, c.code)
			}
			if n := strings.Count(logs.String(), "level=ERROR"); n != c.errorLines {
				t.Errorf("%d ERROR lines, want %d:\n%s", n, c.errorLines, logs.String())
			}
			cl := &call{}
			auditOp(context.WithValue(c.ctx, callKey{}, cl), "wrap", "k", 0, nil, "", time.Now(), c.err)
			if len(cl.recs) != 1 || cl.recs[0].Result != c.result {
				t.Errorf("audit records %+v, want one with result %s", cl.recs, c.result)
			}
		})
	}
}

// TestBackendOutageLoggedOnce: while the backend stays unavailable the log
// says so once, not once per failed call; the first call that succeeds
// after says how many failed; the next outage is said again.
func TestBackendOutageLoggedOnce(t *testing.T) {
	var logs testutil.SyncBuffer
	s := &Service{log: slog.New(slog.NewTextHandler(&logs, nil))}
	ctx := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: socket.AuthInfo{Peer: socket.Peer{UID: 7}}})
	ic := s.interceptor(&atomicBool{})
	info := &grpc.UnaryServerInfo{FullMethod: "/keyward.v1.Keyward/Wrap"}
	down := func(ctx context.Context, _ any) (any, error) {
		return nil, s.fail(ctx, "wrap", fmt.Errorf("C_OpenSession: CKR_TOKEN_NOT_PRESENT: %w", keys.ErrUnavailable))
	}
	up := func(context.Context, any) (any, error) { return "ok", nil }
	for range 500 {
		ic(ctx, nil, info, down)
	}
	if n := strings.Count(logs.String(), "level=ERROR"); n != 1 {
		t.Fatalf("%d ERROR lines for 500 failed calls, want 1:\n%s", n, logs.String())
	}
	ic(ctx, nil, info, up)
	ic(ctx, nil, info, up)
	if !strings.Contains(logs.String(), `msg="key backend answers again" failed_calls=500`) || strings.Count(logs.String(), "answers again") != 1 {
		t.Fatalf("recovery not said once with its count:\n%s", logs.String())
	}
	ic(ctx, nil, info, down)
	if n := strings.Count(logs.String(), "level=ERROR"); n != 2 {
		t.Fatalf("a second outage: %d ERROR lines, want 2", n)
	}
}

// TestBusyKeyIsNoOutage: a key change refused because another writer holds
// the key (keys.ErrBusy: the device answered) is a WARN that names the
// claim and the doctor, not an outage of the backend; the caller gets
// BACKEND_UNAVAILABLE (retry later) all the same.
func TestBusyKeyIsNoOutage(t *testing.T) {
	var logs testutil.SyncBuffer
	s := &Service{log: slog.New(slog.NewTextHandler(&logs, nil))}
	err := s.fail(context.Background(), "key.rotate", fmt.Errorf("rotate k: claimed by another writer: %w", keys.ErrBusy))
	if st, _ := status.FromError(err); st.Code() != codes.Unavailable {
		t.Errorf("status %v, want Unavailable", err)
	}
	l := logs.String()
	if strings.Contains(l, "level=ERROR") || s.health.down.Load() || !strings.Contains(l, "level=WARN") || !strings.Contains(l, "doctor lists claims") {
		t.Errorf("log:\n%s(backend down: %v)", l, s.health.down.Load())
	}
}

// TestRefusalSummaries: refusals are counted per caller and result; take
// writes one record each, the most refused first, folds callers beyond the
// budget into one MIXED record, and starts afresh.
func TestRefusalSummaries(t *testing.T) {
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	r := newRefusals(func() time.Time { now = now.Add(time.Second); return now })
	web := audit.Peer{UID: 1000, GID: 1000, PID: 1, Unit: "web.service"}
	batch := audit.Peer{UID: 1000, GID: 1000, PID: 2, Unit: "batch.service"}
	other := audit.Peer{UID: 1001, GID: 1001, PID: 3}
	for range 5 {
		r.note(web, "wrap", "RATE_LIMITED")
	}
	r.note(web, "unwrap", "RATE_LIMITED")
	r.note(web, "wrap", "TOO_MANY_REQUESTS")
	r.note(batch, "mac", "RATE_LIMITED")
	r.note(other, "connect", ResultConnLimit)
	recs := r.take(3)
	var got []string
	for _, rec := range recs {
		if rec.Op != OpRefused {
			t.Errorf("op %q", rec.Op)
		}
		got = append(got, fmt.Sprintf("%d %s %s %s %v", rec.Peer.UID, rec.Peer.Unit, rec.Result, rec.Reason, rec.Duration))
	}
	want := []string{
		"1000 web.service RATE_LIMITED count=6 ops=unwrap:1,wrap:5 first=2026-12-01T10:00:01Z last=2026-12-01T10:00:06Z 5s",
		"1000 batch.service RATE_LIMITED count=1 ops=mac:1 first=2026-12-01T10:00:08Z last=2026-12-01T10:00:08Z 0s",
		"1000 web.service TOO_MANY_REQUESTS count=1 ops=wrap:1 first=2026-12-01T10:00:07Z last=2026-12-01T10:00:07Z 0s",
		"0  MIXED callers=1 (more than audit_refusal_max_records or 10000 callers in one interval) count=1 ops=connect:1 first=2026-12-01T10:00:09Z last=2026-12-01T10:00:09Z 0s",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("summaries:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if recs := r.take(3); len(recs) != 0 {
		t.Fatalf("a second take: %v", recs)
	}
}
