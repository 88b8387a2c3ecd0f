package tpm_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/keys/keystest"
	"github.com/keyward/keyward/tpm"
	"github.com/keyward/keyward/tpm/swtpmtest"
)

// testAuth is a fixed auth secret for tests (real ones come from a 0600
// file or a systemd credential).
var testAuth = []byte("keyward-test-auth-secret-0123456789")

func open(t *testing.T, device, stateDir string) *tpm.TPM {
	t.Helper()
	return openConfig(t, tpm.Config{Device: device, StateDir: stateDir, Auth: testAuth})
}

// openConfig opens a backend with cfg, closed when the test ends.
func openConfig(t *testing.T, cfg tpm.Config) *tpm.TPM {
	t.Helper()
	be, err := tpm.Open(t.Context(), cfg)
	if err != nil {
		t.Fatalf("tpm.Open(%s): %v", cfg.Device, err)
	}
	t.Cleanup(func() { be.Close() })
	return be
}

// openTapped opens a backend whose every command and response goes to
// record.
func openTapped(t *testing.T, device, stateDir string, record func(cmd, rsp []byte)) *tpm.TPM {
	t.Helper()
	return openConfig(t, tpm.TapWire(tpm.Config{Device: device, StateDir: stateDir, Auth: testAuth}, record))
}

func TestConformanceSWTPM(t *testing.T) {
	t.Parallel() // its own swtpm and state directory
	sw := swtpmtest.Start(t)
	runConformance(t, sw.Device())
}

func TestConformanceSWTPMUnix(t *testing.T) {
	t.Parallel() // its own swtpm and state directory
	if testing.Short() {
		t.Skip("the TCP run covers the backend; -short skips the second transport")
	}
	sw := swtpmtest.StartUnix(t)
	runConformance(t, sw.Device())
}

// runConformance runs the suite on one backend on device, shared by every
// group, with the hooks a state directory allows: Reopen closes it and
// opens the next, which later groups get. (No ReadOnly hook: swtpm serves
// one client at a time; TestGrantRollback opens one read-only.)
func runConformance(t *testing.T, device string) {
	dir := t.TempDir()
	be := open(t, device, dir)
	keystest.RunWith(t, func(*testing.T) keys.Backend { return be }, keystest.Hooks{
		Reopen: func(*testing.T, keys.Backend) keys.Backend {
			be.Close()
			be = open(t, device, dir)
			return be
		},
		TamperGrant: func(t *testing.T, _ keys.Backend, id string) { tamperGrant(t, dir, id) },
		LimitGrants: func(t *testing.T, _ keys.Backend, n int) { be.SetGrantLimit(t, n) },
	})
}

// tamperGrant changes one letter of grant id's body in its file, keeping
// the file well-formed JSON.
func tamperGrant(t *testing.T, dir, id string) {
	t.Helper()
	path := filepath.Join(dir, "grants", id+".json")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, []byte(`"body": "`))
	if i < 0 {
		t.Fatalf("%s has no body: %s", path, b)
	}
	b[i+len(`"body": "`)] ^= 0x01
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestReopen: keys, blobs and states survive a restart of the daemon, and of
// the TPM itself (same state dir, same seeds).
func TestReopen(t *testing.T) {
	sw := swtpmtest.Start(t)
	dir := t.TempDir()
	ctx := t.Context()
	be := open(t, sw.Device(), dir)
	mustCreate(t, be, "app/db", keys.AES256GCM)
	mustCreate(t, be, "app/sig", keys.ECDSAP256)
	blob, err := be.Wrap(ctx, "app/db", []byte("secret"), keys.Context{"a": "b"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := be.RotateKey(ctx, "app/db"); err != nil {
		t.Fatal(err)
	}
	if _, err := be.SetVersionState(ctx, "app/sig", 1, keys.Disabled); err != nil {
		t.Fatal(err)
	}
	pub, _, err := be.PublicKey(ctx, "app/db", 0)
	if err == nil || pub != nil {
		t.Fatalf("PublicKey of an AES key: %v", err)
	}
	be.Close()

	sw.Kill()
	sw.Restart(t)
	be2 := open(t, sw.Device(), dir)
	u, err := be2.Unwrap(ctx, blob, keys.Context{"a": "b"})
	if err != nil || string(u.Plaintext) != "secret" || u.Version != 1 {
		t.Fatalf("Unwrap after restart = %+v, %v", u, err)
	}
	ki, err := be2.DescribeKey(ctx, "app/sig")
	if err != nil || ki.Versions[0].State != keys.Disabled {
		t.Fatalf("DescribeKey after restart = %+v, %v", ki, err)
	}
	list, err := be2.ListKeys(ctx)
	if err != nil || len(list) != 2 || list[0].Name != "app/db" || len(list[0].Versions) != 2 {
		t.Fatalf("ListKeys after restart = %+v, %v", list, err)
	}
}

func mustCreate(t *testing.T, be keys.Backend, name string, ty keys.Type) {
	t.Helper()
	if _, err := be.CreateKey(t.Context(), name, ty); err != nil {
		t.Fatalf("CreateKey(%s, %s): %v", name, ty, err)
	}
}

// TestStateTampering: every way of changing the state directory behind
// keyward's back is refused at start with a clear error.
func TestStateTampering(t *testing.T) {
	swA := swtpmtest.Start(t)
	swB := swtpmtest.Start(t)
	dirA, dirB := t.TempDir(), t.TempDir()
	ctx := t.Context()
	beA := open(t, swA.Device(), dirA)
	mustCreate(t, beA, "app/db", keys.AES256GCM)
	mustCreate(t, beA, "app/other", keys.AES256GCM)
	beA.Close()
	beB := open(t, swB.Device(), dirB)
	mustCreate(t, beB, "app/db", keys.AES256GCM)
	beB.Close()

	recA := filepath.Join(dirA, "keys", "app%2Fdb.json")
	recB := filepath.Join(dirB, "keys", "app%2Fdb.json")
	original, err := os.ReadFile(recA)
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := os.ReadFile(recB)
	if err != nil {
		t.Fatal(err)
	}
	// A record whose MAC is right but whose blob came from TPM B.
	var ra, rb map[string]any
	json.Unmarshal(original, &ra)
	json.Unmarshal(foreign, &rb)
	ra["versions"].([]any)[0].(map[string]any)["blob"] = rb["versions"].([]any)[0].(map[string]any)["blob"]
	swapped, _ := json.Marshal(ra)

	cases := []struct {
		name    string
		edit    func(t *testing.T)
		device  string
		wantErr error
		wantMsg string
	}{
		{"state edited", func(t *testing.T) {
			write(t, recA, bytes.Replace(original, []byte(`"enabled"`), []byte(`"disabled"`), 1))
		}, swA.Device(), keys.ErrIntegrity, "fails its MAC"},
		{"record of another key", func(t *testing.T) {
			other, _ := os.ReadFile(filepath.Join(dirA, "keys", "app%2Fother.json"))
			write(t, recA, other)
		}, swA.Device(), keys.ErrIntegrity, "belongs in another file"},
		{"record from another TPM's state dir", func(t *testing.T) { write(t, recA, foreign) }, swA.Device(), keys.ErrIntegrity, "fails its MAC"},
		{"blob from another TPM", func(t *testing.T) { write(t, recA, swapped) }, swA.Device(), keys.ErrIntegrity, "fails its MAC"},
		{"unknown field", func(t *testing.T) {
			write(t, recA, bytes.Replace(original, []byte(`"format"`), []byte(`"extra": 1, "format"`), 1))
		}, swA.Device(), keys.ErrIntegrity, "unknown field"},
		{"truncated", func(t *testing.T) { write(t, recA, original[:len(original)/2]) }, swA.Device(), keys.ErrIntegrity, "app%2Fdb.json"},
		{"state dir moved to another TPM", func(t *testing.T) {}, swB.Device(), tpm.ErrParentMismatch, "differs from the one pinned"},
		{"parent pin removed", func(t *testing.T) {
			os.Rename(filepath.Join(dirA, "parent.pub"), filepath.Join(dirA, "parent.pub.bak"))
			t.Cleanup(func() { os.Rename(filepath.Join(dirA, "parent.pub.bak"), filepath.Join(dirA, "parent.pub")) })
		}, swA.Device(), keys.ErrIntegrity, "no pinned parent"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.edit(t)
			defer write(t, recA, original)
			be, err := tpm.Open(ctx, tpm.Config{Device: tc.device, StateDir: dirA, Auth: testAuth})
			if err == nil {
				be.Close()
				t.Fatal("Open accepted a tampered state directory")
			}
			if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("Open: %v; want %v mentioning %q", err, tc.wantErr, tc.wantMsg)
			}
		})
	}
	// Untouched again: it opens and the key works.
	be := open(t, swA.Device(), dirA)
	if _, err := be.Wrap(ctx, "app/db", []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
}

func write(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestOpenErrors(t *testing.T) {
	sw := swtpmtest.Start(t)
	dir := t.TempDir()
	be := open(t, sw.Device(), dir)
	mustCreate(t, be, "k", keys.HMACSHA256)

	_, err := tpm.Open(t.Context(), tpm.Config{Device: sw.Device(), StateDir: dir, Auth: testAuth})
	if !errors.Is(err, tpm.ErrLocked) {
		t.Errorf("second Open on a locked state dir: %v, want ErrLocked", err)
	}
	be.Close()

	cases := []struct {
		name    string
		cfg     tpm.Config
		wantErr error
	}{
		{"short auth", tpm.Config{Device: sw.Device(), StateDir: dir, Auth: []byte("1234")}, tpm.ErrConfig},
		{"wrong auth", tpm.Config{Device: sw.Device(), StateDir: dir, Auth: []byte("another-secret-of-enough-length")}, tpm.ErrCredential},
		{"bad device", tpm.Config{Device: "tcp:127.0.0.1:1", StateDir: dir, Auth: testAuth}, tpm.ErrConfig},
		{"nothing listening", tpm.Config{Device: "swtpm:127.0.0.1:1", StateDir: dir, Auth: testAuth}, keys.ErrUnavailable},
		{"no state dir", tpm.Config{Device: sw.Device(), Auth: testAuth}, tpm.ErrConfig},
		{"parent not persistent", tpm.Config{Device: sw.Device(), StateDir: dir, Auth: testAuth, ParentHandle: 0x80000001}, tpm.ErrConfig},
		{"read-only, not initialised", tpm.Config{Device: sw.Device(), StateDir: t.TempDir(), Auth: testAuth, ReadOnly: true}, tpm.ErrConfig},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			be, err := tpm.Open(t.Context(), tc.cfg)
			if err == nil {
				be.Close()
				t.Fatal("Open succeeded")
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Open: %v, want %v", err, tc.wantErr)
			}
			if strings.Contains(err.Error(), string(testAuth)) {
				t.Fatalf("error shows the auth secret: %v", err)
			}
		})
	}
	// A group-writable state dir is refused.
	open := t.TempDir()
	os.Chmod(open, 0o777)
	if _, err := tpm.Open(t.Context(), tpm.Config{Device: sw.Device(), StateDir: open, Auth: testAuth}); !errors.Is(err, tpm.ErrConfig) {
		t.Errorf("world-writable state dir: %v", err)
	}
}

// TestStateFilesPrivate: nothing in the state directory is wider than 0600/0700.
func TestStateFilesPrivate(t *testing.T) {
	sw := swtpmtest.Start(t)
	dir := filepath.Join(t.TempDir(), "state")
	be := open(t, sw.Device(), dir)
	mustCreate(t, be, "a/b", keys.AES256GCM)
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		want := os.FileMode(0o600)
		if fi.IsDir() {
			want = 0o700
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %o, want %o", p, fi.Mode().Perm(), want)
		}
		if !fi.IsDir() && bytes.Contains(mustRead(t, p), testAuth) {
			t.Errorf("%s holds the auth secret", p)
		}
		return nil
	})
}

func mustRead(t *testing.T, p string) []byte {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRandomIsRandom(t *testing.T) {
	sw := swtpmtest.Start(t)
	be := open(t, sw.Device(), t.TempDir())
	a, err := be.Random(context.Background(), 1024)
	if err != nil || len(a) != 1024 {
		t.Fatalf("Random(1024) = %d bytes, %v", len(a), err)
	}
	b := make([]byte, 1024)
	rand.Read(b)
	if bytes.Equal(a[:32], a[32:64]) || bytes.Equal(a, b) {
		t.Fatal("Random repeats itself")
	}
}

// TestRecoveryUnderLoad: swtpm killed and restarted while 4 goroutines call
// the backend. Calls fail only with ErrUnavailable while it is away, every
// call succeeds again after the restart without reopening the backend, and
// blobs from before still open.
func TestRecoveryUnderLoad(t *testing.T) {
	sw := swtpmtest.Start(t)
	be := open(t, sw.Device(), t.TempDir())
	ctx := t.Context()
	mustCreate(t, be, "load/aes", keys.AES256GCM)
	mustCreate(t, be, "load/mac", keys.HMACSHA256)
	mustCreate(t, be, "load/sig", keys.ECDSAP256)
	before, err := be.Wrap(ctx, "load/aes", []byte("kept"), nil)
	if err != nil {
		t.Fatal(err)
	}

	var phase atomic.Int32 // 0 up, 1 down, 2 restarted
	type tally struct{ ok, unavailable, afterRestartOK atomic.Int64 }
	results := make([]tally, 4)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var bad atomic.Value
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				p := phase.Load()
				var err error
				switch (g + i) % 4 {
				case 0:
					var blob []byte
					if blob, err = be.Wrap(ctx, "load/aes", []byte("x"), keys.Context{"g": "1"}); err == nil {
						_, err = be.Unwrap(ctx, blob, keys.Context{"g": "1"})
					}
				case 1:
					var m keys.Signature
					if m, err = be.MAC(ctx, "load/mac", []byte("api-secret")); err == nil {
						err = be.VerifyMAC(ctx, "load/mac", m.Version, []byte("api-secret"), m.Bytes)
					}
				case 2:
					_, err = be.Sign(ctx, "load/sig", []byte("m"))
				case 3:
					_, err = be.Unwrap(ctx, before, nil)
				}
				switch {
				case err == nil:
					results[g].ok.Add(1)
					if p == 2 {
						results[g].afterRestartOK.Add(1)
					}
				case errors.Is(err, keys.ErrUnavailable):
					results[g].unavailable.Add(1)
					time.Sleep(5 * time.Millisecond)
				default:
					bad.Store(err)
				}
			}
		}()
	}
	// Each phase lasts until what it is for has happened (the bounds only
	// end a hang): calls under way, the TPM's absence seen and a reconnect
	// failed, then every goroutine succeeding again.
	all := func(n func(*tally) int64, least int64) func() bool {
		return func() bool {
			for g := range results {
				if n(&results[g]) < least {
					return false
				}
			}
			return true
		}
	}
	eventually(t, "calls before the TPM goes away", all(func(r *tally) int64 { return r.ok.Load() }, 5))
	phase.Store(1)
	sw.Kill()
	eventually(t, "a failed reconnect while the TPM is away", func() bool {
		return be.Stats().RecoveryFailures >= 1
	})
	sw.Restart(t)
	restarted := time.Now()
	phase.Store(2)
	eventually(t, "20 successes per goroutine after the restart", all(func(r *tally) int64 { return r.afterRestartOK.Load() }, 20))
	close(stop)
	wg.Wait()
	if err, _ := bad.Load().(error); err != nil {
		t.Fatalf("a call failed with something other than ErrUnavailable: %v", err)
	}
	var ok, unavailable, afterRestartOK int64
	for g := range results {
		r := &results[g]
		if r.afterRestartOK.Load() < 20 {
			t.Errorf("goroutine %d: %d successes after the restart", g, r.afterRestartOK.Load())
		}
		ok += r.ok.Load()
		unavailable += r.unavailable.Load()
		afterRestartOK += r.afterRestartOK.Load()
	}
	if be.Resets() < 1 || be.Stats().Recoveries < 1 || be.Stats().RecoveryFailures < 1 {
		t.Errorf("Resets() = %d, Stats() = %+v: want a failed and a successful reconnect at least", be.Resets(), be.Stats())
	}
	if u, err := be.Unwrap(ctx, before, nil); err != nil || string(u.Plaintext) != "kept" {
		t.Fatalf("blob from before the restart: %v", err)
	}
	t.Logf("ok %d (after restart %d), unavailable %d, resets %d, restart->all ok %v",
		ok, afterRestartOK, unavailable, be.Resets(), time.Since(restarted).Round(time.Millisecond))
}

// eventually waits for cond, failing the test after a bound far above
// what cond normally takes: the bound ends a hang, it measures nothing.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not seen after 30 s", what)
		}
	}
}

func TestDoctor(t *testing.T) {
	sw := swtpmtest.Start(t)
	be := open(t, sw.Device(), t.TempDir())
	for _, ty := range []keys.Type{keys.AES256GCM, keys.HMACSHA256, keys.ECDSAP256} {
		mustCreate(t, be, "doc/"+string(ty), ty)
	}
	if _, err := be.RotateKey(t.Context(), "doc/aes-256-gcm"); err != nil {
		t.Fatal(err)
	}
	if _, err := be.DestroyVersion(t.Context(), "doc/aes-256-gcm", 1); err != nil {
		t.Fatal(err)
	}
	rep, err := be.Doctor(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if rep.Weak() > 0 || len(rep.Findings) != 0 {
		t.Fatalf("findings on a healthy state dir: %+v", rep.Findings)
	}
	// keyring key + aes v2 + hmac v1 + ecdsa v1 (aes v1 is destroyed).
	if len(rep.Objects) != 4 || rep.Keys != 3 {
		t.Fatalf("objects %d keys %d: %+v", len(rep.Objects), rep.Keys, rep.Objects)
	}
	for _, o := range rep.Objects {
		for _, a := range []string{"fixedtpm", "fixedparent", "sensitivedataorigin", "userwithauth", "noda", "sign"} {
			if !strings.Contains("|"+o.Attributes+"|", "|"+a+"|") {
				t.Errorf("%s v%d: attributes %s lack %s", o.Key, o.Version, o.Attributes, a)
			}
		}
	}
}

// TestBusCarriesNoSecrets records every byte exchanged with the TPM during
// a workload and looks for the secrets parameter encryption must hide: the
// objects' auth value (in TPM2_Create), MAC inputs and outputs, random bytes
// handed out as data keys. Plaintexts never go to the TPM at all.
func TestBusCarriesNoSecrets(t *testing.T) {
	sw := swtpmtest.Start(t)
	var wire [][]byte
	be := openTapped(t, sw.Device(), t.TempDir(), func(cmd, rsp []byte) { wire = append(wire, cmd, rsp) })
	ctx := t.Context()
	mustCreate(t, be, "bus/mac", keys.HMACSHA256)
	mustCreate(t, be, "bus/aes", keys.AES256GCM)
	plaintext := []byte("plaintext-marker-7f3a9c")
	apiSecret := []byte("api-secret-marker-51be")
	m, err := be.MAC(ctx, "bus/mac", apiSecret)
	if err != nil {
		t.Fatal(err)
	}
	blob, err := be.Wrap(ctx, "bus/aes", plaintext, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := be.Unwrap(ctx, blob, nil); err != nil {
		t.Fatal(err)
	}
	rnd, err := be.Random(ctx, 32)
	if err != nil {
		t.Fatal(err)
	}
	if len(wire) < 10 {
		t.Fatalf("only %d messages recorded", len(wire))
	}
	digest := sha256.Sum256(apiSecret)
	secrets := map[string][]byte{
		"auth value":        tpm.AuthValue(testAuth),
		"auth secret":       testAuth,
		"mac input digest":  digest[:16],
		"mac":               m.Bytes[:16],
		"plaintext":         plaintext,
		"random (data key)": rnd[:16],
	}
	for i, msg := range wire {
		for what, s := range secrets {
			if bytes.Contains(msg, s) {
				t.Errorf("message %d on the bus carries the %s", i, what)
			}
		}
	}
}

// TestPersistentParent: a security team's persistent storage key as the
// parent (parent_handle); the pin then holds that key, and switching back
// to the default primary is refused.
func TestPersistentParent(t *testing.T) {
	sw := swtpmtest.Start(t)
	const handle = 0x81000010
	makePersistentParent(t, sw.Device(), handle)

	dir := t.TempDir()
	ctx := t.Context()
	be, err := tpm.Open(ctx, tpm.Config{Device: sw.Device(), StateDir: dir, Auth: testAuth, ParentHandle: handle})
	if err != nil {
		t.Fatal(err)
	}
	mustCreate(t, be, "p/k", keys.AES256GCM)
	blob, err := be.Wrap(ctx, "p/k", []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	be.Close()
	if _, err := tpm.Open(ctx, tpm.Config{Device: sw.Device(), StateDir: dir, Auth: testAuth}); !errors.Is(err, tpm.ErrParentMismatch) {
		t.Fatalf("default parent on a state dir pinned to a persistent one: %v", err)
	}
	if _, err := tpm.Open(ctx, tpm.Config{Device: sw.Device(), StateDir: dir, Auth: testAuth, ParentHandle: handle + 1}); err == nil {
		t.Fatal("a missing persistent parent was accepted")
	}
	be, err = tpm.Open(ctx, tpm.Config{Device: sw.Device(), StateDir: dir, Auth: testAuth, ParentHandle: handle})
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	if u, err := be.Unwrap(ctx, blob, nil); err != nil || string(u.Plaintext) != "x" {
		t.Fatalf("Unwrap under the persistent parent after reopening: %v", err)
	}
}

// makePersistentParent makes a storage key (not the default template: other
// unique value) persistent at handle, as a security team would.
func makePersistentParent(t *testing.T, device string, handle tpm2.TPMHandle) {
	t.Helper()
	conn, err := tpm.Dial(device)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// A storage key that is not the default template (other unique value).
	tmpl := tpm2.ECCSRKTemplate
	tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: bytes.Repeat([]byte{1}, 32)},
		Y: tpm2.TPM2BECCParameter{Buffer: bytes.Repeat([]byte{2}, 32)},
	})
	p, err := (tpm2.CreatePrimary{
		PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		InPublic:      tpm2.New2B(tmpl),
	}).Execute(conn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (tpm2.EvictControl{
		Auth:             tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		ObjectHandle:     &tpm2.NamedHandle{Handle: p.ObjectHandle, Name: p.Name},
		PersistentHandle: handle,
	}).Execute(conn); err != nil {
		t.Fatal(err)
	}
	(tpm2.FlushContext{FlushHandle: p.ObjectHandle}).Execute(conn)
}

// TestAuthWithZeroBytes: secrets whose first derivation holds a zero byte
// (go-tpm cuts a session's auth value there) still work.
func TestAuthWithZeroBytes(t *testing.T) {
	sw := swtpmtest.Start(t)
	n := 0
	for i := 0; n < 3 && i < 1000; i++ {
		secret := []byte(fmt.Sprintf("zero-byte-probe-secret-%04d", i))
		if !tpm.FirstRoundHasZero(secret) {
			continue
		}
		n++
		be, err := tpm.Open(t.Context(), tpm.Config{Device: sw.Device(), StateDir: t.TempDir(), Auth: secret})
		if err != nil {
			t.Fatalf("secret %d: %v", i, err)
		}
		if _, err := be.CreateKey(t.Context(), "z/k", keys.HMACSHA256); err != nil {
			t.Fatalf("secret %d: %v", i, err)
		}
		if _, err := be.MAC(t.Context(), "z/k", []byte("m")); err != nil {
			t.Fatalf("secret %d: %v", i, err)
		}
		if v := tpm.AuthValue(secret); bytes.IndexByte(v, 0) >= 0 {
			t.Fatalf("derived auth value holds a zero byte")
		}
		be.Close()
	}
	if n < 3 {
		t.Fatalf("found only %d probe secrets", n)
	}
}

// TestQueuedCallerGivesUp: a caller waiting behind a slow TPM command stops
// waiting at its deadline (a real chip takes tens to hundreds of
// milliseconds per signature), and its command is never sent; the slow
// command itself completes. The slow command holds the TPM until the test
// lets it go, so no interval is compared with the clock.
func TestQueuedCallerGivesUp(t *testing.T) {
	sw := swtpmtest.Start(t)
	var sent atomic.Int64
	hold := holdTPM(&sent)
	be := openTapped(t, sw.Device(), t.TempDir(), hold.record)
	mustCreate(t, be, "queue/mac", keys.HMACSHA256)

	hold.start()
	first := make(chan error, 1)
	go func() {
		_, err := be.MAC(context.Background(), "queue/mac", []byte("first"))
		first <- err
	}()
	<-hold.entered // the first MAC holds the TPM
	before := sent.Load()
	second := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		_, err := be.MAC(ctx, "queue/mac", []byte("second"))
		second <- err
	}()
	select {
	case err := <-second:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("queued MAC: %v, want context.DeadlineExceeded", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the queued MAC waits for the TPM past its deadline")
	}
	hold.release()
	if err := <-first; err != nil {
		t.Fatalf("the slow MAC: %v", err)
	}
	// Every command sent after the second caller gave up was the first's
	// (one TPM2_HMAC, and its record reads nothing more).
	if n := sent.Load() - before; n > 1 {
		t.Errorf("%d commands sent after the queued caller gave up, want at most the slow one's", n)
	}
	if _, err := be.MAC(t.Context(), "queue/mac", []byte("third")); err != nil {
		t.Fatalf("after: %v", err)
	}
}

// tpmHold makes the TPM slow on demand: once started, the next command
// holds the TPM (its record, given to tpm.TapWire) until released.
type tpmHold struct {
	on      atomic.Bool
	sent    *atomic.Int64 // commands sent (nil: not counted)
	entered chan struct{} // closed when a command holds the TPM
	done    chan struct{} // closed by release
	once    sync.Once
}

func holdTPM(sent *atomic.Int64) *tpmHold {
	return &tpmHold{sent: sent, entered: make(chan struct{}), done: make(chan struct{})}
}

func (h *tpmHold) record(cmd, rsp []byte) {
	if h.sent != nil {
		h.sent.Add(1)
	}
	if h.on.Load() {
		h.once.Do(func() { close(h.entered) })
		<-h.done
	}
}

func (h *tpmHold) start()   { h.on.Store(true) }
func (h *tpmHold) release() { h.on.Store(false); close(h.done) }

// TestReadsDoNotWaitForTPM: listing, describing, public keys and
// verification are answered from memory while a slow TPM command holds the
// device (until the reads are done: a read that waited for the TPM would
// wait for ever, and fail at its generous deadline).
func TestReadsDoNotWaitForTPM(t *testing.T) {
	sw := swtpmtest.Start(t)
	hold := holdTPM(nil)
	be := openTapped(t, sw.Device(), t.TempDir(), hold.record)
	mustCreate(t, be, "reads/mac", keys.HMACSHA256)
	mustCreate(t, be, "reads/sig", keys.ECDSAP256)
	msg := []byte("signed before the TPM got slow")
	sig, err := be.Sign(t.Context(), "reads/sig", msg)
	if err != nil {
		t.Fatal(err)
	}

	hold.start()
	first := make(chan error, 1)
	go func() {
		_, err := be.MAC(context.Background(), "reads/mac", []byte("slow"))
		first <- err
	}()
	<-hold.entered // the MAC holds the TPM
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if ks, err := be.ListKeys(ctx); err != nil || len(ks) != 2 {
		t.Errorf("ListKeys: %d keys, %v", len(ks), err)
	}
	if _, err := be.DescribeKey(ctx, "reads/sig"); err != nil {
		t.Errorf("DescribeKey: %v", err)
	}
	if _, _, err := be.PublicKey(ctx, "reads/sig", 0); err != nil {
		t.Errorf("PublicKey: %v", err)
	}
	if err := be.Verify(ctx, "reads/sig", sig.Version, msg, sig.Bytes); err != nil {
		t.Errorf("Verify: %v", err)
	}
	hold.release()
	if err := <-first; err != nil {
		t.Fatalf("the slow MAC: %v", err)
	}
}
