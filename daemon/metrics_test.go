package daemon

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"

	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/policy"
	"github.com/keyward/keyward/socket"
)

// TestMetricsInterceptor: calls are counted by method and result, and
// timed by method, the same through the per-method cache as without it.
func TestMetricsInterceptor(t *testing.T) {
	m := NewMetrics(nil)
	ic := m.interceptor()
	call := func(method string, err error) {
		info := &grpc.UnaryServerInfo{FullMethod: "/keyward.v1.Keyward/" + method}
		ic(context.Background(), nil, info, func(context.Context, any) (any, error) { return nil, err })
	}
	for range 3 {
		call("Wrap", nil)
	}
	call("Wrap", statusFor(ErrDenied))
	call("Unwrap", nil)
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			var labels string
			for _, l := range mt.GetLabel() {
				labels += fmt.Sprintf("%s=%s,", l.GetName(), l.GetValue())
			}
			switch mf.GetName() {
			case "keyward_requests_total":
				got = append(got, fmt.Sprintf("requests %s %v", labels, mt.GetCounter().GetValue()))
			case "keyward_request_duration_seconds":
				got = append(got, fmt.Sprintf("latency %s %d", labels, mt.GetHistogram().GetSampleCount()))
			}
		}
	}
	slices.Sort(got)
	want := []string{
		"latency method=Unwrap, 1",
		"latency method=Wrap, 4",
		"requests method=Unwrap,result=OK, 1",
		"requests method=Wrap,result=OK, 3",
		"requests method=Wrap,result=PERMISSION_DENIED, 1",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("series:\n%q\nwant:\n%q", got, want)
	}
}

// TestAuthorizeDebugLine: the "allowed" line is written at debug level
// (and only then: at info its arguments are not even built).
func TestAuthorizeDebugLine(t *testing.T) {
	pol, err := policy.Compile([]policy.Rule{{Name: "all", UIDs: []uint32{1000}, Keys: []string{"**"}, Operations: []string{"wrap"}}}, policy.SystemResolver())
	if err != nil {
		t.Fatal(err)
	}
	ctx := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: socket.AuthInfo{Peer: socket.Peer{UID: 1000, GID: 1000, PID: 42}}})
	for _, level := range []slog.Level{slog.LevelDebug, slog.LevelInfo} {
		var buf bytes.Buffer
		svc := NewService(nil, "pkcs11", "test", pol, config.Defaults().Limits, slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: level})))
		if err := svc.authorize(ctx, policy.OpWrap, "app/k", nil); err != nil {
			t.Fatal(err)
		}
		got := buf.String()
		want := "msg=allowed op=wrap key=app/k uid=1000 rule=all"
		if level == slog.LevelDebug && !strings.Contains(got, want) {
			t.Errorf("debug log %q lacks %q", got, want)
		}
		if level == slog.LevelInfo && got != "" {
			t.Errorf("info log: %q, want nothing", got)
		}
	}
}
