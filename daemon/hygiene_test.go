package daemon_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/internal/testutil"
	"github.com/keyward/keyward/policy"
)

func scrape(t *testing.T, sock string) string {
	t.Helper()
	// No keep-alive: the listener serves at most 8 connections, and a
	// test that scrapes often would wait for idle ones to time out.
	hc := http.Client{Transport: &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := hc.Get("http://keyward/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestSecretHygiene runs a workload carrying marker secrets (plaintexts,
// context values, MAC inputs, data keys, the PIN) through success and
// failure paths, at debug log level, and scans every log line, the audit
// log and the metrics page: no marker may appear.
func TestSecretHygiene(t *testing.T) {
	var logs testutil.SyncBuffer
	metricsSock := filepath.Join(t.TempDir(), "metrics.sock")
	r := startWith(t, append(testRules(), policy.Rule{Name: "mac", UIDs: []uint32{appUID}, Keys: []string{"hyg/*"}, Operations: []string{"verify-mac"}}),
		func(c *config.Config) {
			c.MetricsSocket = metricsSock
			c.Limits.MaxDeniedPerMinute = 2
			c.Limits.MaxFailedVerifyMacPerMinute = 2
		}, &logs)
	ctx := context.Background()
	c := dial(t, r.sock)
	const (
		ptMarker  = "MARKER-plaintext-5f1e"
		ctxMarker = "MARKER-context-9a2b"
		macMarker = "MARKER-apisecret-77c3"
	)
	for k, ty := range map[string]string{"hyg/aes": "aes-256-gcm", "hyg/mac": "hmac-sha256", "hyg/sig": "ed25519"} {
		if _, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: k, KeyType: ty}); err != nil {
			t.Fatal(err)
		}
	}
	cx := map[string]string{"tenant": ctxMarker}
	w, err := c.Wrap(ctx, &pb.WrapRequest{Key: "hyg/aes", Plaintext: []byte(ptMarker), Context: cx})
	if err != nil {
		t.Fatal(err)
	}
	var secrets []string
	secrets = append(secrets, ptMarker, ctxMarker, macMarker, tok.PIN)
	if _, err := c.Unwrap(ctx, &pb.UnwrapRequest{Ciphertext: w.Ciphertext, Context: cx}); err != nil {
		t.Fatal(err)
	}
	c.Unwrap(ctx, &pb.UnwrapRequest{Ciphertext: w.Ciphertext, Context: map[string]string{"tenant": ctxMarker + "-wrong"}})
	c.Rewrap(ctx, &pb.RewrapRequest{Ciphertext: w.Ciphertext, Context: cx})
	dk, err := c.GenerateDataKey(ctx, &pb.GenerateDataKeyRequest{Key: "hyg/aes", Context: cx})
	if err != nil {
		t.Fatal(err)
	}
	secrets = append(secrets, string(dk.Plaintext))
	m, err := c.Mac(ctx, &pb.MacRequest{Key: "hyg/mac", Message: []byte(macMarker)})
	if err != nil {
		t.Fatal(err)
	}
	c.VerifyMac(ctx, &pb.VerifyMacRequest{Key: "hyg/mac", Message: []byte(macMarker), Mac: m.Mac})
	c.Sign(ctx, &pb.SignRequest{Key: "hyg/sig", Message: []byte(ptMarker)})
	c.Wrap(ctx, &pb.WrapRequest{Key: "hyg/absent", Plaintext: []byte(ptMarker), Context: cx})
	c.BatchWrap(ctx, &pb.BatchWrapRequest{Items: []*pb.WrapRequest{{Key: "hyg/aes", Plaintext: []byte(ptMarker), Context: cx}, {Key: "Bad Name", Plaintext: []byte(ptMarker)}}})
	// Denials and verify-mac failures from another uid, up to the limits.
	outsider := as(t, r.sock, outsideUID)
	for range 4 {
		outsider.do("wrap hyg/aes tenant=" + ctxMarker)
	}
	app := as(t, r.sock, appUID)
	for range 4 {
		app.do("verifymac hyg/mac 00")
	}

	page := scrape(t, metricsSock)
	text := logs.String()
	auditRaw, err := os.ReadFile(filepath.Join(filepath.Dir(r.cfgPath), "audit", "audit.log"))
	if err != nil || len(auditRaw) == 0 {
		t.Fatalf("audit log: %v", err)
	}
	for _, s := range secrets {
		if s == "" {
			continue
		}
		if strings.Contains(text, s) {
			t.Errorf("a secret marker (%d bytes) appears in the log", len(s))
		}
		if strings.Contains(page, s) {
			t.Errorf("a secret marker (%d bytes) appears in the metrics page", len(s))
		}
		if strings.Contains(string(auditRaw), s) {
			t.Errorf("a secret marker (%d bytes) appears in the audit log", len(s))
		}
	}
	// The limits were hit: one warning each, and the metrics say so.
	if n := strings.Count(text, "abuse limit exceeded"); n != 2 {
		t.Errorf("%d abuse warnings, want 2 (denied, verify-mac):\n%s", n, text)
	}
	for _, want := range []string{
		`keyward_denied_total{op="wrap"} 3`,
		`keyward_rate_limited_total{limit="denied"} 1`,
		`keyward_rate_limited_total{limit="verify_mac"} 1`,
		`keyward_requests_total{method="Unwrap",result="DECRYPTION_FAILED"} 1`,
		`keyward_requests_total{method="Wrap",result="OK"}`,
		`keyward_backend_sessions_max`,
		`keyward_request_duration_seconds_bucket{method="Wrap"`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("metrics page lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("metrics:\n%s", grepLines(page, "keyward_"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
