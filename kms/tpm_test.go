package kms

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyward/keyward/tpm/swtpmtest"
)

// TestApiserverOnTPM: the same endpoint with kms_key in the TPM backend
// (swtpm): the apiserver's writes read back, a rotation gives new writes the
// new key_id, and after a keywardd restart a fresh transformer reads both.
func TestApiserverOnTPM(t *testing.T) {
	t.Parallel()
	sw := swtpmtest.Start(t)
	auth := filepath.Join(t.TempDir(), "auth")
	if err := os.WriteFile(auth, []byte("keyward-kms-test-tpm-auth-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := newDaemonWith(t, "k8s/tpm", fmt.Sprintf("kind = \"tpm\"\ndevice = %q\nstate_dir = %q\npin_file = %q\n",
		sw.Device(), filepath.Join(t.TempDir(), "state"), auth))
	d.start()
	d.keyward("key", "create", d.key, "--type", "aes-256-gcm")
	a := d.apiserver()
	if err := a.healthz(t); err != nil {
		t.Fatal(err)
	}
	old := a.write(t, "/registry/secrets/default/tpm", "on-tpm")
	if id := keyIDOf(t, old); !strings.HasPrefix(id, "keyward:k8s/tpm:v1:") {
		t.Fatalf("key_id %q", id)
	}
	d.keyward("key", "rotate", d.key)
	fresh := d.apiserver().write(t, "/registry/secrets/default/tpm2", "on-tpm-2")
	if id := keyIDOf(t, fresh); !strings.HasPrefix(id, "keyward:k8s/tpm:v2:") {
		t.Fatalf("key_id after rotate %q", id)
	}
	d.stop()
	d.start()
	a2 := d.apiserver()
	if v, stale := a2.read(t, "/registry/secrets/default/tpm", old); v != "on-tpm" || !stale {
		t.Fatalf("old value after a restart: %q stale=%v", v, stale)
	}
	if v, stale := a2.read(t, "/registry/secrets/default/tpm2", fresh); v != "on-tpm-2" || stale {
		t.Fatalf("new value after a restart: %q stale=%v", v, stale)
	}
}
