package main

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyward/keyward/internal/version"
)

// TestVersion: --version prints the build version and exits 0, and a
// version stamped at link time (as the Makefile does from git) is the one
// printed.
func TestVersion(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"--version"}, &out, &errOut); code != exitOK || out.String() != version.Line("keywardd")+"\n" {
		t.Fatalf("--version: exit %d, %q %q", code, out.String(), errOut.String())
	}
	stamped := filepath.Join(t.TempDir(), "keywardd")
	const v = "v1.2.3-4-gabcdef0-dirty"
	if out, err := exec.Command("go", "build", "-ldflags", "-X github.com/keyward/keyward/internal/version.stamp="+v, "-o", stamped, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	got, err := exec.Command(stamped, "--version").Output()
	if err != nil || !strings.HasPrefix(string(got), "keywardd "+v+" (go") {
		t.Fatalf("stamped --version: %v, %q", err, got)
	}
}
