package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/miekg/pkcs11"
	"golang.org/x/sys/unix"

	pb "github.com/keyward/keyward/api/keyward/v1"
	softhsmtest "github.com/keyward/keyward/softhsm-test"
)

// latencyModule builds softhsm-test's latency module in front of the test
// token, or skips where it cannot be built outside CI.
func latencyModule(t *testing.T) string {
	t.Helper()
	so, err := softhsmtest.BuildLatencyModule(t.TempDir())
	if errors.Is(err, softhsmtest.ErrNoCompiler) && os.Getenv("CI") == "" {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return so
}

// TestCallsPerOperation counts, through the latency module, the PKCS#11
// calls keywardd makes for one operation on a key whose record and object
// handle it has cached (metadata_max_age): on a network HSM each is a round
// trip. Every single-part operation is its Init and one call, with no
// length query (docs/performance.md states these counts). A module that
// asks for more room than the output's size (CKR_BUFFER_TOO_SMALL, the
// operation left active) gets the single-part call once more, with the
// length it asked for, and the operation succeeds. Both with calls made
// from Go (no added round trip) and on the worker threads (a round trip
// of 300 us, which makes keywardd hand the operations over; its metric
// says so).
func TestCallsPerOperation(t *testing.T) {
	softhsmtest.Need(t, tok)
	so := latencyModule(t)
	for _, rtt := range []time.Duration{0, 300 * time.Microsecond} {
		for _, short := range []bool{false, true} {
			t.Run(fmt.Sprintf("round trip %v short buffer %v", rtt, short), func(t *testing.T) { callsPerOperation(t, so, rtt, short) })
		}
	}
}

func callsPerOperation(t *testing.T, so string, rtt time.Duration, short bool) {
	dir := t.TempDir()
	sock, metrics := filepath.Join(dir, "k.sock"), filepath.Join(dir, "m.sock")
	lat := softhsmtest.Latency{Target: tok.Module, CountsFile: filepath.Join(dir, "counts"), ShortBuffer: short, RoundTrip: rtt}
	cfg := configFile(t, dir, sock, `metadata_max_age = "1h"`)
	rewriteModule(t, cfg, tok.Module, so)
	prependConfig(t, cfg, fmt.Sprintf("metrics_socket = %q", metrics))
	startDaemon(t, sock, lat.Env(), "--config", cfg)
	c := dial(t, sock)
	ctx := context.Background()
	// Each stack makes its own keys on the shared token.
	key := func(kind string) string { return fmt.Sprintf("calls-%v-%v/%s", rtt.Microseconds(), short, kind) }
	defer func() {
		// After the operations below, more than one window of the
		// module's pace (hsm/offload.go).
		want := 0.0
		if rtt > 0 {
			want = 1
		}
		d := &scheduledDaemon{metrics: metrics}
		if got := d.metric(t, "keyward_backend_on_workers"); got != want {
			t.Errorf("keyward_backend_on_workers %v with a round trip of %v, want %v", got, rtt, want)
		}
		// Workers only with a round trip; all SCHED_BATCH where this
		// process may use it too (no seccomp filter or policy refuses it).
		batch, normal := d.metric(t, `keyward_backend_worker_threads{policy="batch"}`), d.metric(t, `keyward_backend_worker_threads{policy="normal"}`)
		if (batch+normal > 0) != (want == 1) || schedBatchAllowed() && normal != 0 {
			t.Errorf("worker threads with a round trip of %v: %v batch, %v normal; want them only with a round trip, and batch where allowed", rtt, batch, normal)
		}
	}()
	final := uint64(1)
	if short {
		final = 2
	}

	for _, k := range []struct{ name, typ string }{
		{key("aes"), "aes-256-gcm"}, {key("hmac"), "hmac-sha256"}, {key("ecdsa"), "ecdsa-p256"},
		{key("ed25519"), "ed25519"}, {key("rsa"), "rsa-3072-pss"},
	} {
		if _, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: k.name, KeyType: k.typ}); err != nil {
			t.Fatal(err)
		}
	}
	blob, err := c.Wrap(ctx, &pb.WrapRequest{Key: key("aes"), Plaintext: []byte("secret")})
	if err != nil {
		t.Fatal(err)
	}
	mac, err := c.Mac(ctx, &pb.MacRequest{Key: key("hmac"), Message: []byte("m")})
	if err != nil {
		t.Fatal(err)
	}
	sign := func(key string) func() error {
		return func() error { _, err := c.Sign(ctx, &pb.SignRequest{Key: key, Message: []byte("m")}); return err }
	}
	for _, tc := range []struct {
		op   string
		call func() error
		want map[string]uint64
	}{
		{"wrap", func() error {
			_, err := c.Wrap(ctx, &pb.WrapRequest{Key: key("aes"), Plaintext: []byte("secret")})
			return err
		}, map[string]uint64{"C_EncryptInit": 1, "C_Encrypt": final}},
		{"unwrap", func() error { _, err := c.Unwrap(ctx, &pb.UnwrapRequest{Ciphertext: blob.Ciphertext}); return err },
			map[string]uint64{"C_DecryptInit": 1, "C_Decrypt": final}},
		{"mac", func() error {
			_, err := c.Mac(ctx, &pb.MacRequest{Key: key("hmac"), Message: []byte("m")})
			return err
		},
			map[string]uint64{"C_SignInit": 1, "C_Sign": final}},
		{"verify-mac version 1", func() error {
			_, err := c.VerifyMac(ctx, &pb.VerifyMacRequest{Key: key("hmac"), Version: 1, Message: []byte("m"), Mac: mac.Mac})
			return err
		}, map[string]uint64{"C_VerifyInit": 1, "C_Verify": 1}},
		{"sign ecdsa-p256", sign(key("ecdsa")), map[string]uint64{"C_SignInit": 1, "C_Sign": final}},
		{"sign ed25519", sign(key("ed25519")), map[string]uint64{"C_SignInit": 1, "C_Sign": final}},
		{"sign rsa-3072-pss", sign(key("rsa")), map[string]uint64{"C_SignInit": 1, "C_Sign": final}},
	} {
		t.Run(tc.op, func(t *testing.T) {
			if err := tc.call(); err != nil { // the first use finds the object
				t.Fatal(err)
			}
			before := counts(t, lat.CountsFile)
			if err := tc.call(); err != nil {
				t.Fatal(err)
			}
			if got := softhsmtest.Diff(before, counts(t, lat.CountsFile)); !maps.Equal(got, tc.want) {
				t.Errorf("PKCS#11 calls for one %s: %v, want %v", tc.op, got, tc.want)
			}
		})
	}
}

func counts(t *testing.T, path string) map[string]uint64 {
	t.Helper()
	c, err := softhsmtest.Counts(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// prependConfig puts top-level settings before a config file's tables.
func prependConfig(t *testing.T, cfg, lines string) {
	t.Helper()
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, append([]byte(lines+"\n"), b...), 0o600); err != nil {
		t.Fatal(err)
	}
}

// rewriteModule points a config file written by configFile at another
// PKCS#11 module.
func rewriteModule(t *testing.T, cfg, from, to string) {
	t.Helper()
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	old := "module = " + strconv.Quote(from)
	if !strings.Contains(string(b), old) {
		t.Fatalf("%s has no %s", cfg, old)
	}
	if err := os.WriteFile(cfg, []byte(strings.Replace(string(b), old, "module = "+strconv.Quote(to), 1)), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestPartitionSessionCap: a token that refuses sessions beyond its cap
// (CKR_SESSION_COUNT, as a partition shared with other applications does)
// makes calls wait for keywardd's own sessions, never fail, whether the
// cap is stated (sessions = 0 takes ulMaxSessionCount) or keywardd is
// configured for more than the token gives.
func TestPartitionSessionCap(t *testing.T) {
	softhsmtest.Need(t, tok)
	so := latencyModule(t)
	for _, tc := range []struct{ name, extra, key string }{
		{"stated cap", ``, "cap/stated"},
		{"more configured than the token gives", "sessions = 8", "cap/configured"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			sock := filepath.Join(dir, "k.sock")
			lat := softhsmtest.Latency{Target: tok.Module, RoundTrip: time.Millisecond, MaxSessions: 3}
			cfg := configFile(t, dir, sock, tc.extra)
			rewriteModule(t, cfg, tok.Module, so)
			startDaemon(t, sock, lat.Env(), "--config", cfg)
			c := dial(t, sock)
			ctx := context.Background()
			if _, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: tc.key, KeyType: "aes-256-gcm"}); err != nil {
				t.Fatal(err)
			}
			errs := make(chan error, 32)
			for range cap(errs) {
				go func() {
					_, err := c.Wrap(ctx, &pb.WrapRequest{Key: tc.key, Plaintext: []byte("x")})
					errs <- err
				}()
			}
			for range cap(errs) {
				if err := <-errs; err != nil {
					t.Errorf("a wrap with the partition's sessions all in use: %v", err)
				}
			}
		})
	}
}

// TestModuleWithoutFunctionList: a module whose C_GetFunctionList fails
// (the latency module with no target) is refused with an error naming the
// call. The binding does not check it: without the check its C_Initialize
// called through NULL and keywardd died of SIGSEGV.
func TestModuleWithoutFunctionList(t *testing.T) {
	softhsmtest.Need(t, tok)
	so := latencyModule(t)
	dir := t.TempDir()
	cfg := configFile(t, dir, filepath.Join(dir, "k.sock"), "")
	rewriteModule(t, cfg, tok.Module, so)
	cmd := exec.Command(bin, "--config", cfg)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KEYWARD_LATENCY_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() <= 0 {
		t.Fatalf("keywardd on a module without a function list: %v, want an exit status\n%s", err, out)
	}
	if !strings.Contains(string(out), "C_GetFunctionList failed") {
		t.Errorf("keywardd's output does not name the failed C_GetFunctionList:\n%s", out)
	}
}

// TestFailingInitIsNotTamper: a device whose C_DecryptInit fails
// (CKR_FUNCTION_FAILED, as a failing HSM says) makes unwrap fail as the
// device's failure (BACKEND_UNAVAILABLE), never as a wrong context or a
// tampered blob (DECRYPTION_FAILED, which the audit log would record as
// such), on both call paths.
func TestFailingInitIsNotTamper(t *testing.T) {
	softhsmtest.Need(t, tok)
	so := latencyModule(t)
	for _, rtt := range []time.Duration{0, 300 * time.Microsecond} {
		t.Run(fmt.Sprintf("round trip %v", rtt), func(t *testing.T) {
			dir := t.TempDir()
			sock := filepath.Join(dir, "k.sock")
			lat := softhsmtest.Latency{Target: tok.Module, RoundTrip: rtt, Fail: "C_DecryptInit", FailRV: pkcs11.CKR_FUNCTION_FAILED}
			cfg := configFile(t, dir, sock, "")
			rewriteModule(t, cfg, tok.Module, so)
			startDaemon(t, sock, lat.Env(), "--config", cfg)
			c := dial(t, sock)
			ctx := context.Background()
			name := fmt.Sprintf("failinit-%d/aes", rtt.Microseconds())
			if _, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: name, KeyType: "aes-256-gcm"}); err != nil {
				t.Fatal(err)
			}
			var blob []byte
			for range 20 { // more than a window of the module's pace
				w, err := c.Wrap(ctx, &pb.WrapRequest{Key: name, Plaintext: []byte("secret")})
				if err != nil {
					t.Fatal(err)
				}
				blob = w.Ciphertext
			}
			_, err := c.Unwrap(ctx, &pb.UnwrapRequest{Ciphertext: blob})
			if got := reasonOf(err); got != "BACKEND_UNAVAILABLE" {
				t.Errorf("unwrap with a failing C_DecryptInit: %v (%s), want BACKEND_UNAVAILABLE", err, got)
			}
		})
	}
}

// TestWorkersUnderUnitFilter runs keywardd on a module whose calls wait
// (the latency module, 300 us a round trip) under the seccomp rule of
// keyward.service that refuses sched_setscheduler with EPERM: the worker
// threads cannot run as SCHED_BATCH, say so in their metric, and carry the
// operations all the same.
func TestWorkersUnderUnitFilter(t *testing.T) {
	softhsmtest.Need(t, tok)
	if runtime.GOARCH != "amd64" {
		t.Skip("the filter is written for x86-64")
	}
	so := latencyModule(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	sock, metrics := filepath.Join(dir, "k.sock"), filepath.Join(dir, "m.sock")
	lat := softhsmtest.Latency{Target: tok.Module, RoundTrip: 300 * time.Microsecond}
	cfg := configFile(t, dir, sock, "")
	rewriteModule(t, cfg, tok.Module, so)
	prependConfig(t, cfg, fmt.Sprintf("metrics_socket = %q", metrics))
	cmd := exec.Command(self, "--", bin, "--config", cfg)
	cmd.Env = append(append(os.Environ(), lat.Env()...), envSeccompExec+"=resources")
	p := startCmd(t, sock, cmd)
	if status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid)); !strings.Contains(string(status), "Seccomp:\t2") {
		t.Fatalf("keywardd is not under a seccomp filter:\n%s", status)
	}
	c := dial(t, sock)
	ctx := context.Background()
	if _, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: "filtered/hmac", KeyType: "hmac-sha256"}); err != nil {
		t.Fatal(err)
	}
	d := &scheduledDaemon{metrics: metrics}
	// More than one window of the module's pace (hsm/offload.go), then
	// until an operation ran on a worker.
	for i := 0; i < 40 || d.metric(t, "keyward_backend_worker_operations_total") < 1; i++ {
		if i == 400 {
			t.Fatal("no operation ran on a worker thread in 400")
		}
		if _, err := c.Mac(ctx, &pb.MacRequest{Key: "filtered/hmac", Message: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	batch, normal := d.metric(t, `keyward_backend_worker_threads{policy="batch"}`), d.metric(t, `keyward_backend_worker_threads{policy="normal"}`)
	if batch != 0 || normal < 1 {
		t.Errorf("worker threads under the filter: %v batch, %v normal; want normal only", batch, normal)
	}
}

// schedBatchAllowed tells whether a thread of this process may switch
// itself to SCHED_BATCH, as keywardd's worker threads do. The probe's
// thread is locked and so ends with its goroutine.
func schedBatchAllowed() bool {
	ok := make(chan bool)
	go func() {
		runtime.LockOSThread()
		var param [1]int32 // struct sched_param: its priority, 0
		_, _, e := unix.RawSyscall(unix.SYS_SCHED_SETSCHEDULER, 0, unix.SCHED_BATCH, uintptr(unsafe.Pointer(&param[0])))
		ok <- e == 0
	}()
	return <-ok
}
