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
	"github.com/keyward/keyward/keys"
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

// fakeReporter is a backend's own metrics, as hsm.Token and tpm.TPM report them.
type fakeReporter struct{ idle float64 }

func (f *fakeReporter) Metrics() []keys.Metric {
	const h = "Sessions, by state."
	return []keys.Metric{
		{Name: "x_recoveries_total", Help: "Recoveries.", Kind: keys.Counter, Value: 2},
		{Name: "x_sessions", Help: h, Kind: keys.Gauge, Label: "state", LabelValue: "in_use", Value: 1},
		{Name: "x_sessions", Help: h, Kind: keys.Gauge, Label: "state", LabelValue: "idle", Value: f.idle},
	}
}

// TestReporterMetrics: a backend's keys.Metric values become series with
// their name, help, type and label, read afresh on every scrape; a backend
// that reports none adds nothing.
func TestReporterMetrics(t *testing.T) {
	f := &fakeReporter{idle: 3}
	m := NewMetrics(f)
	f.idle = 4
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "x_") {
			continue
		}
		for _, mt := range mf.GetMetric() {
			v := mt.GetCounter().GetValue() + mt.GetGauge().GetValue()
			var labels string
			for _, l := range mt.GetLabel() {
				labels += l.GetName() + "=" + l.GetValue()
			}
			got = append(got, fmt.Sprintf("%s %s %q {%s} %v", mf.GetName(), mf.GetType(), mf.GetHelp(), labels, v))
		}
	}
	slices.Sort(got)
	want := []string{
		`x_recoveries_total COUNTER "Recoveries." {} 2`,
		`x_sessions GAUGE "Sessions, by state." {state=idle} 4`,
		`x_sessions GAUGE "Sessions, by state." {state=in_use} 1`,
	}
	if !slices.Equal(got, want) {
		t.Fatalf("series:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	mfs, _ = NewMetrics(struct{}{}).reg.Gather()
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "keyward_backend_") || strings.HasPrefix(mf.GetName(), "keyward_tpm_") {
			t.Errorf("a backend without metrics adds %s", mf.GetName())
		}
	}
}

// TestBuildInfoMetric: keyward_build_info is 1, labelled with the version
// Status reports and the Go release.
func TestBuildInfoMetric(t *testing.T) {
	mfs, err := NewMetrics(nil).reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "keyward_build_info" {
			continue
		}
		mt := mf.GetMetric()[0]
		labels := map[string]string{}
		for _, l := range mt.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		if mt.GetGauge().GetValue() != 1 || labels["version"] != Version || labels["version"] == "" || !strings.HasPrefix(labels["goversion"], "go") {
			t.Fatalf("keyward_build_info %v = %v, want version=%q goversion=go... = 1", labels, mt.GetGauge().GetValue(), Version)
		}
		return
	}
	t.Fatal("no keyward_build_info series")
}
