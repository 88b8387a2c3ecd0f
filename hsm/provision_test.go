package hsm_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/keyward/keyward/hsm"
	"github.com/keyward/keyward/keys"
)

// TestInitToken runs in a child process with its own SoftHSM2 config: the
// module in this process has already been initialised with the shared one.
func TestInitToken(t *testing.T) {
	if os.Getenv("KW_INIT_CHILD") == "" {
		dir := t.TempDir()
		conf := filepath.Join(dir, "softhsm2.conf")
		os.Mkdir(filepath.Join(dir, "tokens"), 0o700)
		os.WriteFile(conf, []byte("directories.tokendir = "+filepath.Join(dir, "tokens")+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600)
		cmd := exec.Command(os.Args[0], "-test.run=^TestInitToken$", "-test.v")
		cmd.Env = append(os.Environ(), "KW_INIT_CHILD=1", "SOFTHSM2_CONF="+conf, "KW_DIR="+dir, "KW_MODULE="+tok.Module)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child: %v\n%s", err, out)
		}
		return
	}
	dir, module := os.Getenv("KW_DIR"), os.Getenv("KW_MODULE")
	pinFile := filepath.Join(dir, "pin")
	if err := os.WriteFile(pinFile, []byte("user-pin-1234"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := hsm.InitToken(module, "fresh", []byte("so-pin-5678"), []byte("user-pin-1234")); err != nil {
		t.Fatal(err)
	}
	if err := hsm.InitToken(module, "fresh", []byte("so"), []byte("user")); !errors.Is(err, hsm.ErrConfig) {
		t.Fatalf("second init with the same label: %v", err)
	}
	b, err := hsm.Open(context.Background(), hsm.Config{Module: module, TokenLabel: "fresh", PINFile: pinFile})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := b.CreateKey(context.Background(), "fresh/k", keys.AES256GCM); err != nil {
		t.Fatal(err)
	}
}
