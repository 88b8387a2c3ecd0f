package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestClientOnly: keyward is a client: it links no backend (no PKCS#11,
// no TPM, not the daemon), and it builds without cgo, as a static binary
// for application hosts and containers. The commands that open a device are
// keywardd's.
func TestClientOnly(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		for _, bad := range []string{"pkcs11", "tpm", "/hsm", "/daemon", "/devmode", "/keywardtest"} {
			if strings.Contains(pkg, bad) {
				t.Errorf("keyward depends on %s", pkg)
			}
		}
	}
	static := filepath.Join(t.TempDir(), "keyward")
	build := exec.Command("go", "build", "-o", static, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("CGO_ENABLED=0 go build: %v\n%s", err, out)
	}
	if out, err := exec.Command(static, "--version").Output(); err != nil || !strings.HasPrefix(string(out), "keyward ") {
		t.Errorf("the static keyward --version: %v, %q", err, out)
	}
}
