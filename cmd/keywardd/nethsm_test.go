package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	pb "github.com/keyward/keyward/api/keyward/v1"
	softhsmtest "github.com/keyward/keyward/softhsm-test"
)

// envNetHSMBench runs TestNetworkHSMBench: the time each measurement
// lasts (`make bench-nethsm` sets it). The test is skipped without it.
const envNetHSMBench = "KEYWARD_NETHSM_BENCH"

// envNetHSMConfig: top-level config lines for keywardd in
// TestNetworkHSMBench, to compare settings (audit_sync = "write").
const envNetHSMConfig = "KEYWARD_NETHSM_CONFIG"

// envNetHSMRTT: the round trip the bench adds to every PKCS#11 call (a
// Go duration, 100us to 20ms; 1ms when unset).
const envNetHSMRTT = "KEYWARD_NETHSM_RTT"

// defaultRTT: 0.5 ms each way, a network HSM in the same data centre.
const defaultRTT = time.Millisecond

// netRTT is the round trip the latency module (and the p11-kit proxy)
// adds to every PKCS#11 call; TestNetworkHSMBench sets it from
// $KEYWARD_NETHSM_RTT.
var netRTT = defaultRTT

// benchRTT reads $KEYWARD_NETHSM_RTT.
func benchRTT() (time.Duration, error) {
	v := os.Getenv(envNetHSMRTT)
	if v == "" {
		return defaultRTT, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 100*time.Microsecond || d > 20*time.Millisecond {
		return 0, fmt.Errorf("%s=%q: want a duration from 100us to 20ms", envNetHSMRTT, v)
	}
	return d, nil
}

// TestNetworkHSMBench measures keywardd on a network HSM (the latency
// module in front of SoftHSM2, netRTT per call) against the device's own
// rate in the same run: a raw miekg/pkcs11 loop in this process on the same
// module, one session per goroutine, making the same calls (Init, then the
// binding's single-part call, which asks for the output length first: 3
// round trips), and the floor of 2 round trips per operation (Init and one
// call), callers/(2 x netRTT). A third column is keyward's own device layer
// (layerOps) on the same keys: what keywardd's device side does without the
// socket in front of it. Rounds alternate the three; the table has the
// medians, and the CPU each used per operation. docs/performance.md has a
// run's table.
func TestNetworkHSMBench(t *testing.T) {
	d, err := time.ParseDuration(os.Getenv(envNetHSMBench))
	if err != nil {
		t.Skipf("set %s to a duration per measurement (make bench-nethsm) to run it", envNetHSMBench)
	}
	if netRTT, err = benchRTT(); err != nil {
		t.Fatal(err)
	}
	softhsmtest.Need(t, tok)
	t.Run("latency module", func(t *testing.T) {
		so := latencyModule(t)
		lat := softhsmtest.Latency{Target: tok.Module, RoundTrip: netRTT}
		kw := startNetDaemon(t, "net-latency", so, lat.Env())
		raw := newRawOps(t, so, lat.Env(), true)
		layer := &layerOps{module: so, keys: kw}
		t.Logf("keywardd through the latency module (%v round trip per PKCS#11 call), %v per measurement, medians of 3:\n%s",
			netRTT, d, benchTable(t, d, kw, raw, layer, []string{"wrap", "unwrap", "mac", "sign"}, []string{"wrap", "mac"}))
		off := startNetDaemon(t, "net-latency-off", so, lat.Env(), true)
		t.Logf("the audit log's share at 64 callers, medians of 3:\n%s", auditShare(t, d, kw, off, raw))
	})
	t.Run("p11-kit server", func(t *testing.T) {
		client := p11kitStack(t)
		kw := startNetDaemon(t, "net-p11kit", client.module, client.env)
		raw := newRawOps(t, client.module, client.env, false)
		layer := &layerOps{module: client.module, keys: kw}
		if kw.noAES == nil {
			t.Errorf("an aes-256-gcm key through p11-kit (its RPC does not carry CKM_AES_GCM's parameters): made, want UNSUPPORTED")
		}
		t.Logf("keywardd through p11-kit-client.so, p11-kit server and a proxy adding %v per round trip, %v per measurement, medians of 3:\n%s",
			netRTT, d, benchTable(t, d, kw, raw, layer, []string{"mac", "sign"}, []string{"mac"}))
	})
}

// startNetDaemon starts keywardd on module with env (and the top-level
// settings of $KEYWARD_NETHSM_CONFIG) and makes the keys the bench uses;
// noAudit: with audit_log = "off".
func startNetDaemon(t *testing.T, prefix, module string, env []string, noAudit ...bool) *keywardOps {
	dir := t.TempDir()
	sock := filepath.Join(dir, "k.sock")
	cfg := configFile(t, dir, sock, "")
	rewriteModule(t, cfg, tok.Module, module)
	if len(noAudit) > 0 && noAudit[0] {
		b, err := os.ReadFile(cfg)
		if err != nil {
			t.Fatal(err)
		}
		old := "audit_log = " + strconv.Quote(filepath.Join(dir, "audit.log"))
		if !bytes.Contains(b, []byte(old)) {
			t.Fatalf("%s has no %s", cfg, old)
		}
		if err := os.WriteFile(cfg, bytes.Replace(b, []byte(old), []byte(`audit_log = "off"`), 1), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if top := os.Getenv(envNetHSMConfig); top != "" {
		b, err := os.ReadFile(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(cfg, append([]byte(top+"\n"), b...), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	p := startDaemon(t, sock, env, "--config", cfg)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("keywardd's log:\n%s", p.stderr)
		}
	})
	k := newKeywardOps(t, dial(t, sock), prefix)
	k.pid = p.cmd.Process.Pid
	return k
}

// cpuTime is the CPU time (user and system, every thread) process pid has
// used so far, from /proc/PID/stat; pid 0 is this process.
func cpuTime(t *testing.T, pid int) time.Duration {
	t.Helper()
	if pid == 0 {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			t.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command's closing parenthesis: utime and stime
	// are the 12th and 13th, in clock ticks (USER_HZ, 100 per second on Linux).
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// measured is rate with the CPU time per operation of this process (the
// client, or the raw loop) and of keywardd (pid; 0 for none).
func measured(t *testing.T, n int, d time.Duration, pid int, f func(worker int) error) (rate float64, selfPerOp, daemonPerOp time.Duration) {
	self0, daemon0 := cpuTime(t, 0), time.Duration(0)
	if pid != 0 {
		daemon0 = cpuTime(t, pid)
	}
	rate = closedLoop(n, d, f)
	ops := rate * d.Seconds()
	selfPerOp = time.Duration(float64(cpuTime(t, 0)-self0) / ops)
	if pid != 0 {
		daemonPerOp = time.Duration(float64(cpuTime(t, pid)-daemon0) / ops)
	}
	return rate, selfPerOp, daemonPerOp
}

// benchTable measures ops at 1, 8 and 64 callers through keywardd, the
// raw loop and keyward's device layer in alternate rounds, the socket's
// floor, and batches of 100.
func benchTable(t *testing.T, d time.Duration, kw *keywardOps, raw *rawOps, layer *layerOps, ops, batches []string) string {
	rows := []string{"| op | callers | keywardd ops/s | raw loop ops/s | ratio | device layer ops/s | layer / raw | floor ops/s | keywardd / floor | CPU per op: keywardd / its client / raw loop / device layer |",
		"|---|---|---|---|---|---|---|---|---|---|"}
	for _, n := range []int{1, 8, 64} {
		var st []float64
		for range 3 {
			st = append(st, closedLoop(n, d, kw.op("status")))
		}
		rows = append(rows, fmt.Sprintf("| status (the socket's floor) | %d | %.0f | | | | | | | |", n, median(st)))
	}
	rawCPU := map[string]time.Duration{} // per op, at 64 callers
	for _, op := range ops {
		for _, n := range []int{1, 8, 64} {
			var k, r, l samples
			for range 3 {
				rate, client, daemon := measured(t, n, d, kw.pid, kw.op(op))
				k.add(rate, daemon, client)
				rate, loop, _ := measured(t, n, d, 0, raw.op(op))
				r.add(rate, loop, 0)
				rate, cpu := layer.measure(t, op, n, d)
				l.add(rate, cpu, 0)
			}
			rawCPU[op] = r.cpu()
			floor := float64(n) / (2 * netRTT.Seconds())
			rows = append(rows, fmt.Sprintf("| %s | %d | %.0f | %.0f | %.2f | %.0f | %.2f | %.0f | %.2f | %v / %v / %v / %v |",
				op, n, k.rate(), r.rate(), k.rate()/r.rate(), l.rate(), l.rate()/r.rate(), floor, k.rate()/floor,
				k.cpu(), k.cpu2(), r.cpu(), l.cpu()))
		}
	}
	for _, op := range batches {
		var per []float64
		for range 3 {
			start := time.Now()
			calls := 0
			for time.Since(start) < d {
				if err := kw.batch(op, 100); err != nil {
					t.Fatal(err)
				}
				calls++
			}
			per = append(per, float64(time.Since(start).Microseconds())/float64(calls)/1000)
		}
		// 64 items at once (limits.batch_parallelism), 2 round trips each;
		// and the CPU the device's side alone takes for 100 operations of
		// 2 calls on this machine's cores (the raw loop's CPU per call: it
		// makes 3 per operation).
		floor := math.Ceil(100.0/64) * 2 * float64(netRTT.Microseconds()) / 1000
		cpuFloor := 100 * 2 * rawCPU[op].Seconds() / 3 * 1000 / float64(runtime.NumCPU())
		rows = append(rows, fmt.Sprintf("| batch of 100 %s | 1 | %.1f ms per call | | | | | %.1f ms; device CPU %.1f ms | %.2f | |",
			op, median(per), floor, cpuFloor, median(per)/max(floor, cpuFloor)))
	}
	return strings.Join(rows, "\n")
}

// auditShare measures mac at 64 callers through keywardd with its audit
// log (kw, audit_sync as configured: fsync by default) and without one
// (off), against the raw loop, in alternate rounds.
func auditShare(t *testing.T, d time.Duration, kw, off *keywardOps, raw *rawOps) string {
	var on, none, r samples
	for range 3 {
		rate, client, daemon := measured(t, 64, d, kw.pid, kw.op("mac"))
		on.add(rate, daemon, client)
		rate, client, daemon = measured(t, 64, d, off.pid, off.op("mac"))
		none.add(rate, daemon, client)
		rate, loop, _ := measured(t, 64, d, 0, raw.op("mac"))
		r.add(rate, loop, 0)
	}
	rows := []string{"| keywardd mac, 64 callers | ops/s | / raw loop | CPU per op: keywardd / client |", "|---|---|---|---|"}
	for _, x := range []struct {
		name string
		s    *samples
	}{{"audit log (as configured)", &on}, {`audit_log = "off"`, &none}} {
		rows = append(rows, fmt.Sprintf("| %s | %.0f | %.2f | %v / %v |", x.name, x.s.rate(), x.s.rate()/r.rate(), x.s.cpu(), x.s.cpu2()))
	}
	return strings.Join(append(rows, fmt.Sprintf("| raw loop | %.0f | 1 | %v (the loop's) |", r.rate(), r.cpu())), "\n")
}

// samples are one row's measurements: rates, and one or two CPU times per
// operation, of the rounds.
type samples struct{ rates, cpus, cpus2 []float64 }

func (s *samples) add(rate float64, cpu, cpu2 time.Duration) {
	s.rates, s.cpus, s.cpus2 = append(s.rates, rate), append(s.cpus, float64(cpu)), append(s.cpus2, float64(cpu2))
}

func (s *samples) rate() float64 { return median(s.rates) }

func (s *samples) cpu() time.Duration {
	return time.Duration(median(s.cpus)).Round(time.Microsecond)
}

func (s *samples) cpu2() time.Duration {
	return time.Duration(median(s.cpus2)).Round(time.Microsecond)
}

// layerOps measures keyward's own device layer on the same module and
// keys: `keywardd-admin bench-baseline` (the hsm package as keywardd runs it:
// its session pool, one-call operations and worker threads; no socket, no
// policy, no audit) in a process of its own.
type layerOps struct {
	module string
	keys   *keywardOps // whose keys it uses
	start  map[string]time.Duration
	admin  string // keywardd-admin, which runs keywardd's device commands
}

// layerKeys are the keys' kinds per op, as keywardOps names them.
var layerKeys = map[string]string{"wrap": "aes", "unwrap": "aes", "mac": "hmac", "sign": "ecdsa"}

// measure runs op at n workers for d and returns the rate and the CPU per
// operation, without the CPU that starting up and opening the token take
// (that of a run making one call).
func (l *layerOps) measure(t *testing.T, op string, n int, d time.Duration) (float64, time.Duration) {
	t.Helper()
	if l.start == nil {
		l.start = map[string]time.Duration{}
	}
	if _, ok := l.start[op]; !ok {
		_, l.start[op] = l.run(t, op, 0, 0)
	}
	out, cpu := l.run(t, op, n, d)
	var m struct {
		Ops    float64 `json:"ops"`
		Rate   float64 `json:"ops_per_s"`
		Errors int     `json:"errors"`
	}
	if err := json.Unmarshal(out, &m); err != nil || m.Errors != 0 || m.Ops == 0 {
		t.Fatalf("keywardd-admin bench-baseline --op %s --concurrency %d: %v, %d errors:\n%s", op, n, err, m.Errors, out)
	}
	return m.Rate, (cpu - l.start[op]) / time.Duration(m.Ops)
}

// run runs bench-baseline (n 0: one check call) and returns its output
// and the CPU time it used.
func (l *layerOps) run(t *testing.T, op string, n int, d time.Duration) ([]byte, time.Duration) {
	t.Helper()
	if l.admin == "" {
		// Not beside the test's keywardd: TestAdminMissing needs it absent.
		l.admin = filepath.Join(t.TempDir(), "keywardd-admin")
		if out, err := exec.Command("go", "build", "-o", l.admin, "../keywardd-admin").CombinedOutput(); err != nil {
			t.Fatalf("build keywardd-admin: %v\n%s", err, out)
		}
	}
	args := []string{"bench-baseline", "--op", op, "--key", l.keys.key(layerKeys[op]), "--token", tok.Label,
		"--module", l.module, "--pin-file", tok.PINFile, "--payload", "32"}
	if n > 0 {
		args = append(args, "--concurrency", strconv.Itoa(n), "--duration", d.String())
	}
	cmd := exec.Command(l.admin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("keywardd-admin %s: %v\n%s", strings.Join(args, " "), err, stderr.Bytes())
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	return out, time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// closedLoop runs f on n goroutines for d and returns the calls per second.
func closedLoop(n int, d time.Duration, f func(worker int) error) float64 {
	var done atomic.Int64
	var failed atomic.Value
	stop := time.Now().Add(d)
	var wg sync.WaitGroup
	for w := range n {
		wg.Go(func() {
			for time.Now().Before(stop) {
				if err := f(w); err != nil {
					failed.Store(err)
					return
				}
				done.Add(1)
			}
		})
	}
	wg.Wait()
	if err, ok := failed.Load().(error); ok {
		panic(err)
	}
	return float64(done.Load()) / d.Seconds()
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// keywardOps are the measured calls through keywardd's socket.
type keywardOps struct {
	c      pb.KeywardClient
	pid    int    // keywardd's
	prefix string // of the keys' names: each stack makes its own on the shared token
	blob   []byte
	noAES  error // CreateKey's error for aes-256-gcm, on a module without CKM_AES_GCM
}

// key is the name of the bench's key of kind.
func (k *keywardOps) key(kind string) string { return k.prefix + "/" + kind }

func newKeywardOps(t *testing.T, c pb.KeywardClient, prefix string) *keywardOps {
	ctx := context.Background()
	k := &keywardOps{c: c, prefix: prefix}
	for _, kt := range []struct{ name, typ string }{{k.key("hmac"), "hmac-sha256"}, {k.key("ecdsa"), "ecdsa-p256"}} {
		if _, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: kt.name, KeyType: kt.typ}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: k.key("aes"), KeyType: "aes-256-gcm"}); reasonOf(err) == "UNSUPPORTED" {
		k.noAES = err
		return k
	} else if err != nil {
		t.Fatal(err)
	}
	w, err := c.Wrap(ctx, &pb.WrapRequest{Key: k.key("aes"), Plaintext: make([]byte, 32)})
	if err != nil {
		t.Fatal(err)
	}
	k.blob = w.Ciphertext
	return k
}

func (k *keywardOps) op(name string) func(int) error {
	ctx, msg := context.Background(), make([]byte, 32)
	return map[string]func(int) error{
		"wrap": func(int) error {
			_, err := k.c.Wrap(ctx, &pb.WrapRequest{Key: k.key("aes"), Plaintext: msg})
			return err
		},
		"unwrap": func(int) error { _, err := k.c.Unwrap(ctx, &pb.UnwrapRequest{Ciphertext: k.blob}); return err },
		"mac":    func(int) error { _, err := k.c.Mac(ctx, &pb.MacRequest{Key: k.key("hmac"), Message: msg}); return err },
		"sign": func(int) error {
			_, err := k.c.Sign(ctx, &pb.SignRequest{Key: k.key("ecdsa"), Message: msg})
			return err
		},
		"status": func(int) error { _, err := k.c.Status(ctx, &pb.StatusRequest{}); return err },
	}[name]
}

func (k *keywardOps) batch(op string, n int) error {
	ctx, msg := context.Background(), make([]byte, 32)
	if op == "mac" {
		items := make([]*pb.MacRequest, n)
		for i := range items {
			items[i] = &pb.MacRequest{Key: k.key("hmac"), Message: msg}
		}
		r, err := k.c.BatchMac(ctx, &pb.BatchMacRequest{Items: items})
		if err == nil && r.GetResults()[n-1].GetError() != nil {
			err = fmt.Errorf("item: %v", r.GetResults()[n-1].GetError())
		}
		return err
	}
	items := make([]*pb.WrapRequest, n)
	for i := range items {
		items[i] = &pb.WrapRequest{Key: k.key("aes"), Plaintext: msg}
	}
	r, err := k.c.BatchWrap(ctx, &pb.BatchWrapRequest{Items: items})
	if err == nil && r.GetResults()[n-1].GetError() != nil {
		err = fmt.Errorf("item: %v", r.GetResults()[n-1].GetError())
	}
	return err
}

// rawOps are the same operations made directly on the module, in this
// process, one session per worker, on token keys of their own: private,
// sensitive and not extractable, as keywardd's are (SoftHSM2 checks a
// token object's file on every use, a session object's never).
type rawOps struct {
	p                *pkcs11.Ctx
	sessions         []pkcs11.SessionHandle
	aes, hmac, ecdsa pkcs11.ObjectHandle
	ct, iv           []byte
}

// newRawOps loads module in this process with env set; withAES: the
// module carries CKM_AES_GCM (p11-kit's RPC does not).
func newRawOps(t *testing.T, module string, env []string, withAES bool) *rawOps {
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	so := module
	p := pkcs11.New(so)
	if p == nil {
		t.Fatalf("load %s", so)
	}
	if err := p.Initialize(); err != nil {
		t.Fatal(err)
	}
	r := &rawOps{p: p}
	t.Cleanup(func() { p.Finalize(); p.Destroy() })
	slot := findSlot(t, p, tok.Label)
	for i := range 64 {
		sh, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if err := p.Login(sh, pkcs11.CKU_USER, tok.PIN); err != nil {
				t.Fatal(err)
			}
		}
		r.sessions = append(r.sessions, sh)
	}
	r.makeKeys(t, withAES)
	return r
}

func (r *rawOps) makeKeys(t *testing.T, withAES bool) {
	sh := r.sessions[0]
	secret := func(mech, kt uint, usage uint) pkcs11.ObjectHandle {
		h, err := r.p.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, kt),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32), pkcs11.NewAttribute(usage, true),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, usage == pkcs11.CKA_ENCRYPT), pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		})
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	r.hmac = secret(pkcs11.CKM_GENERIC_SECRET_KEY_GEN, pkcs11.CKK_GENERIC_SECRET, pkcs11.CKA_SIGN)
	_, priv, err := r.p.GenerateKeyPair(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)},
		[]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07})},
		[]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false), pkcs11.NewAttribute(pkcs11.CKA_SIGN, true), pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true)})
	if err != nil {
		t.Fatal(err)
	}
	r.ecdsa = priv
	if !withAES {
		return
	}
	r.aes = secret(pkcs11.CKM_AES_KEY_GEN, pkcs11.CKK_AES, pkcs11.CKA_ENCRYPT)
	r.iv = make([]byte, 12)
	if r.ct, err = r.encrypt(sh, r.iv, make([]byte, 32)); err != nil {
		t.Fatal(err)
	}
}

// encrypt is a wrap's calls: a fresh IV (nil: r.iv, for the blob unwrap
// opens), EncryptInit, Encrypt.
func (r *rawOps) encrypt(sh pkcs11.SessionHandle, iv, pt []byte) ([]byte, error) {
	if iv == nil {
		iv = make([]byte, 12)
		rand.Read(iv)
	}
	params := pkcs11.NewGCMParams(iv, nil, 128)
	defer params.Free()
	if err := r.p.EncryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, r.aes); err != nil {
		return nil, err
	}
	return r.p.Encrypt(sh, pt)
}

func (r *rawOps) op(name string) func(int) error {
	msg := make([]byte, 32)
	digest := sha256.Sum256(msg)
	sign := func(sh pkcs11.SessionHandle, mech uint, key pkcs11.ObjectHandle, in []byte) error {
		if err := r.p.SignInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, key); err != nil {
			return err
		}
		_, err := r.p.Sign(sh, in)
		return err
	}
	return map[string]func(int) error{
		"wrap": func(w int) error { _, err := r.encrypt(r.sessions[w], nil, msg); return err },
		"unwrap": func(w int) error {
			params := pkcs11.NewGCMParams(r.iv, nil, 128)
			defer params.Free()
			if err := r.p.DecryptInit(r.sessions[w], []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, r.aes); err != nil {
				return err
			}
			_, err := r.p.Decrypt(r.sessions[w], r.ct)
			return err
		},
		"mac":  func(w int) error { return sign(r.sessions[w], pkcs11.CKM_SHA256_HMAC, r.hmac, msg) },
		"sign": func(w int) error { return sign(r.sessions[w], pkcs11.CKM_ECDSA, r.ecdsa, digest[:]) },
	}[name]
}

func findSlot(t *testing.T, p *pkcs11.Ctx, label string) uint {
	t.Helper()
	slots, err := p.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range slots {
		if ti, err := p.GetTokenInfo(s); err == nil && ti.Label == label {
			return s
		}
	}
	t.Fatalf("no token %q", label)
	return 0
}

// p11kit is a PKCS#11 module forwarding to another process: p11-kit's
// client module, with the environment that points it at its server.
type p11kit struct {
	module string
	env    []string
}

// p11kitClient is Debian's p11-kit client module (package p11-kit-modules).
const p11kitClient = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"

// p11kitStack runs `p11-kit server` for the test token and, between it and
// its clients, a proxy that delays every message by half of netRTT: the
// token forwarded over a network, as a network HSM's client library does.
func p11kitStack(t *testing.T) p11kit {
	server, err := exec.LookPath("p11-kit")
	if err == nil {
		_, err = os.Stat(p11kitClient)
	}
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("p11-kit server or client missing (apt-get install p11-kit p11-kit-modules): %v", err)
		}
		t.Skipf("p11-kit server or client missing (apt-get install p11-kit p11-kit-modules): %v", err)
	}
	dir := t.TempDir()
	srvSock, proxySock := filepath.Join(dir, "server.sock"), filepath.Join(dir, "proxy.sock")
	cmd := exec.Command(server, "server", "-f", "-n", srvSock, "--provider", tok.Module, "pkcs11:token="+tok.Label)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(srvSock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("p11-kit server did not make its socket")
		}
	}
	delayProxy(t, proxySock, srvSock, netRTT/2)
	return p11kit{module: p11kitClient, env: []string{"P11_KIT_SERVER_ADDRESS=unix:path=" + proxySock}}
}

// delayProxy accepts on listen and forwards each connection to target,
// holding every chunk for delay in each direction.
func delayProxy(t *testing.T, listen, target string, delay time.Duration) {
	l, err := net.Listen("unix", listen)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("unix", target)
			if err != nil {
				c.Close()
				continue
			}
			go delayCopy(s, c, delay)
			go delayCopy(c, s, delay)
		}
	}()
}

func delayCopy(dst, src net.Conn, delay time.Duration) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			time.Sleep(delay)
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
