package daemon_test

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/daemon"
	"github.com/keyward/keyward/policy"
	"github.com/keyward/keyward/tpm/swtpmtest"
)

// TestStatusRateLimited: a caller over an abuse limit learns from Status
// which limit refuses it and until when (the end of the window that its
// first counted event opened); callers under their limits see none. The
// failed verify-mac calls and the lockouts are counted on /metrics.
func TestStatusRateLimited(t *testing.T) {
	metricsSock := filepath.Join(t.TempDir(), "metrics.sock")
	r := start(t, append(testRules(), policy.Rule{Name: "mac checker", UIDs: []uint32{appUID}, Keys: []string{"ratelimit/*"}, Operations: []string{"verify-mac"}}),
		func(c *config.Config) {
			c.Limits.MaxDeniedPerMinute = 3
			c.Limits.MaxFailedVerifyMacPerMinute = 2
			c.MetricsSocket = metricsSock
		})
	ctx := context.Background()
	root := dial(t, r.sock)
	if _, err := root.CreateKey(ctx, &pb.CreateKeyRequest{Key: "ratelimit/m", KeyType: "hmac-sha256"}); err != nil {
		t.Fatal(err)
	}
	outsider, app := as(t, r.sock, outsideUID), as(t, r.sock, appUID)
	if got := outsider.do("ratelimits"); got != "OK" {
		t.Fatalf("outsider before any denial: %q, want no limit", got)
	}
	first := time.Now().Truncate(time.Second)
	for range 5 {
		outsider.do("wrap app/x")
	}
	for i := range 3 {
		app.do(fmt.Sprintf("verifymac ratelimit/m %s", hex.EncodeToString([]byte{byte(i), 1, 2, 3})))
	}
	last := time.Now()
	for _, tc := range []struct {
		c     interface{ do(string) string }
		limit string
	}{{outsider, `"denied requests"/3/`}, {app, `"failed verify-mac"/2/`}} {
		got := tc.c.do("ratelimits")
		rest, ok := strings.CutPrefix(got, "OK "+tc.limit)
		until, err := strconv.ParseInt(rest, 10, 64)
		// The window opened at or after first and before last; the
		// caller is served again at its end, rounded up to the second.
		if !ok || err != nil || until <= last.Unix() || until > first.Add(time.Minute).Unix()+1 {
			t.Errorf("Status of a limited caller: %q; want %s<end of the window>", got, tc.limit)
		}
	}
	page := scrape(t, metricsSock)
	for series, want := range map[string]float64{
		`keyward_verify_failures_total{op="verify-mac"}`: 3, // the third one went over the limit
		`keyward_verify_failures_total{op="verify"}`:     0,
		`keyward_denied_total{op="wrap"}`:                4, // the fourth went over the limit
		`keyward_rate_limited_total{limit="denied"}`:     1, // the fifth was refused
	} {
		if got := metricValue(page, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	st, err := root.Status(ctx, &pb.StatusRequest{})
	if err != nil || len(st.GetRateLimited()) != 0 {
		t.Errorf("root's status: %v %v, want no limit", st.GetRateLimited(), err)
	}
}

// TestBackendUp: keyward_backend_up is 1 while the device answers, 0
// while it does not (swtpm killed), and 1 again once it is back, without
// waiting for a call to succeed.
func TestBackendUp(t *testing.T) {
	sw := swtpmtest.Start(t)
	dir := t.TempDir()
	cfg := tpmConfig(t, dir, sw.Device(), authFile(t, testAuth), "")
	cfg.Rules = []policy.Rule{{Name: "root", UIDs: []uint32{uint32(os.Getuid())}, Keys: []string{"**"}, Operations: append(append([]string{}, allData...), allAdmin...)}}
	pol, err := policy.Compile(cfg.Rules, policy.SystemResolver())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	be, err := daemon.OpenBackend(ctx, cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	ready, done := make(chan struct{}), make(chan error, 1)
	go func() {
		done <- daemon.Run(ctx, cfg, pol, be, daemon.Options{Logger: quietLog(), Ready: func(string) { close(ready) }})
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("daemon: %v", err)
	}
	c := dial(t, cfg.Socket)
	if _, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: "up/k", KeyType: "aes-256-gcm"}); err != nil {
		t.Fatal(err)
	}
	waitMetric(t, cfg.MetricsSocket, "keyward_backend_up", func(v float64) bool { return v == 1 })
	sw.Kill()
	if _, err := c.Wrap(ctx, &pb.WrapRequest{Key: "up/k", Plaintext: []byte("x")}); reason(err) != "Unavailable BACKEND_UNAVAILABLE" {
		t.Fatalf("wrap with the TPM gone: %v", err)
	}
	waitMetric(t, cfg.MetricsSocket, "keyward_backend_up", func(v float64) bool { return v == 0 })
	sw.Restart(t)
	waitMetric(t, cfg.MetricsSocket, "keyward_backend_up", func(v float64) bool { return v == 1 })
	if _, err := c.Wrap(ctx, &pb.WrapRequest{Key: "up/k", Plaintext: []byte("x")}); err != nil {
		t.Fatalf("wrap once the TPM is back: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("daemon: %v", err)
	}
}
