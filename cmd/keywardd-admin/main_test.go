package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	softhsmtest "github.com/keyward/keyward/softhsm-test"
)

// The device commands are tested as users run them: "keywardd NAME ...",
// which execs keywardd-admin beside keywardd. Both are built once.
var (
	tok *softhsmtest.Token
	bin string // keywardd
)

// exitUsage is keywardd's and the device commands' usage status.
const exitUsage = adminUsage

// testAuth is a TPM auth secret for tests (real ones come from a 0600
// file or a systemd credential).
const testAuth = "keyward-test-tpm-auth-secret-01"

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "keywardd-admin-test-")
	if err != nil {
		panic(err)
	}
	bin = filepath.Join(dir, "keywardd")
	for _, pkg := range []string{"../keywardd", "."} {
		if out, err := exec.Command("go", "build", "-o", dir+"/", pkg).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", pkg, err, out)
			os.Exit(1)
		}
	}
	code := softhsmtest.Main(m, &tok)
	os.RemoveAll(dir)
	os.Exit(code)
}
