package tpm_test

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keyward/keyward/internal/testutil"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/tpm"
	"github.com/keyward/keyward/tpm/swtpmtest"
)

const crashChildEnv = "KEYWARD_TPM_CRASH_CHILD"

// TestMain lets the test binary act as the crash test's child.
func TestMain(m *testing.M) {
	if os.Getenv(crashChildEnv) != "" {
		os.Exit(crashChild())
	}
	os.Exit(m.Run())
}

// crashChild opens the backend and loops over key changes and wraps until
// it is killed, appending every blob it got back (after the call returned,
// and fsynced) to the blobs file: what a client was told is done.
func crashChild() int {
	device, dir, blobs := os.Getenv("TPM_DEVICE"), os.Getenv("TPM_STATE"), os.Getenv("TPM_BLOBS")
	be, err := tpm.Open(context.Background(), tpm.Config{Device: device, StateDir: dir, Auth: testAuth})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child open:", err)
		return 3
	}
	f, err := os.OpenFile(blobs, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return 3
	}
	ctx := context.Background()
	fmt.Println("ready")
	for i := 0; ; i++ {
		name := fmt.Sprintf("crash/k%d", i%3)
		switch i % 5 {
		case 0:
			if _, err := be.CreateKey(ctx, name, keys.AES256GCM); err != nil {
				be.RotateKey(ctx, name)
			}
		case 1:
			be.RotateKey(ctx, name)
		case 2:
			ki, err := be.DescribeKey(ctx, name)
			if err == nil && len(ki.Versions) > 3 {
				be.DestroyVersion(ctx, name, uint32(len(ki.Versions)-3))
			}
		default:
			blob, err := be.Wrap(ctx, name, []byte(strconv.Itoa(i)), keys.Context{"i": strconv.Itoa(i)})
			if err == nil {
				fmt.Fprintf(f, "%d %s\n", i, base64.StdEncoding.EncodeToString(blob))
				f.Sync()
			}
		}
	}
}

// TestCrashDuringChanges: the backend's process SIGKILLed at random moments
// during creates, rotations, destroys and wraps, 20 times: after each kill
// the state directory opens (records intact, MACs good) and every blob the
// child was given still unwraps, unless its version was destroyed on purpose.
func TestCrashDuringChanges(t *testing.T) {
	t.Parallel() // its own swtpm and state directory
	sw := swtpmtest.Start(t)
	dir := filepath.Join(t.TempDir(), "state")
	blobs := filepath.Join(t.TempDir(), "blobs")
	iterations := 20 // make reliability: KEYWARD_CRASH_ITERATIONS=100
	if n, err := strconv.Atoi(os.Getenv("KEYWARD_CRASH_ITERATIONS")); err == nil && n > 0 {
		iterations = n
	} else if testing.Short() {
		iterations = 5
	}
	checked, finished := 0, 0
	for it := range iterations {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), crashChildEnv+"=1", "TPM_DEVICE="+sw.Device(), "TPM_STATE="+dir, "TPM_BLOBS="+blobs)
		out, _ := cmd.StdoutPipe()
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "ready\n" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("iteration %d: child did not start: %q %v", it, line, err)
		}
		time.Sleep(time.Duration(20+rand.IntN(200)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()

		var logs testutil.SyncBuffer
		be, err := tpm.Open(t.Context(), tpm.Config{Device: sw.Device(), StateDir: dir, Auth: testAuth, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		if err != nil {
			t.Fatalf("iteration %d: state directory does not open after the kill: %v", it, err)
		}
		if strings.Contains(logs.String(), "finished a key change interrupted by a crash") {
			finished++
		}
		f, err := os.Open(blobs)
		if err != nil {
			be.Close()
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		n := 0
		for sc.Scan() {
			var i int
			var b64 string
			if _, err := fmt.Sscanf(sc.Text(), "%d %s", &i, &b64); err != nil {
				continue // a line torn by the kill: never acknowledged
			}
			blob, err := base64.StdEncoding.DecodeString(b64)
			if err != nil {
				continue
			}
			u, err := be.Unwrap(t.Context(), blob, keys.Context{"i": strconv.Itoa(i)})
			switch {
			case err == nil && string(u.Plaintext) == strconv.Itoa(i):
				n++
			case errors.Is(err, keys.ErrVersionDestroyed):
				// destroyed by the child's loop on purpose
			default:
				f.Close()
				be.Close()
				t.Fatalf("iteration %d: blob %d lost: %v", it, i, err)
			}
		}
		f.Close()
		be.Close()
		checked = n
	}
	fmt.Printf("crash-safety: tpm: %d kills, %d blobs unwrap after the last one, 0 lost; %d kills left a key change half done (finished at the reopen)\n", iterations, checked, finished)
}
