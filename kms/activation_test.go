package kms

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyward/keyward/hsm"
	"github.com/keyward/keyward/internal/testutil"
	softhsmtest "github.com/keyward/keyward/softhsm-test"
)

// TestKMSSocketActivation: under systemd's activation protocol
// (systemd-socket-activate, two sockets named "keyward" and "kms"), an
// apiserver that starts before keywardd has its first KMS connection start
// keywardd, which serves the KMS API on the passed "kms" socket (no
// kms_socket in its file), and the apiserver's health check passes.
func TestKMSSocketActivation(t *testing.T) {
	softhsmtest.Need(t, tok)
	t.Parallel() // a token of its own
	activate, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		t.Fatalf("systemd-socket-activate not installed (make deps installs systemd): %v", err)
	}
	const label, key = "kms-activation", "k8s/activated"
	pinFile := freshToken(t, label)
	dir := t.TempDir()
	ctx := context.Background()
	be, err := hsm.Open(ctx, hsm.Config{Module: tok.Module, TokenLabel: label, PINFile: pinFile})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := be.CreateKey(ctx, key, "aes-256-gcm"); err != nil {
		t.Fatal(err)
	}
	be.Close()
	cfg := filepath.Join(dir, "keyward.toml")
	body := fmt.Sprintf(`socket = %q
kms_key = %q
audit_log = %q
[backend]
module = %q
token = %q
pin_file = %q
[[rule]]
name = "kube-apiserver"
uids = [0]
keys = [%q]
operations = ["kms.encrypt", "kms.decrypt"]
`, filepath.Join(dir, "not-this.sock"), key, filepath.Join(dir, "audit.log"), tok.Module, label, pinFile, key)
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	mainSock, kmsSock := filepath.Join(dir, "keyward.sock"), filepath.Join(dir, "kms.sock")
	cmd := exec.Command(activate, "-l", mainSock, "-l", kmsSock, "--fdname=keyward:kms",
		"-E", softhsmtest.EnvConf+"="+tok.ConfPath, filepath.Join(binDir, "keywardd"), "--config", cfg)
	var stderr testutil.SyncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("keywardd's log:\n%s", stderr.String())
		}
	})
	eventually(t, "the activation sockets", func() error { _, err := os.Stat(kmsSock); return err })

	d := &daemon{t: t, key: key, kms: kmsSock, encryptionConfig: filepath.Join(dir, "encryption-config.yaml")}
	enc := fmt.Sprintf("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n"+
		"  - resources: [\"secrets\"]\n    providers:\n      - kms: {apiVersion: v2, name: %s, endpoint: \"unix://%s\", timeout: 3s}\n", providerNm, kmsSock)
	if err := os.WriteFile(d.encryptionConfig, []byte(enc), 0o600); err != nil {
		t.Fatal(err)
	}
	a := d.apiserver() // its first Status is the first connection: it starts keywardd
	eventually(t, "the kms-providers health check", func() error { return a.healthz(t) })
	stored := a.write(t, "/registry/secrets/kube-system/activated", "v")
	if id := keyIDOf(t, stored); !strings.HasPrefix(id, "keyward:"+key+":v1:") {
		t.Fatalf("key_id %q", id)
	}
	if !strings.Contains(stderr.String(), `msg="using the KMS socket passed by systemd" name=kms`) {
		t.Fatalf("keywardd did not say it took the passed socket:\n%s", stderr.String())
	}
}

// TestKMSKeyWithoutSocket: kms_key with neither kms_socket nor a passed
// "kms" socket is a configuration error (exit 3), said plainly.
func TestKMSKeyWithoutSocket(t *testing.T) {
	softhsmtest.Need(t, tok)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "keyward.toml")
	body := fmt.Sprintf("socket = %q\nkms_key = \"k8s/none\"\naudit_log = %q\n[backend]\nmodule = %q\ntoken = %q\npin_file = %q\n",
		filepath.Join(dir, "keyward.sock"), filepath.Join(dir, "audit.log"), tok.Module, tok.Label, tok.PINFile)
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(binDir, "keywardd"), "--config", cfg)
	var stderr testutil.SyncBuffer
	cmd.Stderr = &stderr
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatal("keywardd kept running")
	}
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 3 || !strings.Contains(stderr.String(), "kms_key is set but there is no kms_socket") {
		t.Fatalf("keywardd: %v\n%s", err, stderr.String())
	}
}
