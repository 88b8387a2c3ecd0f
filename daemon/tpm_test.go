package daemon_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/daemon"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/policy"
	"github.com/keyward/keyward/tpm"
	"github.com/keyward/keyward/tpm/swtpmtest"
)

// tpmConfig parses a config for the TPM backend on device, its state in
// dir/state and its auth secret in authFile.
func tpmConfig(t *testing.T, dir, device, authFile, extra string) config.Config {
	t.Helper()
	body := fmt.Sprintf("socket = %q\naudit_log = \"off\"\nmetrics_socket = %q\n[backend]\nkind = \"tpm\"\ndevice = %q\nstate_dir = %q\npin_file = %q\n%s",
		filepath.Join(dir, "k.sock"), filepath.Join(dir, "metrics.sock"), device, filepath.Join(dir, "state"), authFile, extra)
	cfg, err := config.ParseConfig("tpm.toml", []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// testAuth is the TPM auth secret of these tests. Fixed, not random: with
// go-tpm v0.9.8 an auth value with a zero byte anywhere fails every HMAC
// session (hmacKeyFromAuthValue cuts it at its first zero byte; go-tpm pull
// request 446), and tpm derives the auth value from the secret, so about one
// random secret in eight never works. This one's derived value has no zero byte.
const testAuth = "keyward-test-tpm-auth-secret-01"

// authFile writes secret to a 0600 file.
func authFile(t *testing.T, secret string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "auth")
	if err := os.WriteFile(p, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// TestTPMBackend runs the daemon on kind "tpm" (swtpm): calls through the
// socket work, and the metrics page has the TPM's counters (recoveries,
// object loads) and no PKCS#11 session gauges.
func TestTPMBackend(t *testing.T) {
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
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- daemon.Run(ctx, cfg, pol, be, daemon.Options{Logger: quietLog(), Ready: func(string) { close(ready) }})
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("daemon: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("daemon not ready")
	}
	c := dial(t, cfg.Socket)
	if _, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: "tpm/k", KeyType: "aes-256-gcm"}); err != nil {
		t.Fatal(err)
	}
	w, err := c.Wrap(ctx, &pb.WrapRequest{Key: "tpm/k", Plaintext: []byte("x"), Context: map[string]string{"app": "t"}})
	if err != nil {
		t.Fatal(err)
	}
	if u, err := c.Unwrap(ctx, &pb.UnwrapRequest{Ciphertext: w.Ciphertext, Context: map[string]string{"app": "t"}}); err != nil || string(u.Plaintext) != "x" {
		t.Fatalf("unwrap: %v", err)
	}
	st, err := c.Status(ctx, &pb.StatusRequest{})
	if err != nil || st.Backend != "tpm" || !st.BackendHealthy {
		t.Fatalf("status %+v, %v; want backend tpm, healthy", st, err)
	}
	page := scrape(t, cfg.MetricsSocket)
	if !strings.Contains(page, `keyward_requests_total{method="Wrap",result="OK"} 1`) {
		t.Errorf("metrics page lacks the wrap:\n%s", grepLines(page, "keyward_"))
	}
	for _, want := range []string{"keyward_backend_recoveries_total 0", "keyward_tpm_objects_loaded ", "keyward_tpm_object_loads_total ", "keyward_tpm_rollback_counter_behind 0"} {
		if !strings.Contains(page, want) {
			t.Errorf("metrics page lacks %q:\n%s", want, grepLines(page, "keyward_"))
		}
	}
	if strings.Contains(page, "keyward_backend_sessions") {
		t.Errorf("metrics page has PKCS#11 session gauges on a TPM:\n%s", grepLines(page, "keyward_backend_"))
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("daemon: %v", err)
	}
}

// TestOpenBackendTPMErrors: the sentinels keywardd maps to exit codes come
// through OpenBackend.
func TestOpenBackendTPMErrors(t *testing.T) {
	sw := swtpmtest.Start(t)
	dir := t.TempDir()
	good := authFile(t, testAuth)
	ctx := context.Background()
	first, err := daemon.OpenBackend(ctx, tpmConfig(t, dir, sw.Device(), good, ""), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := first.CreateKey(ctx, "tpm/k", keys.HMACSHA256); err != nil {
		t.Fatal(err)
	}
	// Held open: the state directory is locked (and swtpm busy) until closed.
	_, err = daemon.OpenBackend(ctx, tpmConfig(t, dir, "swtpm:127.0.0.1:1", good, ""), quietLog())
	if !errors.Is(err, tpm.ErrLocked) {
		t.Errorf("second open of a held state directory: %v, want tpm.ErrLocked", err)
	}
	first.Close()

	other := swtpmtest.Start(t)
	tests := []struct {
		name    string
		device  string
		auth    string
		wantErr error
	}{
		{name: "wrong auth secret", device: sw.Device(), auth: authFile(t, "keyward-test-tpm-auth-secret-02"), wantErr: tpm.ErrCredential},
		{name: "auth secret too short", device: sw.Device(), auth: authFile(t, "15-bytes-secret"), wantErr: tpm.ErrConfig},
		{name: "another TPM", device: other.Device(), auth: good, wantErr: tpm.ErrParentMismatch},
		{name: "no TPM there", device: "swtpm:127.0.0.1:1", auth: good, wantErr: keys.ErrUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			be, err := daemon.OpenBackend(ctx, tpmConfig(t, dir, tt.device, tt.auth, ""), quietLog())
			if !errors.Is(err, tt.wantErr) {
				if be != nil {
					be.Close()
				}
				t.Fatalf("open: %v, want %v", err, tt.wantErr)
			}
			if be != nil {
				t.Fatalf("open failed but returned a backend (%T)", be)
			}
		})
	}
	be, err := daemon.OpenBackend(ctx, tpmConfig(t, dir, sw.Device(), good, ""), quietLog())
	if err != nil {
		t.Fatalf("reopen with the right TPM and secret: %v", err)
	}
	defer be.Close()
	if ks, err := be.ListKeys(ctx); err != nil || len(ks) != 1 {
		t.Fatalf("keys after reopen: %v, %v", ks, err)
	}
}
