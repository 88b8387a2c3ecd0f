package hsm_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/keyward/keyward/envelope"
	"github.com/keyward/keyward/hsm"
	"github.com/keyward/keyward/keys"
)

// Child processes: the test binary runs itself with KEYWARD_HSM_CHILD set
// to play a second daemon on the same token (fleet) or to run a load under
// token disruption (recovery), where a crash must fail the test, not kill it.
const childEnv = "KEYWARD_HSM_CHILD"

func init() {
	switch os.Getenv(childEnv) {
	case "":
		return
	case "server":
		os.Exit(childServer())
	case "recovery":
		os.Exit(childRecovery())
	}
	fmt.Fprintln(os.Stderr, "unknown child mode")
	os.Exit(2)
}

func childConfig() hsm.Config {
	age, _ := time.ParseDuration(os.Getenv("KW_MAX_AGE"))
	return hsm.Config{Module: os.Getenv("KW_MODULE"), TokenLabel: os.Getenv("KW_TOKEN"), PINFile: os.Getenv("KW_PIN_FILE"), MetadataMaxAge: age}
}

func startChild(t *testing.T, mode string, token, pinFile string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+mode, "KW_MODULE="+tok.Module, "KW_TOKEN="+token, "KW_PIN_FILE="+pinFile)
	return cmd
}

// childServer answers one command per stdin line: "rotate NAME",
// "create NAME TYPE", "wrap NAME HEX", "unwrap HEXBLOB", "disable NAME V".
// Each answer is "ok ARG" or "err SENTINEL".
func childServer() int {
	b, err := hsm.Open(context.Background(), childConfig())
	if err != nil {
		fmt.Println("err open:", err)
		return 1
	}
	defer b.Close()
	ctx := context.Background()
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		var out string
		var err error
		switch f[0] {
		case "create":
			_, err = b.CreateKey(ctx, f[1], keys.Type(f[2]))
		case "rotate":
			var ki keys.KeyInfo
			ki, err = b.RotateKey(ctx, f[1])
			out = fmt.Sprint(len(ki.Versions))
		case "disable":
			var v uint32
			fmt.Sscan(f[2], &v)
			_, err = b.SetVersionState(ctx, f[1], v, keys.Disabled)
		case "wrap":
			pt, _ := hex.DecodeString(f[2])
			var blob []byte
			blob, err = b.Wrap(ctx, f[1], pt, nil)
			out = hex.EncodeToString(blob)
		case "unwrap":
			blob, _ := hex.DecodeString(f[1])
			var u keys.Unwrapped
			u, err = b.Unwrap(ctx, blob, nil)
			out = hex.EncodeToString(u.Plaintext)
		}
		switch {
		case errors.Is(err, keys.ErrVersionDisabled):
			fmt.Println("err disabled")
		case errors.Is(err, keys.ErrKeyNotFound):
			fmt.Println("err notfound")
		case err != nil:
			fmt.Println("err", err)
		default:
			fmt.Println("ok", out)
		}
	}
	return 0
}

type child struct {
	t   *testing.T
	in  io.WriteCloser
	out *bufio.Scanner
}

func (c *child) do(cmd string) string {
	c.t.Helper()
	fmt.Fprintln(c.in, cmd)
	if !c.out.Scan() {
		c.t.Fatalf("child died after %q", cmd)
	}
	return c.out.Text()
}

// TestTwoProcessesOneToken: the token is the single source of truth. A key
// created and rotated by one process is used at its new version by a
// second, long-running one, without restart; a disable in one applies in
// the other. With records read on every operation that is immediate; with
// the default MetadataMaxAge it happens within that age.
func TestTwoProcessesOneToken(t *testing.T) {
	for _, tc := range []struct {
		name string
		age  time.Duration
	}{{"fresh", -1}, {"default-max-age", 0}} {
		t.Run(tc.name, func(t *testing.T) { testFleet(t, tc.name, tc.age) })
	}
}

func testFleet(t *testing.T, suffix string, age time.Duration) {
	b := open(t, func(c *hsm.Config) { c.MetadataMaxAge = age })
	ctx := context.Background()
	cmd := startChild(t, "server", tok.Label, tok.PINFile)
	cmd.Env = append(cmd.Env, "KW_MAX_AGE="+age.String())
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Wait() })
	c := &child{t: t, in: stdin, out: bufio.NewScanner(stdout)}
	key := "fleet/" + suffix
	// eventually retries cond until the other process's change is visible:
	// at once when records are read every time, else within the max age.
	eventually := func(what string, cond func() bool) {
		t.Helper()
		limit := time.Duration(0)
		if age >= 0 {
			// The max age, plus a margin that only ends a hang: a slow
			// machine must not fail this.
			limit = hsm.DefaultMetadataMaxAge + 30*time.Second
		}
		start := time.Now()
		for !cond() {
			if time.Since(start) > limit {
				t.Fatalf("%s: not seen after %v", what, time.Since(start))
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("%s: seen after %v", what, time.Since(start).Round(time.Millisecond))
	}

	// Other process creates; this one uses it at once (nothing cached yet).
	if got := c.do("create " + key + " aes-256-gcm"); got != "ok " {
		t.Fatalf("child create: %s", got)
	}
	blob1, err := b.Wrap(ctx, key, []byte("v1 data"), nil)
	if err != nil {
		t.Fatal(err)
	}
	// Other process rotates; this one wraps at v2 with no restart.
	if got := c.do("rotate " + key); got != "ok 2" {
		t.Fatalf("child rotate: %s", got)
	}
	var blob2 []byte
	eventually("rotation by the other process", func() bool {
		blob2, err = b.Wrap(ctx, key, []byte("v2 data"), nil)
		h, _, _ := envelope.Decode(blob2)
		return err == nil && h.Version == 2
	})
	// Each process unwraps what the other wrapped.
	for blob, want := range map[string]string{hex.EncodeToString(blob1): "v1 data", hex.EncodeToString(blob2): "v2 data"} {
		if got := c.do("unwrap " + blob); got != "ok "+hex.EncodeToString([]byte(want)) {
			t.Fatalf("child unwrap: %s", got)
		}
	}
	got := c.do("wrap " + key + " " + hex.EncodeToString([]byte("from child")))
	childBlob, _ := hex.DecodeString(strings.TrimPrefix(got, "ok "))
	if u, err := b.Unwrap(ctx, childBlob, nil); err != nil || string(u.Plaintext) != "from child" || u.Version != 2 {
		t.Fatalf("unwrap child's blob: %+v %v", u, err)
	}
	// This process disables v1; the other refuses v1 blobs.
	if _, err := b.SetVersionState(ctx, key, 1, keys.Disabled); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Unwrap(ctx, blob1, nil); !errors.Is(err, keys.ErrVersionDisabled) {
		t.Fatalf("this process after its own disable: %v", err)
	}
	eventually("disable by the other process", func() bool {
		return c.do("unwrap "+hex.EncodeToString(blob1)) == "err disabled"
	})
	// And the reverse direction for a rotation this process makes.
	if _, err := b.RotateKey(ctx, key); err != nil {
		t.Fatal(err)
	}
	eventually("rotation by this process, in the other", func() bool {
		cb, _ := hex.DecodeString(strings.TrimPrefix(c.do("wrap "+key+" 00"), "ok "))
		h, _, err := envelope.Decode(cb)
		return err == nil && h.Version == 3
	})
}

// TestConcurrentRotationAcrossProcesses: two processes rotating the same
// key at once never publish two different objects under one version: every
// blob either process wrapped still unwraps afterwards.
func TestConcurrentRotationAcrossProcesses(t *testing.T) {
	b := open(t, func(c *hsm.Config) { c.MetadataMaxAge = -1 })
	ctx := context.Background()
	if _, err := b.CreateKey(ctx, "fleet/race", keys.AES256GCM); err != nil {
		t.Fatal(err)
	}
	cmd := startChild(t, "server", tok.Label, tok.PINFile)
	cmd.Env = append(cmd.Env, "KW_MAX_AGE=-1ns")
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Wait() })
	c := &child{t: t, in: stdin, out: bufio.NewScanner(stdout)}

	var blobs [][]byte
	var mu sync.Mutex
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // the child rotates and wraps
		defer wg.Done()
		for range 15 {
			if got := c.do("rotate fleet/race"); !strings.HasPrefix(got, "ok") {
				t.Errorf("child rotate: %s", got)
			}
			got := c.do("wrap fleet/race 6368696c64")
			if blob, ok := strings.CutPrefix(got, "ok "); ok {
				bb, _ := hex.DecodeString(blob)
				mu.Lock()
				blobs = append(blobs, bb)
				mu.Unlock()
			}
		}
	}()
	go func() { // this process rotates and wraps
		defer wg.Done()
		for range 15 {
			if _, err := b.RotateKey(ctx, "fleet/race"); err != nil {
				t.Errorf("rotate: %v", err)
			}
			if blob, err := b.Wrap(ctx, "fleet/race", []byte("child"), nil); err == nil {
				mu.Lock()
				blobs = append(blobs, blob)
				mu.Unlock()
			}
		}
	}()
	wg.Wait()
	if len(blobs) < 10 {
		t.Fatalf("only %d wraps succeeded", len(blobs))
	}
	for i, blob := range blobs {
		if _, err := b.Unwrap(ctx, blob, nil); err != nil {
			t.Errorf("blob %d: %v", i, err)
		}
	}
	info, err := b.DescribeKey(ctx, "fleet/race")
	if err != nil {
		t.Fatal(err)
	}
	// On SoftHSM2 key changes are serialised across processes (crossLock):
	// none is lost to a concurrent one.
	if len(info.Versions) != 31 {
		t.Errorf("key at v%d after 30 rotations, want v31", len(info.Versions))
	}
	t.Logf("%d blobs, key at v%d after 30 concurrent rotations", len(blobs), len(info.Versions))
}

type recoverySummary struct {
	OK, Unavailable, Other, Wrong int
	OtherErrs                     []string
	Blobs                         int
	BlobsBad                      int
	RecoveredAfterMove            time.Duration
	RecoveredAfterFinalize        time.Duration
	ReinitsAfterMove, Reinits     int64
}

// countHandler counts log records with one message.
type countHandler struct {
	msg string
	n   *atomic.Int64
}

func (h countHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h countHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.n.Add(1)
	}
	return nil
}
func (h countHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h countHandler) WithGroup(string) slog.Handler      { return h }

// childRecovery runs 4 goroutines of wrap+unwrap on two keys while the
// token directory is moved away and put back, and while the module is
// finalised behind the backend's back; it reports what it saw as JSON.
func childRecovery() int {
	ctx := context.Background()
	cfg := childConfig()
	var recoveries atomic.Int64
	cfg.Logger = slog.New(countHandler{msg: "pkcs11 token recovered", n: &recoveries})
	b, err := hsm.Open(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "open:", err)
		return 1
	}
	defer b.Close()
	names := []string{"recovery/a", "recovery/b"}
	for _, n := range names {
		if _, err := b.CreateKey(ctx, n, keys.AES256GCM); err != nil {
			fmt.Fprintln(os.Stderr, "create:", err)
			return 1
		}
	}
	var sum recoverySummary
	var mu sync.Mutex
	type wrapped struct {
		name string
		pt   []byte
		blob []byte
	}
	var kept []wrapped
	var stop atomic.Bool
	var pause sync.RWMutex
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				pause.RLock()
				name := names[(g+i)%2]
				pt := []byte(fmt.Sprintf("%s/%d/%d", name, g, i))
				blob, err := b.Wrap(ctx, name, pt, keys.Context{"g": fmt.Sprint(g)})
				var u keys.Unwrapped
				if err == nil {
					u, err = b.Unwrap(ctx, blob, keys.Context{"g": fmt.Sprint(g)})
				}
				pause.RUnlock()
				mu.Lock()
				switch {
				case err == nil && (u.Name != name || !bytes.Equal(u.Plaintext, pt)):
					sum.Wrong++
				case err == nil:
					sum.OK++
					if rand.IntN(20) == 0 {
						kept = append(kept, wrapped{name, pt, blob})
					}
				case errors.Is(err, keys.ErrUnavailable):
					sum.Unavailable++
				default:
					sum.Other++
					if len(sum.OtherErrs) < 5 {
						sum.OtherErrs = append(sum.OtherErrs, err.Error())
					}
				}
				mu.Unlock()
				if err != nil {
					time.Sleep(5 * time.Millisecond)
				}
			}
		}()
	}
	waitOK := func() time.Duration {
		start := time.Now()
		for time.Since(start) < 30*time.Second {
			if _, err := b.Wrap(ctx, names[0], []byte("probe"), nil); err == nil {
				return time.Since(start)
			}
			time.Sleep(10 * time.Millisecond)
		}
		return -1
	}
	// more waits until count (read under mu) has grown by n (a bound far
	// above that, 30 s, only ends a hang).
	more := func(n int, count func() int) {
		mu.Lock()
		want := count() + n
		mu.Unlock()
		for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
			mu.Lock()
			got := count()
			mu.Unlock()
			if got >= want {
				return
			}
		}
	}
	// moreOK: the load succeeded n more times; moreTries: it ran n more
	// operations, whatever their result.
	moreOK := func(n int) { more(n, func() int { return sum.OK }) }
	moreTries := func(n int) {
		more(n, func() int { return sum.OK + sum.Unavailable + sum.Other + sum.Wrong })
	}
	tokenDir := os.Getenv("KW_TOKEN_DIR")
	moreOK(20)
	// 1. The token directory is deleted under load and re-created from a
	// copy (what restoring a backup does).
	// The copy must live outside the tokendir: two token directories with one
	// serial there abort SoftHSM2's C_Initialize (an assertion in SlotManager).
	backupParent, err := os.MkdirTemp("", "keyward-token-backup-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(backupParent)
	backup := filepath.Join(backupParent, "token")
	if out, err := exec.Command("cp", "-a", tokenDir, backup).CombinedOutput(); err != nil {
		fmt.Fprintln(os.Stderr, "backup:", err, string(out))
		return 1
	}
	// Delete: move it out of the tokendir atomically (SoftHSM2 keeps
	// writing its generation file while we would delete file by file).
	if err := os.Rename(tokenDir, filepath.Join(backupParent, "deleted")); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	moreTries(20) // the load meets the missing token
	// Restore: whatever SoftHSM2 re-created meanwhile goes, the copy comes
	// back under the same name in one rename.
	staged := filepath.Join(backupParent, "staged") // outside the tokendir, same file system
	if out, err := exec.Command("cp", "-a", backup, staged).CombinedOutput(); err != nil {
		fmt.Fprintln(os.Stderr, "stage:", err, string(out))
		return 1
	}
	os.RemoveAll(tokenDir)
	if err := os.Rename(staged, tokenDir); err != nil {
		fmt.Fprintln(os.Stderr, "restore:", err)
		return 1
	}
	sum.RecoveredAfterMove = waitOK()
	sum.ReinitsAfterMove = recoveries.Load()
	moreOK(20)
	// 2. Someone finalises the module behind the backend (with the load
	// paused at an operation boundary: C_Finalize during a call crashes
	// SoftHSM2 whoever calls it).
	pause.Lock()
	p := pkcs11.New(os.Getenv("KW_MODULE"))
	p.Finalize()
	pause.Unlock()
	sum.RecoveredAfterFinalize = waitOK()
	sum.Reinits = recoveries.Load()
	moreOK(20)
	stop.Store(true)
	wg.Wait()
	for _, w := range kept {
		u, err := b.Unwrap(ctx, w.blob, keys.Context{"g": strings.Split(string(w.pt), "/")[2]})
		if err != nil || u.Name != w.name || !bytes.Equal(u.Plaintext, w.pt) {
			sum.BlobsBad++
		}
	}
	sum.Blobs = len(kept)
	json.NewEncoder(os.Stdout).Encode(sum)
	return 0
}

// TestRecoveryUnderLoad: the token directory is moved away and restored,
// and the module is finalised, under load from 4 goroutines. The backend
// recovers without a restart, never crashes, and never uses a wrong key.
func TestRecoveryUnderLoad(t *testing.T) {
	softhsmtest := tok
	pin, err := softhsmtest.InitToken("recovery")
	if err != nil {
		t.Fatal(err)
	}
	pinFile := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(pinFile, []byte(pin), 0o600); err != nil {
		t.Fatal(err)
	}
	dir, err := softhsmtest.TokenDirOf("recovery")
	if err != nil {
		t.Fatal(err)
	}
	cmd := startChild(t, "recovery", "recovery", pinFile)
	cmd.Env = append(cmd.Env, "KW_TOKEN_DIR="+dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("recovery child failed (a crash here is a bug): %v\n%s", err, stderr.String())
	}
	var sum recoverySummary
	if err := json.Unmarshal(out, &sum); err != nil {
		t.Fatalf("child output %q: %v", out, err)
	}
	t.Logf("ok=%d unavailable=%d other=%d wrong=%d kept blobs=%d; token dir deleted+restored: serving again after %v (%d re-initialisations); module finalised: after %v (%d in all)",
		sum.OK, sum.Unavailable, sum.Other, sum.Wrong, sum.Blobs, sum.RecoveredAfterMove, sum.ReinitsAfterMove, sum.RecoveredAfterFinalize, sum.Reinits)
	if sum.Wrong != 0 || sum.BlobsBad != 0 {
		t.Errorf("wrong-key results: %d, blobs that no longer unwrap: %d", sum.Wrong, sum.BlobsBad)
	}
	if sum.RecoveredAfterMove < 0 || sum.RecoveredAfterFinalize < 0 {
		t.Errorf("did not recover within 10 s")
	}
	if sum.Other != 0 {
		t.Errorf("errors other than Unavailable during the outage: %d, e.g. %q", sum.Other, sum.OtherErrs)
	}
	if sum.OK == 0 || sum.Reinits <= sum.ReinitsAfterMove {
		t.Errorf("no success, or the finalised module was not re-initialised: %+v", sum)
	}
}
