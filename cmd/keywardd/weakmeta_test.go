package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	softhsmtest "github.com/keyward/keyward/softhsm-test"
)

// TestWeakMetadataKeyRefused: a token whose record MAC key
// (keyward:meta-mac-key) is not keyward's (a secret key of known value,
// imported: not always sensitive) is refused at start as an integrity
// failure; keywardd neither uses it nor makes a second one beside it
// (every record would then fail its MAC for good).
func TestWeakMetadataKeyRefused(t *testing.T) {
	tk, err := softhsmtest.New("weakmeta")
	if err != nil {
		softhsmtest.Need(t, nil)
		t.Fatal(err)
	}
	t.Cleanup(func() { tk.Close() })
	tool, err := exec.LookPath("pkcs11-tool")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("pkcs11-tool not found: make test installs opensc")
		}
		t.Skip("pkcs11-tool not found")
	}
	dir := t.TempDir()
	value := filepath.Join(dir, "known-key")
	if err := os.WriteFile(value, []byte("0123456789abcdef0123456789abcdef"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "SOFTHSM2_CONF="+tk.ConfPath, "KW_TEST_PIN="+tk.PIN)
	plant := exec.Command(tool, "--module", tk.Module, "--token-label", tk.Label, "--login", "--pin", "env:KW_TEST_PIN",
		"--write-object", value, "--type", "secrkey", "--key-type", "AES:32", "--label", "keyward:meta-mac-key",
		"--id", "01", "--sensitive", "--private", "--usage-sign")
	plant.Env = env
	if out, err := plant.CombinedOutput(); err != nil {
		t.Fatalf("pkcs11-tool: %v\n%s", err, out)
	}
	cfg := filepath.Join(dir, "keyward.toml")
	body := "socket = \"" + filepath.Join(dir, "k.sock") + "\"\naudit_log = \"off\"\n[backend]\nmodule = \"" + tk.Module +
		"\"\ntoken = \"" + tk.Label + "\"\npin_file = \"" + tk.PINFile + "\"\n"
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	cmd := exec.Command(bin, "--config", cfg)
	cmd.Env, cmd.Stdout, cmd.Stderr = env, &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	sock := filepath.Join(dir, "k.sock")
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		select {
		case err := <-exited:
			if err == nil || !strings.Contains(out.String(), "keyward:meta-mac-key is not private, sensitive and never extractable") {
				t.Fatalf("keywardd on a token with a weak record MAC key: %v\n%s", err, out.String())
			}
			return
		default:
		}
		if _, err := os.Stat(sock); err == nil || time.Now().After(deadline) {
			cmd.Process.Kill()
			<-exited
			t.Fatalf("keywardd serves (or runs on) with a weak record MAC key:\n%s", out.String())
		}
	}
}
