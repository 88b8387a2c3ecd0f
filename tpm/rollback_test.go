package tpm_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/keyward/keyward/internal/testutil"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/tpm"
	"github.com/keyward/keyward/tpm/swtpmtest"
)

// snapshot copies the state directory's manifest and records.
func snapshot(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	files, _ := filepath.Glob(filepath.Join(dir, "keys", "*.json"))
	for _, f := range append(files, filepath.Join(dir, "manifest.json")) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(dir, f)
		out[rel] = b
	}
	return out
}

func restore(t *testing.T, dir string, snap map[string][]byte, only ...string) {
	t.Helper()
	for rel, b := range snap {
		if len(only) > 0 && !contains(only, rel) {
			continue
		}
		write(t, filepath.Join(dir, rel), b)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func readManifest(t *testing.T, dir string) (index uint32, counter uint64, seqs map[string]uint64) {
	t.Helper()
	var m struct {
		Index   string `json:"nv_index"`
		Counter uint64 `json:"counter"`
		Keys    map[string]struct {
			Seq uint64 `json:"seq"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(mustRead(t, filepath.Join(dir, "manifest.json")), &m); err != nil {
		t.Fatal(err)
	}
	v, err := strconv.ParseUint(m.Index, 0, 32)
	if err != nil {
		t.Fatal(err)
	}
	seqs = map[string]uint64{}
	for k, e := range m.Keys {
		seqs[k] = e.Seq
	}
	return uint32(v), m.Counter, seqs
}

// undefine removes an NV index with the (empty) owner authorisation, as
// `tpm2_nvundefine -C o` would. The backend must be closed (swtpm serves one
// client).
func undefine(t *testing.T, device string, index uint32) {
	t.Helper()
	c, err := tpm.Dial(device)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pub, err := (tpm2.NVReadPublic{NVIndex: tpm2.TPMHandle(index)}).Execute(c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (tpm2.NVUndefineSpace{AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		NVIndex: tpm2.NamedHandle{Handle: tpm2.TPMHandle(index), Name: pub.NVName}}).Execute(c); err != nil {
		t.Fatalf("TPM2_NV_UndefineSpace 0x%08x: %v", index, err)
	}
}

// TestRollbackDetected: a state directory put back to an earlier state, in
// part or whole, is refused at start with ErrRollback, though every file in
// it carries a valid MAC; untouched, it opens and keeps the later state.
func TestRollbackDetected(t *testing.T) {
	sw := swtpmtest.Start(t)
	dir := t.TempDir()
	ctx := t.Context()
	be := open(t, sw.Device(), dir)
	mustCreate(t, be, "app/db", keys.AES256GCM)
	mustCreate(t, be, "app/sig", keys.ECDSAP256)
	before := snapshot(t, dir)
	if _, err := be.SetVersionState(ctx, "app/db", 1, keys.Disabled); err != nil {
		t.Fatal(err)
	}
	if _, err := be.RotateKey(ctx, "app/sig"); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, be, "app/new", keys.HMACSHA256)
	index, nv, mf, settled := be.CounterStatus()
	if index>>22 != 0x01000000>>22 || !settled || nv != mf {
		t.Fatalf("counter 0x%08x nv %d manifest %d settled %v", index, nv, mf, settled)
	}
	be.Close()
	after := snapshot(t, dir)
	_, counter, seqs := readManifest(t, dir)
	if counter != nv || seqs["app/db"] >= seqs["app/sig"] || seqs["app/sig"] >= seqs["app/new"] || seqs["app/new"] != counter {
		t.Fatalf("manifest at %d lists %v (counter %d)", counter, seqs, nv)
	}

	cases := []struct {
		name    string
		edit    func(t *testing.T)
		wantErr error
		wantMsg string
	}{
		{"one record rolled back (disabled version enabled again)", func(t *testing.T) {
			restore(t, dir, before, "keys/app%2Fdb.json")
		}, tpm.ErrRollback, "rolled back"},
		{"manifest rolled back", func(t *testing.T) { restore(t, dir, before, "manifest.json") }, tpm.ErrRollback, "was rolled back"},
		{"manifest and records rolled back together", func(t *testing.T) {
			restore(t, dir, before)
			os.Remove(filepath.Join(dir, "keys", "app%2Fnew.json"))
		}, tpm.ErrRollback, "was rolled back"},
		{"manifest removed", func(t *testing.T) { os.Remove(filepath.Join(dir, "manifest.json")) }, tpm.ErrHistoryLost, "manifest.json is missing"},
		{"record removed", func(t *testing.T) { os.Remove(filepath.Join(dir, "keys", "app%2Fnew.json")) }, tpm.ErrRollback, "record is missing"},
		{"manifest edited", func(t *testing.T) {
			var m map[string]any
			if err := json.Unmarshal(after["manifest.json"], &m); err != nil {
				t.Fatal(err)
			}
			m["keys"].(map[string]any)["app/db"].(map[string]any)["seq"] = 1
			edited, _ := json.Marshal(m)
			write(t, filepath.Join(dir, "manifest.json"), edited)
		}, keys.ErrIntegrity, "manifest.json fails its MAC"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.edit(t)
			defer func() {
				restore(t, dir, after)
			}()
			be, err := tpm.Open(ctx, tpm.Config{Device: sw.Device(), StateDir: dir, Auth: testAuth})
			if err == nil {
				be.Close()
				t.Fatal("Open accepted a rolled-back state directory")
			}
			if !errors.Is(err, tc.wantErr) || !errors.Is(err, keys.ErrIntegrity) || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("Open: %v; want %v mentioning %q", err, tc.wantErr, tc.wantMsg)
			}
			// Only a lost history may be accepted as it is: a rolled-back
			// one must never be shown the advice to accept it.
			if errors.Is(err, tpm.ErrHistoryLost) != (tc.wantErr == tpm.ErrHistoryLost) {
				t.Fatalf("Open: %v; ErrHistoryLost %v, want %v", err, errors.Is(err, tpm.ErrHistoryLost), tc.wantErr == tpm.ErrHistoryLost)
			}
		})
	}

	// Untouched: it opens with the later state.
	be = open(t, sw.Device(), dir)
	ki, err := be.DescribeKey(ctx, "app/db")
	if err != nil || ki.Versions[0].State != keys.Disabled {
		t.Fatalf("DescribeKey = %+v, %v", ki, err)
	}
	be.Close()

	// The counter removed from the TPM: refused, it cannot be checked.
	undefine(t, sw.Device(), index)
	_, err = tpm.Open(ctx, tpm.Config{Device: sw.Device(), StateDir: dir, Auth: testAuth})
	if !errors.Is(err, tpm.ErrHistoryLost) || !strings.Contains(err.Error(), "is gone from the TPM") {
		t.Fatalf("Open without the counter: %v", err)
	}
}

// TestRollbackHalfDoneChange: a key change whose manifest or counter step
// fails (a crash, a full disk, a TPM reset) stands, and the step is
// finished by the next change, Health, or the next start; no blob wrapped
// under the new version is lost.
func TestRollbackHalfDoneChange(t *testing.T) {
	sw := swtpmtest.Start(t)
	dir := t.TempDir()
	ctx := t.Context()
	var logs testutil.SyncBuffer
	openLogged := func() *tpm.TPM {
		t.Helper()
		be, err := tpm.Open(ctx, tpm.Config{Device: sw.Device(), StateDir: dir, Auth: testAuth,
			Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		t.Cleanup(func() { be.Close() })
		return be
	}
	be := openLogged()
	mustCreate(t, be, "app/db", keys.AES256GCM)
	fault := errors.New("injected fault")

	for i, step := range []string{"manifest", "increment"} {
		t.Run(step, func(t *testing.T) {
			_, nv0, _, _ := be.CounterStatus()
			be.FailCounterStep(step, fault)
			ki, err := be.RotateKey(ctx, "app/db")
			if err != nil || len(ki.Versions) != i+2 {
				t.Fatalf("RotateKey with the %s step failing = %+v, %v (the change stands, and is reported done)", step, ki, err)
			}
			if _, _, _, settled := be.CounterStatus(); settled {
				t.Fatal("counter settled although its step failed")
			}
			blob, err := be.Wrap(ctx, "app/db", []byte("kept"), nil)
			if err != nil {
				t.Fatal(err)
			}
			// The next change first finishes this one, and cannot while the step fails.
			if _, err := be.SetVersionState(ctx, "app/db", 1, keys.Disabled); !errors.Is(err, fault) {
				t.Fatalf("a second change while the first is half done: %v", err)
			}
			// A crash now: reopen (a new backend: the fault gone) finishes the change.
			be.Close()
			be = openLogged()
			_, nv, mf, settled := be.CounterStatus()
			if !settled || nv != nv0+1 || mf != nv {
				t.Fatalf("after reopen: nv %d (was %d), manifest %d, settled %v", nv, nv0, mf, settled)
			}
			if !strings.Contains(logs.String(), "finished a key change interrupted by a crash") {
				t.Fatalf("no log line for the finished change:\n%s", logs.String())
			}
			u, err := be.Unwrap(ctx, blob, nil)
			if err != nil || string(u.Plaintext) != "kept" || u.Version != uint32(i+2) {
				t.Fatalf("Unwrap after reopen = %+v, %v", u, err)
			}
		})
	}

	// Health finishes a half-done change without a restart; Stats shows it
	// meanwhile (the metric keyward_tpm_rollback_counter_behind).
	be.FailCounterStep("increment", fault)
	if _, err := be.RotateKey(ctx, "app/db"); err != nil {
		t.Fatalf("RotateKey with the increment failing: %v", err)
	}
	if !be.Stats().CounterBehind {
		t.Error("Stats().CounterBehind false after a failed counter step")
	}
	be.FailCounterStep("", nil)
	if err := be.Health(ctx); err != nil {
		t.Fatal(err)
	}
	if be.Stats().CounterBehind {
		t.Error("Stats().CounterBehind still true after Health finished the step")
	}
	if _, nv, mf, settled := be.CounterStatus(); !settled || nv != mf {
		t.Fatalf("after Health: nv %d manifest %d settled %v", nv, mf, settled)
	}
	be.Close()
	if _, counter, seqs := readManifest(t, dir); seqs["app/db"] != counter {
		t.Fatalf("manifest at %d, app/db at %d", counter, seqs["app/db"])
	}
}

// TestRollbackMigration: a state directory made before the counter existed
// (records without seq, no manifest) gets its counter and manifest at the
// first start, with a warning, and is protected from then on.
func TestRollbackMigration(t *testing.T) {
	sw := swtpmtest.Start(t)
	dir := t.TempDir()
	ctx := t.Context()
	be := openConfig(t, tpm.WithoutCounter(tpm.Config{Device: sw.Device(), StateDir: dir, Auth: testAuth}))
	mustCreate(t, be, "app/db", keys.AES256GCM)
	be.Close()
	if _, err := os.Stat(filepath.Join(dir, "manifest.json")); !os.IsNotExist(err) {
		t.Fatalf("a manifest without the counter: %v", err)
	}
	old := mustRead(t, filepath.Join(dir, "keys", "app%2Fdb.json"))

	var logs testutil.SyncBuffer
	be, err := tpm.Open(ctx, tpm.Config{Device: sw.Device(), StateDir: dir, Auth: testAuth, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "records are trusted as they are now") {
		t.Fatalf("no warning for the migration:\n%s", logs.String())
	}
	if _, err := be.SetVersionState(ctx, "app/db", 1, keys.Disabled); err != nil {
		t.Fatal(err)
	}
	be.Close()
	write(t, filepath.Join(dir, "keys", "app%2Fdb.json"), old)
	_, err = tpm.Open(ctx, tpm.Config{Device: sw.Device(), StateDir: dir, Auth: testAuth})
	if !errors.Is(err, tpm.ErrRollback) {
		t.Fatalf("Open with the pre-counter record put back: %v", err)
	}
}

// disabledAfterSnapshot makes key app/db in dir, snapshots the state
// directory, disables v1 and closes the backend: the snapshot is then an
// older state, every file of it validly MAC'd. It returns the snapshot and
// the counter's index.
func disabledAfterSnapshot(t *testing.T, sw *swtpmtest.SWTPM, dir string) (map[string][]byte, uint32) {
	t.Helper()
	be := open(t, sw.Device(), dir)
	mustCreate(t, be, "app/db", keys.AES256GCM)
	before := snapshot(t, dir)
	if _, err := be.SetVersionState(t.Context(), "app/db", 1, keys.Disabled); err != nil {
		t.Fatal(err)
	}
	index, _, _, _ := be.CounterStatus()
	be.Close()
	return before, index
}

// TestRollbackFailedWrite: a record write reported as failed that reached
// the disk anyway (its directory fsync failed after the rename) is
// superseded at once: the key's current record is written again at that
// counter value, so a copy of the failed attempt, put back later, is
// refused; the failed change is not in effect, before or after a restart.
func TestRollbackFailedWrite(t *testing.T) {
	sw := swtpmtest.Start(t)
	dir := t.TempDir()
	ctx := t.Context()
	be := open(t, sw.Device(), dir)
	mustCreate(t, be, "app/x", keys.AES256GCM)
	mustCreate(t, be, "app/y", keys.AES256GCM)
	fault := errors.New("injected: fsync of the directory failed")
	file := filepath.Join(dir, "keys", "app%2Fx.json")

	var landed []byte
	be.OnCounterStep(func(step string) error {
		if step != "record" || landed != nil {
			return nil
		}
		landed = mustRead(t, file) // what an attacker could copy now
		return fault
	})
	if _, err := be.SetVersionState(ctx, "app/x", 1, keys.Disabled); !errors.Is(err, fault) {
		t.Fatalf("SetVersionState with the write failing: %v", err)
	}
	be.FailCounterStep("", nil)
	if !bytes.Contains(landed, []byte(`"disabled"`)) {
		t.Fatalf("the failed attempt did not land:\n%s", landed)
	}
	for _, tk := range []string{"running", "reopened"} {
		if tk == "reopened" {
			be.Close()
			be = open(t, sw.Device(), dir)
		}
		ki, err := be.DescribeKey(ctx, "app/x")
		if err != nil || ki.Versions[0].State != keys.Enabled {
			t.Fatalf("%s: x = %+v, %v (the failed change is not in effect)", tk, ki, err)
		}
		if _, _, _, settled := be.CounterStatus(); !settled {
			t.Fatalf("%s: counter not settled", tk)
		}
	}
	if _, err := be.RotateKey(ctx, "app/y"); err != nil {
		t.Fatal(err)
	}
	be.Close()
	current := mustRead(t, file)
	write(t, file, landed)
	_, err := tpm.Open(ctx, tpm.Config{Device: sw.Device(), StateDir: dir, Auth: testAuth})
	if !errors.Is(err, tpm.ErrRollback) || !strings.Contains(err.Error(), "is not the one manifest.json lists") {
		t.Fatalf("Open with the failed attempt put back: %v", err)
	}
	write(t, file, current)
	open(t, sw.Device(), dir)
}

// TestOpenVerifiesOneMAC: with a manifest, start-up checks the records
// against it, in software: two TPM2_HMAC (the auth proof and the
// manifest's MAC) however many keys there are.
func TestOpenVerifiesOneMAC(t *testing.T) {
	sw := swtpmtest.Start(t)
	dir := t.TempDir()
	be := open(t, sw.Device(), dir)
	for i := range 8 {
		mustCreate(t, be, fmt.Sprintf("app/k%d", i), keys.HMACSHA256)
	}
	be.Close()
	var hmacs atomic.Int64
	be = openConfig(t, tpm.TapWire(tpm.Config{Device: sw.Device(), StateDir: dir, Auth: testAuth}, func(cmd, rsp []byte) {
		if len(cmd) >= 10 && binary.BigEndian.Uint32(cmd[6:10]) == uint32(tpm2.TPMCCHMAC) {
			hmacs.Add(1)
		}
	}))
	if n := hmacs.Load(); n != 2 {
		t.Fatalf("Open ran %d TPM2_HMAC for 8 keys, want 2", n)
	}
	list, err := be.ListKeys(t.Context())
	if err != nil || len(list) != 8 {
		t.Fatalf("ListKeys = %d keys, %v", len(list), err)
	}
}

// TestRollbackCounterOff: with NoRollbackCounter the state directory opens
// without the counter (and says so, once a manifest exists), and an older
// record is then not detected; with the counter it is. Doctor, reading
// without the lock, reports a rolled-back directory instead of refusing it.
func TestRollbackCounterOff(t *testing.T) {
	t.Parallel() // its own swtpm and state directory
	sw := swtpmtest.Start(t)
	dir := t.TempDir()
	ctx := t.Context()
	before, _ := disabledAfterSnapshot(t, sw, dir)
	after := snapshot(t, dir)
	restore(t, dir, before, "keys/app%2Fdb.json")

	// Doctor: opens, reports (here an older record; with counter and
	// manifest both gone, see TestRollbackTrustCurrentState).
	ro, err := tpm.Open(ctx, tpm.Config{Device: sw.Device(), StateDir: dir, Auth: testAuth, ReadOnly: true})
	if err != nil {
		t.Fatalf("read-only Open of a rolled-back directory: %v", err)
	}
	rep, err := ro.Doctor(ctx)
	ro.Close()
	if err != nil || rep.Weak() == 0 || !strings.HasPrefix(rep.Rollback, "ROLLBACK: ") || !strings.Contains(rep.Findings[0].Problem, "rolled back") {
		t.Fatalf("Doctor = %+v, %v", rep, err)
	}

	// Counter off: opens, with a warning, and takes the older record.
	var logs testutil.SyncBuffer
	off, err := tpm.Open(ctx, tpm.Config{Device: sw.Device(), StateDir: dir, Auth: testAuth, NoRollbackCounter: true,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatalf("Open with the counter off: %v", err)
	}
	ki, err := off.DescribeKey(ctx, "app/db")
	off.Close()
	if err != nil || ki.Versions[0].State != keys.Enabled {
		t.Fatalf("DescribeKey with the counter off = %+v, %v (the older record, undetected)", ki, err)
	}
	if !strings.Contains(logs.String(), "rollback counter off") {
		t.Fatalf("no warning:\n%s", logs.String())
	}
	if _, err := tpm.Open(ctx, tpm.Config{Device: sw.Device(), StateDir: dir, Auth: testAuth}); !errors.Is(err, tpm.ErrRollback) {
		t.Fatalf("Open with the counter on: %v", err)
	}
	restore(t, dir, after)
	be := open(t, sw.Device(), dir)
	if rep, err := be.Doctor(ctx); err != nil || rep.Weak() > 0 || !strings.HasSuffix(rep.Rollback, ": consistent") {
		t.Fatalf("Doctor after restore = %+v, %v", rep, err)
	}
}

// TestDefineCounterWithOwnerAuth: on a TPM whose owner authorisation is
// set (with a persistent parent, as such TPMs need), keywardd does not try
// to define its counter and says what to run; DefineCounter, given the
// owner's authorisation and the right auth secret, defines it, and the
// next start takes it into use.
func TestDefineCounterWithOwnerAuth(t *testing.T) {
	sw := swtpmtest.Start(t)
	const handle = 0x81000011
	makePersistentParent(t, sw.Device(), handle)
	ownerAuth := []byte("owner-authorisation-of-the-it-team")
	conn, err := tpm.Dial(sw.Device())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (tpm2.HierarchyChangeAuth{AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		NewAuth: tpm2.TPM2BAuth{Buffer: ownerAuth}}).Execute(conn); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	ctx := t.Context()
	cfg := tpm.Config{Device: sw.Device(), StateDir: t.TempDir(), Auth: testAuth, ParentHandle: handle}

	if _, err := tpm.DefineCounter(ctx, cfg, ownerAuth); !errors.Is(err, tpm.ErrConfig) || !strings.Contains(err.Error(), "not initialised") {
		t.Fatalf("DefineCounter before keywardd's first start: %v", err)
	}
	_, err = tpm.Open(ctx, cfg)
	if !errors.Is(err, tpm.ErrConfig) || !errors.Is(err, tpm.ErrOwnerAuth) || strings.Contains(err.Error(), "keyward ") {
		t.Fatalf("Open with the owner authorisation set: %v", err)
	}
	wrongSecret := cfg
	wrongSecret.Auth = []byte("some-other-auth-secret-0123456789")
	if _, err := tpm.DefineCounter(ctx, wrongSecret, ownerAuth); !errors.Is(err, tpm.ErrCredential) {
		t.Fatalf("DefineCounter with another auth secret: %v", err)
	}
	if _, err := tpm.DefineCounter(ctx, cfg, []byte("not-the-owner-auth")); !errors.Is(err, tpm.ErrCredential) {
		t.Fatalf("DefineCounter with a wrong owner authorisation: %v", err)
	}
	index, err := tpm.DefineCounter(ctx, cfg, ownerAuth)
	if err != nil || !strings.HasPrefix(index, "0x01") {
		t.Fatalf("DefineCounter = %q, %v", index, err)
	}
	be, err := tpm.Open(ctx, cfg)
	if err != nil {
		t.Fatalf("Open after DefineCounter: %v", err)
	}
	mustCreate(t, be, "app/k", keys.AES256GCM)
	got, nv, mf, settled := be.CounterStatus()
	be.Close()
	if fmt.Sprintf("0x%08x", got) != index || !settled || nv != mf || nv < 2 {
		t.Fatalf("counter 0x%08x (defined %s) at %d, manifest %d, settled %v", got, index, nv, mf, settled)
	}
	if again, err := tpm.DefineCounter(ctx, cfg, ownerAuth); !errors.Is(err, tpm.ErrCounterDefined) || again != index {
		t.Fatalf("DefineCounter again = %q, %v", again, err)
	}
}

// TestRollbackTrustCurrentState: a state directory whose counter history is
// gone is not taken for one that never had a counter: records stamped by a
// counter that was removed with the manifest (with an empty owner
// authorisation anyone who can open the TPM can remove an index), with an
// older record put back; or a manifest lost while its counter exists (a
// crash during the first start with a counter, or tampering). Both are
// refused; only an operator's TrustCurrentState (keywardd
// define-counter --trust-current-state) accepts the state as it is, after
// which it is protected again.
func TestRollbackTrustCurrentState(t *testing.T) {
	t.Parallel() // its own swtpm and state directory
	cases := []struct {
		name    string
		remove  func(t *testing.T, sw *swtpmtest.SWTPM, dir string, index uint32, before map[string][]byte)
		wantMsg string
		want    keys.State // app/db v1 once trusted
	}{
		{"counter and manifest removed and an older record put back", func(t *testing.T, sw *swtpmtest.SWTPM, dir string, index uint32, before map[string][]byte) {
			undefine(t, sw.Device(), index)
			os.Remove(filepath.Join(dir, "manifest.json"))
			restore(t, dir, before, "keys/app%2Fdb.json")
		}, "both were removed", keys.Enabled},
		{"manifest lost with its counter there", func(t *testing.T, _ *swtpmtest.SWTPM, dir string, _ uint32, _ map[string][]byte) {
			os.Remove(filepath.Join(dir, "manifest.json"))
		}, "is missing, but this state directory's rollback counter", keys.Disabled},
		{"counter gone with its manifest there", func(t *testing.T, sw *swtpmtest.SWTPM, _ string, index uint32, _ map[string][]byte) {
			undefine(t, sw.Device(), index)
		}, "is gone from the TPM", keys.Disabled},
		{"a change made with the counter off", func(t *testing.T, sw *swtpmtest.SWTPM, dir string, _ uint32, _ map[string][]byte) {
			off, err := tpm.Open(t.Context(), tpm.Config{Device: sw.Device(), StateDir: dir, Auth: testAuth, NoRollbackCounter: true})
			if err != nil {
				t.Fatal(err)
			}
			defer off.Close()
			if _, err := off.SetVersionState(t.Context(), "app/db", 1, keys.Enabled); err != nil {
				t.Fatal(err)
			}
		}, "rolled back", keys.Enabled},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sw := swtpmtest.Start(t)
			dir := t.TempDir()
			ctx := t.Context()
			before, index := disabledAfterSnapshot(t, sw, dir)
			tc.remove(t, sw, dir, index, before)

			_, err := tpm.Open(ctx, tpm.Config{Device: sw.Device(), StateDir: dir, Auth: testAuth})
			if !errors.Is(err, tpm.ErrRollback) || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("Open: %v, want ErrRollback saying %q", err, tc.wantMsg)
			}
			// Doctor reports what keywardd refuses.
			ro, err := tpm.Open(ctx, tpm.Config{Device: sw.Device(), StateDir: dir, Auth: testAuth, ReadOnly: true})
			if err != nil {
				t.Fatalf("read-only Open: %v", err)
			}
			rep, err := ro.Doctor(ctx)
			ro.Close()
			if err != nil || rep.Weak() == 0 || !strings.HasPrefix(rep.Rollback, "ROLLBACK: ") {
				t.Fatalf("Doctor = %+v, %v", rep, err)
			}
			be, err := tpm.Open(ctx, tpm.Config{Device: sw.Device(), StateDir: dir, Auth: testAuth, TrustCurrentState: true})
			if err != nil {
				t.Fatalf("Open trusting the current state: %v", err)
			}
			if !strings.HasSuffix(be.RollbackStatus(), "consistent (defined at this start)") {
				t.Errorf("status %q", be.RollbackStatus())
			}
			be.Close()
			be = open(t, sw.Device(), dir)
			if ki, err := be.DescribeKey(ctx, "app/db"); err != nil || ki.Versions[0].State != tc.want {
				t.Fatalf("the trusted state: %+v, %v", ki, err)
			}
			if _, _, _, settled := be.CounterStatus(); !settled {
				t.Fatal("not settled after trusting")
			}
		})
	}
}
