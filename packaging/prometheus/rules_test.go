// Package prometheus_test checks the shipped alerting rules: promtool
// accepts them, their unit tests pass, and every metric they name is one
// keywardd exports.
package prometheus_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/tpm/swtpmtest"
)

const rulesFile, rulesTests = "keyward-alerts.yml", "keyward-alerts.test.yml"

// promtool returns $KEYWARD_PROMTOOL, the repository's bin/promtool (make
// promtool) or one on PATH. Without one the test is skipped, or fails
// when CI is set.
func promtool(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("KEYWARD_PROMTOOL"); p != "" {
		return p
	}
	if p, err := filepath.Abs("../../bin/promtool"); err == nil {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("promtool"); err == nil {
		return p
	}
	if os.Getenv("CI") != "" {
		t.Fatal("promtool not found: run make test (make promtool puts it in bin/)")
	}
	t.Skip("promtool not found: run make test (make promtool puts it in bin/)")
	return ""
}

func TestPromtoolCheckRules(t *testing.T) {
	out, err := exec.Command(promtool(t), "check", "rules", rulesFile).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "SUCCESS") {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
}

func TestPromtoolTestRules(t *testing.T) {
	out, err := exec.Command(promtool(t), "test", "rules", rulesTests).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "SUCCESS") {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
}

// ruleMetrics returns the metric names the rules' expressions use: every
// keyward_ and process_ name (the rules use no other metrics; PromQL
// functions, keywords and label names have neither prefix).
func ruleMetrics(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	exprs := 0
	for _, line := range strings.Split(string(b), "\n") {
		expr, ok := strings.CutPrefix(strings.TrimSpace(line), "expr:")
		if !ok {
			continue
		}
		exprs++
		for _, n := range regexp.MustCompile(`\b[a-zA-Z_:][a-zA-Z0-9_:]*\b`).FindAllString(expr, -1) {
			if strings.HasPrefix(n, "keyward_") || strings.HasPrefix(n, "process_") {
				names[n] = true
			}
		}
	}
	if exprs < 10 || len(names) < 10 {
		t.Fatalf("%d expressions naming %d metrics: the rules file was not read as expected", exprs, len(names))
	}
	out := make([]string, 0, len(names))
	for n := range names {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// TestRuleMetricsExist runs a real keywardd on a TPM (swtpm: the TPM's
// rollback gauge exists only there), makes it export every series the
// rules watch (a key with a rotation period, a denial, a lockout), and
// checks that each metric the rules name is on its /metrics page.
func TestRuleMetricsExist(t *testing.T) {
	want := ruleMetrics(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "keywardd")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/keywardd").CombinedOutput(); err != nil {
		t.Fatalf("build keywardd: %v\n%s", err, out)
	}
	sw := swtpmtest.Start(t)
	auth := filepath.Join(dir, "auth")
	if err := os.WriteFile(auth, []byte("keyward-test-tpm-auth-secret-01\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sock, metrics := filepath.Join(dir, "k.sock"), filepath.Join(dir, "metrics.sock")
	conf := filepath.Join(dir, "keyward.toml")
	body := fmt.Sprintf(`socket = %q
audit_log = %q
metrics_socket = %q
rotation_check_interval = "1s"
[backend]
kind = "tpm"
device = %q
state_dir = %q
pin_file = %q
[limits]
max_denied_per_minute = 1
[[rule]]
name = "root"
uids = [0]
keys = ["alerts/*"]
operations = ["key.create", "key.read", "key.set-rotation", "verify-mac"]
`, sock, filepath.Join(dir, "audit.log"), metrics, sw.Device(), filepath.Join(dir, "state"), auth)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config", conf)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() })
	c := dialWhenUp(t, sock)
	ctx := context.Background()
	if _, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: "alerts/k", KeyType: "hmac-sha256"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SetRotationPolicy(ctx, &pb.SetRotationPolicyRequest{Key: "alerts/k", RotationPeriodSeconds: 90 * 86400}); err != nil {
		t.Fatal(err)
	}
	for range 3 { // denied, denied over the limit, then refused by it
		c.Wrap(ctx, &pb.WrapRequest{Key: "other/k", Plaintext: []byte("x")})
	}
	var page string
	deadline := time.Now().Add(30 * time.Second) // ends a hang only: until the scheduler's first check
	for {
		page = scrape(t, metrics)
		if strings.Contains(page, "\nkeyward_key_next_rotation_timestamp_seconds{") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no rotation check in 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, name := range want {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `(\{| )`).MatchString(page) {
			t.Errorf("the rules use %s, which keywardd does not export", name)
		}
	}
	t.Logf("the rules use %d metrics, all on keywardd's page: %s", len(want), strings.Join(want, ", "))
}

func dialWhenUp(t *testing.T, sock string) pb.KeywardClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := pb.NewKeywardClient(conn)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := c.Status(ctx, &pb.StatusRequest{})
		cancel()
		if err == nil {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("keywardd did not come up: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func scrape(t *testing.T, sock string) string {
	t.Helper()
	hc := http.Client{Transport: &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := hc.Get("http://keyward/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
