package main

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/audit"
	"github.com/keyward/keyward/internal/testutil"
	softhsmtest "github.com/keyward/keyward/softhsm-test"
)

// crashIterationsEnv sets TestCrashSafety's kill/restart count: 10 by
// default so `make test` stays fast, 100 under `make reliability`.
const crashIterationsEnv = "KEYWARD_CRASH_ITERATIONS"

// daemonProc is a keywardd the reliability tests kill and restart: unlike
// startDaemon it keeps no connection from its readiness probe open (a probe
// left reconnecting to a stale socket would pile up over 100 restarts).
type daemonProc struct {
	cmd    *exec.Cmd
	stderr *testutil.SyncBuffer
	conn   *grpc.ClientConn
	c      pb.KeywardClient
	ready  time.Duration // exec to the first answered Status
	exited chan struct{} // closed when the process has been reaped
	err    error         // its exit, once exited is closed
}

func launchDaemon(t *testing.T, sock, cfg string) *daemonProc {
	t.Helper()
	d := &daemonProc{cmd: exec.Command(bin, "--config", cfg), stderr: &testutil.SyncBuffer{}, exited: make(chan struct{})}
	d.cmd.Stderr = d.stderr
	start := time.Now()
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		d.err = d.cmd.Wait()
		close(d.exited)
	}()
	t.Cleanup(func() { d.stop(syscall.SIGKILL) })
	deadline := start.Add(30 * time.Second)
	for time.Now().Before(deadline) {
		conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		// One probe at a time, given the time it needs: Status lists the
		// keyring, which takes a while on a large one.
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		_, err = pb.NewKeywardClient(conn).Status(ctx, &pb.StatusRequest{})
		cancel()
		if err == nil {
			d.ready = time.Since(start)
			d.conn, d.c = conn, pb.NewKeywardClient(conn)
			return d
		}
		conn.Close()
		select {
		case <-d.exited:
			t.Fatalf("keywardd exited before serving: %v\n%s", d.err, d.stderr)
		case <-time.After(10 * time.Millisecond):
		}
	}
	t.Fatalf("keywardd did not come up within 30 s:\n%s", d.stderr)
	return nil
}

// stop sends sig (SIGKILL: a crash) and reaps the process.
func (d *daemonProc) stop(sig syscall.Signal) error {
	select {
	case <-d.exited:
		return d.err
	default:
	}
	if d.conn != nil {
		defer d.conn.Close()
	}
	d.cmd.Process.Signal(sig)
	<-d.exited
	return d.err
}

// writeConfig is config for any token of the test's SoftHSM2 configuration.
func writeConfig(t *testing.T, dir, sock, label, pinFile, extra string) string {
	t.Helper()
	p := configFile(t, dir, sock, extra)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(b), fmt.Sprintf("token = %q", tok.Label), fmt.Sprintf("token = %q", label), 1)
	s = strings.Replace(s, fmt.Sprintf("pin_file = %q", tok.PINFile), fmt.Sprintf("pin_file = %q", pinFile), 1)
	if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// reasonOf returns the ErrorInfo reason of a daemon error ("" if none).
func reasonOf(err error) string {
	st, ok := status.FromError(err)
	if !ok {
		return ""
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info.Reason
		}
	}
	return ""
}

// verifyAudit checks the hash chain of the audit log at path (its rotated
// files and the current one; torn tails moved aside are not part of it).
func verifyAudit(t *testing.T, path string) (audit.Result, int) {
	t.Helper()
	files, torn, err := audit.Chain(path)
	if err != nil {
		t.Fatalf("audit chain: %v", err)
	}
	res, err := audit.Verify(files...)
	if err != nil {
		t.Fatalf("audit verify %v: %v", files, err)
	}
	return res, len(torn)
}

// The crash-safety model. Each worker owns its keys; its operations run one
// at a time, so what the daemon acknowledged (OK returned) is exact, and at
// most one operation per worker (the one in flight at the kill) is unknown.

type crashKey struct {
	name   string
	states []pb.VersionState // acknowledged state of version i+1
}

func (k *crashKey) latestEnabled() uint32 {
	for i := len(k.states) - 1; i >= 0; i-- {
		if k.states[i] == pb.VersionState_ENABLED {
			return uint32(i + 1)
		}
	}
	return 0
}

type crashBlob struct {
	key     string
	version uint32
	pt      []byte
	ctx     map[string]string
	blob    []byte
}

type crashOp struct {
	kind    string // create, rotate, set-state, destroy
	key     string
	version uint32
	state   pb.VersionState
}

func (o crashOp) String() string {
	return fmt.Sprintf("%s %s v%d %v", o.kind, o.key, o.version, o.state)
}

type crashWorker struct {
	id      int
	keys    []*crashKey // this worker's keys, all iterations
	blobs   []crashBlob
	pending *crashOp // in flight (or failed) at the kill: may or may not have applied
	ops     int
	err     error // an error the daemon returned before it was killed
}

func (w *crashWorker) key(name string) *crashKey {
	for _, k := range w.keys {
		if k.name == name {
			return k
		}
	}
	return nil
}

// run issues random operations until one fails (the kill).
func (w *crashWorker) run(c pb.KeywardClient, iter int, killed *atomic.Bool) {
	ctx := context.Background()
	created := 0
	var live []*crashKey // keys of this iteration
	for n := 0; ; n++ {
		var op crashOp
		r := rand.IntN(100)
		switch {
		case len(live) == 0 || (r < 10 && created < 3):
			op = crashOp{kind: "create", key: fmt.Sprintf("crash/i%03d/w%d/k%d", iter, w.id, created)}
			created++
		case r < 55:
			k := live[rand.IntN(len(live))]
			if k.latestEnabled() == 0 {
				continue
			}
			pt := fmt.Appendf(nil, "i%d w%d n%d %x", iter, w.id, n, rand.Uint64())
			wctx := map[string]string{"iter": strconv.Itoa(iter), "n": strconv.Itoa(n)}
			res, err := c.Wrap(ctx, &pb.WrapRequest{Key: k.name, Plaintext: pt, Context: wctx})
			if err != nil {
				if !killed.Load() {
					w.err = fmt.Errorf("wrap %s before the kill: %v", k.name, err)
				}
				return
			}
			w.ops++
			if want := k.latestEnabled(); res.Version != want || res.Key != k.name {
				w.err = fmt.Errorf("wrap %s: got %s v%d, the newest enabled version is v%d", k.name, res.Key, res.Version, want)
				return
			}
			w.blobs = append(w.blobs, crashBlob{k.name, res.Version, pt, wctx, res.Ciphertext})
			continue
		case r < 70:
			op = crashOp{kind: "rotate", key: live[rand.IntN(len(live))].name}
		case r < 90:
			k := live[rand.IntN(len(live))]
			v := uint32(rand.IntN(len(k.states)) + 1)
			if k.states[v-1] == pb.VersionState_DESTROYED {
				continue
			}
			st := pb.VersionState_DISABLED // a toggle, so that an applied change shows
			if k.states[v-1] == pb.VersionState_DISABLED {
				st = pb.VersionState_ENABLED
			}
			op = crashOp{kind: "set-state", key: k.name, version: v, state: st}
		default:
			k := live[rand.IntN(len(live))]
			v := uint32(rand.IntN(len(k.states)) + 1)
			if k.states[v-1] == pb.VersionState_DESTROYED {
				continue
			}
			op = crashOp{kind: "destroy", key: k.name, version: v}
		}
		var info *pb.KeyInfo
		var err error
		switch op.kind {
		case "create":
			info, err = c.CreateKey(ctx, &pb.CreateKeyRequest{Key: op.key, KeyType: "aes-256-gcm"})
		case "rotate":
			info, err = c.RotateKey(ctx, &pb.RotateKeyRequest{Key: op.key})
		case "set-state":
			info, err = c.SetVersionState(ctx, &pb.SetVersionStateRequest{Key: op.key, Version: op.version, State: op.state})
		case "destroy":
			info, err = c.DestroyVersion(ctx, &pb.DestroyVersionRequest{Key: op.key, Version: op.version})
		}
		if err != nil {
			if !killed.Load() {
				w.err = fmt.Errorf("%v before the kill: %v", op, err)
			}
			w.pending = &op
			return
		}
		w.ops++
		// Acknowledged: the model follows.
		k := w.key(op.key)
		switch op.kind {
		case "create":
			k = &crashKey{name: op.key, states: []pb.VersionState{pb.VersionState_ENABLED}}
			w.keys = append(w.keys, k)
			live = append(live, k)
		case "rotate":
			k.states = append(k.states, pb.VersionState_ENABLED)
		case "set-state":
			k.states[op.version-1] = op.state
		case "destroy":
			k.states[op.version-1] = pb.VersionState_DESTROYED
		}
		if err := sameVersions(k, info); err != nil {
			w.err = fmt.Errorf("%v answered %w", op, err)
			return
		}
	}
}

func sameVersions(k *crashKey, info *pb.KeyInfo) error {
	if len(info.Versions) != len(k.states) {
		return fmt.Errorf("%d versions, acknowledged %d", len(info.Versions), len(k.states))
	}
	for i, v := range info.Versions {
		if v.Version != uint32(i+1) {
			return fmt.Errorf("version %d at position %d", v.Version, i+1)
		}
		if v.State != k.states[i] {
			return fmt.Errorf("v%d is %v, acknowledged %v", i+1, v.State, k.states[i])
		}
	}
	return nil
}

// resolve compares the restarted daemon's keyring with what was
// acknowledged; the one operation in flight at the kill may have applied
// or not, and the model takes whichever the daemon shows. It reports
// whether that operation applied.
func (w *crashWorker) resolve(t *testing.T, c pb.KeywardClient) (applied bool) {
	t.Helper()
	ctx := context.Background()
	p := w.pending
	w.pending = nil
	if p != nil && p.kind == "create" {
		info, err := c.DescribeKey(ctx, &pb.DescribeKeyRequest{Key: p.key})
		switch {
		case reasonOf(err) == "KEY_NOT_FOUND":
		case err != nil:
			t.Fatalf("describe %s (created at the kill): %v", p.key, err)
		default:
			k := &crashKey{name: p.key, states: []pb.VersionState{pb.VersionState_ENABLED}}
			if err := sameVersions(k, info); err != nil {
				t.Fatalf("%s created at the kill: %v", p.key, err)
			}
			w.keys = append(w.keys, k)
			applied = true
		}
	}
	for _, k := range w.keys {
		info, err := c.DescribeKey(ctx, &pb.DescribeKeyRequest{Key: k.name})
		if err != nil {
			t.Fatalf("describe %s after restart: %v", k.name, err)
		}
		if p != nil && p.key == k.name {
			alt := &crashKey{name: k.name, states: append([]pb.VersionState(nil), k.states...)}
			switch p.kind {
			case "rotate":
				alt.states = append(alt.states, pb.VersionState_ENABLED)
			case "set-state":
				alt.states[p.version-1] = p.state
			case "destroy":
				alt.states[p.version-1] = pb.VersionState_DESTROYED
			}
			if sameVersions(alt, info) == nil {
				k.states = alt.states
				applied = true
				continue
			}
		}
		if err := sameVersions(k, info); err != nil {
			t.Fatalf("%s after restart (in flight at the kill: %v): %v", k.name, p, err)
		}
	}
	return applied
}

// checkBlobs unwraps every remembered blob in batches: an enabled
// version's blob gives back its plaintext, a disabled or destroyed one is
// refused with that reason. It returns how many were checked.
func checkBlobs(t *testing.T, c pb.KeywardClient, workers []*crashWorker) (checked, lost int) {
	t.Helper()
	type item struct {
		b    crashBlob
		want pb.VersionState
	}
	var all []item
	for _, w := range workers {
		for _, b := range w.blobs {
			all = append(all, item{b, w.key(b.key).states[b.version-1]})
		}
	}
	const chunk = 500
	for start := 0; start < len(all); start += chunk {
		part := all[start:min(start+chunk, len(all))]
		req := &pb.BatchUnwrapRequest{}
		for _, it := range part {
			req.Items = append(req.Items, &pb.UnwrapRequest{Ciphertext: it.b.blob, Context: it.b.ctx})
		}
		res, err := c.BatchUnwrap(context.Background(), req)
		if err != nil {
			t.Fatalf("batch unwrap: %v", err)
		}
		for i, r := range res.Results {
			it := part[i]
			checked++
			switch it.want {
			case pb.VersionState_ENABLED:
				ok := r.GetOk()
				if ok == nil || !bytes.Equal(ok.Plaintext, it.b.pt) || ok.Key != it.b.key || ok.Version != it.b.version {
					lost++
					t.Errorf("blob of %s v%d (enabled) no longer unwraps: %v", it.b.key, it.b.version, r)
				}
			case pb.VersionState_DISABLED, pb.VersionState_DESTROYED:
				want := pb.ErrorReason_VERSION_DISABLED
				if it.want == pb.VersionState_DESTROYED {
					want = pb.ErrorReason_VERSION_DESTROYED
				}
				if r.GetError().GetReason() != want {
					t.Errorf("blob of %s v%d (%v): got %v, want %v", it.b.key, it.b.version, it.want, r, want)
				}
			}
		}
	}
	return checked, lost
}

// TestCrashSafety: keywardd is SIGKILLed at a random moment while clients
// create, rotate, disable, enable and destroy key versions and wrap; after
// each restart the daemon serves, the keyring is exactly what the daemon
// acknowledged (the operation in flight at the kill applied or not, never
// half), every blob whose version is enabled still unwraps, and the audit
// chain verifies.
func TestCrashSafety(t *testing.T) {
	softhsmtest.Need(t, tok)
	iterations := 10
	if s := os.Getenv(crashIterationsEnv); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("$%s=%q: want a positive integer", crashIterationsEnv, s)
		}
		iterations = n
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "k.sock")
	cfg := configFile(t, dir, sock, `metadata_max_age = "-1ns"`)
	auditPath := filepath.Join(dir, "audit.log")

	workers := []*crashWorker{{id: 0}, {id: 1}}
	var checked, lost, ops, inFlight, applied, torn int
	var readyMax time.Duration
	start := time.Now()
	for iter := 0; iter <= iterations; iter++ {
		d := launchDaemon(t, sock, cfg)
		readyMax = max(readyMax, d.ready)
		if iter%10 == 0 {
			ls := time.Now()
			all, err := d.c.ListKeys(context.Background(), &pb.ListKeysRequest{})
			t.Logf("iteration %d: ready after %v; ListKeys of %d keys took %v (%v)", iter, d.ready.Round(time.Millisecond), len(all.GetKeys()), time.Since(ls).Round(time.Millisecond), err)
		}
		if iter > 0 {
			// After a crash: the daemon is up; the keyring is consistent.
			st, err := d.c.Status(context.Background(), &pb.StatusRequest{})
			if err != nil || !st.BackendHealthy {
				t.Fatalf("restart %d: status %v %v", iter, st, err)
			}
			if _, err := d.c.ListKeys(context.Background(), &pb.ListKeysRequest{}); err != nil {
				t.Fatalf("restart %d: list keys: %v\n%s", iter, err, d.stderr)
			}
			for _, w := range workers {
				if w.pending != nil {
					inFlight++
				}
				if w.resolve(t, d.c) {
					applied++
				}
			}
			c, l := checkBlobs(t, d.c, workers)
			checked += c
			lost += l
			if t.Failed() {
				t.Fatalf("after restart %d; keywardd stderr:\n%s", iter, d.stderr)
			}
			if strings.Contains(strings.ToLower(d.stderr.String()), "integrity") {
				t.Fatalf("restart %d: keywardd logs an integrity problem:\n%s", iter, d.stderr)
			}
			_, nTorn := verifyAudit(t, auditPath)
			torn = nTorn
		}
		if iter == iterations {
			if err := d.stop(syscall.SIGTERM); err != nil {
				t.Fatalf("keywardd exit after SIGTERM: %v\n%s", err, d.stderr)
			}
			break
		}
		// Load, then a kill at a random moment.
		var killed atomic.Bool
		var wg sync.WaitGroup
		for _, w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				w.run(d.c, iter, &killed)
			}()
		}
		time.Sleep(time.Duration(5+rand.IntN(196)) * time.Millisecond)
		killed.Store(true)
		d.stop(syscall.SIGKILL)
		wg.Wait()
		for _, w := range workers {
			if w.err != nil {
				t.Fatalf("iteration %d, worker %d: %v\nkeywardd stderr:\n%s", iter, w.id, w.err, d.stderr)
			}
		}
	}
	res, _ := verifyAudit(t, auditPath)
	for _, w := range workers {
		ops += w.ops
	}
	nkeys := len(workers[0].keys) + len(workers[1].keys)
	t.Logf("%d acknowledged operations on %d keys; %d operations in flight at a kill, %d of them applied; slowest start %v; audit: %d records verify, %d torn tails moved aside; %v",
		ops, nkeys, inFlight, applied, readyMax.Round(time.Millisecond), res.Records, torn, time.Since(start).Round(time.Millisecond))
	fmt.Printf("crash-safety: %d iterations, %d blobs checked, %d lost\n", iterations, checked, lost)
	if lost > 0 {
		t.Fatalf("%d blobs lost", lost)
	}
}
