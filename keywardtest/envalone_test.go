package keywardtest_test

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keyward/keyward/keywardtest"
)

// envNormal makes TestRunsNormally print its marker (see there).
const envNormal = "KEYWARDTEST_TEST_NORMAL"

// TestRunsNormally is the child of TestEnvAloneDoesNothing: reaching it
// means the binary ran its tests, not a daemon.
func TestRunsNormally(t *testing.T) {
	if os.Getenv(envNormal) == "" {
		t.Skip("run by TestEnvAloneDoesNothing")
	}
	fmt.Println("ran normally")
}

// TestEnvAloneDoesNothing: $KEYWARDTEST_DAEMON without the pipe Start
// hands its child does not make a binary a daemon, even naming an existing
// token: the binary runs its tests, and nothing listens on the socket.
func TestEnvAloneDoesNothing(t *testing.T) {
	victim := keywardtest.Start(t, keywardtest.WithKey("app/db", "aes-256-gcm"))
	sockDir, err := os.MkdirTemp("", "kwt-evil-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "s.sock")
	spec, _ := json.Marshal(map[string]any{"Dir": victim.Dir, "Socket": sock, "AllowUIDs": []uint32{1000}})
	nonce := hex.EncodeToString(make([]byte, 32))

	tests := []struct {
		name  string
		value func(pipe *os.File) string // pipe is fd 3 of the child
	}{
		{"the request as JSON", func(*os.File) string { return string(spec) }},
		{"a handoff without its pipe", func(*os.File) string {
			return fmt.Sprintf("v1 %d 1 %s", os.Getpid(), nonce)
		}},
		{"a handoff naming another parent", func(p *os.File) string {
			return fmt.Sprintf("v1 %d %d %s", os.Getpid()+1, inode(t, p), nonce)
		}},
		{"a handoff whose pipe has another nonce", func(p *os.File) string {
			return fmt.Sprintf("v1 %d %d %s", os.Getpid(), inode(t, p), strings.Repeat("ab", 32))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			go func() { // the pipe carries a well-formed request, with nonce
				fmt.Fprintf(w, "%s\n%s", nonce, spec)
				w.Close()
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestRunsNormally$", "-test.v")
			cmd.Env = append(os.Environ(), envNormal+"=1", "KEYWARDTEST_DAEMON="+tt.value(r))
			if tt.name != "a handoff without its pipe" {
				cmd.ExtraFiles = []*os.File{r}
			}
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(out), "ran normally") {
				t.Fatalf("%v: %s", err, out)
			}
			if !strings.Contains(string(out), "ignoring $KEYWARDTEST_DAEMON") {
				t.Errorf("no word of the ignored variable: %s", out)
			}
			if _, err := os.Lstat(sock); err == nil {
				t.Errorf("a socket was made at %s", sock)
			}
		})
	}
}

// TestChildRefusesExistingDir: even through the real handoff, a child
// refuses a directory that already exists (someone's token), and exits
// without serving.
func TestChildRefusesExistingDir(t *testing.T) {
	victim := keywardtest.Start(t)
	sockDir, err := os.MkdirTemp("", "kwt-evil-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "s.sock")
	spec, _ := json.Marshal(map[string]any{"Dir": victim.Dir, "Socket": sock, "AllowUIDs": []uint32{1000}})
	nonce := strings.Repeat("cd", 32)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	go func() {
		fmt.Fprintf(w, "%s\n%s", nonce, spec)
		w.Close()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestRunsNormally$")
	cmd.Env = append(os.Environ(), envNormal+"=1", fmt.Sprintf("KEYWARDTEST_DAEMON=v1 %d %d %s", os.Getpid(), inode(t, r), nonce))
	cmd.ExtraFiles = []*os.File{r}
	out, err := cmd.CombinedOutput()
	if err == nil || strings.Contains(string(out), "ran normally") || !strings.Contains(string(out), "must be new") {
		t.Fatalf("%v: %s; want a failure saying the directory must be new", err, out)
	}
	if _, err := os.Lstat(sock); err == nil {
		t.Errorf("a socket was made at %s", sock)
	}
}

func inode(t *testing.T, f *os.File) uint64 {
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}
