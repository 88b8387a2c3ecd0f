package daemon_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyward/keyward/audit"
	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/daemon"
	"github.com/keyward/keyward/keys"
	softhsmtest "github.com/keyward/keyward/softhsm-test"
)

// bgStoreEnv makes the test binary a fresh process that runs keywardd's
// start-up check of a token's grant store (bgStoreChild).
const bgStoreEnv = "KEYWARD_BG_STORE_CHILD"

// bgStoreChild opens the token of KW_TOKEN (module KW_MODULE, PIN in
// KW_PIN_FILE) and prints what keywardd's start-up check of its grant
// store says with the high-water file KW_SEEN ("" none): "ok GRANTS" or
// "refused ERR".
func bgStoreChild() int {
	cfg := config.Defaults()
	cfg.Backend.Module, cfg.Backend.Token, cfg.Backend.PINFile = os.Getenv("KW_MODULE"), os.Getenv("KW_TOKEN"), os.Getenv("KW_PIN_FILE")
	cfg.Backend.MetadataMaxAge = config.Duration{Duration: -1}
	ctx := context.Background()
	be, err := daemon.OpenBackend(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		fmt.Println("open:", err)
		return 1
	}
	out, err := daemon.CheckBreakglassAtStart(ctx, be, os.Getenv("KW_SEEN"))
	if err != nil {
		fmt.Println("refused", err)
		return 0
	}
	fmt.Println("ok", out)
	return 0
}

// bgTokenCheck runs bgStoreChild on a token in a fresh process (whose
// SoftHSM2 reads the token directory anew) and returns its line.
func bgTokenCheck(t *testing.T, label, pinFile, seen string) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), bgStoreEnv+"=1", "KW_MODULE="+tok.Module, "KW_TOKEN="+label, "KW_PIN_FILE="+pinFile, "KW_SEEN="+seen)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("check child: %v: %s", err, out)
	}
	return strings.TrimSpace(string(out))
}

// snapshotDir copies the files of dir (a SoftHSM2 token directory) into a
// new directory.
func snapshotDir(t *testing.T, dir string) string {
	t.Helper()
	snap := t.TempDir()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(snap, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return snap
}

// rollBackObjects is the attack on a file-backed token: the object files
// created since snap are deleted, and those deleted since are copied back
// (token.object and the other files stay as they are).
func rollBackObjects(t *testing.T, dir, snap string) {
	t.Helper()
	names := func(d string) map[string]bool {
		ents, err := os.ReadDir(d)
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]bool{}
		for _, e := range ents {
			if n := e.Name(); strings.HasSuffix(n, ".object") || strings.HasSuffix(n, ".lock") {
				if !strings.HasPrefix(n, "token.") {
					m[n] = true
				}
			}
		}
		return m
	}
	now, then := names(dir), names(snap)
	changed := 0
	for n := range now {
		if !then[n] {
			os.Remove(filepath.Join(dir, n))
			changed++
		}
	}
	for n := range then {
		if !now[n] {
			b, err := os.ReadFile(filepath.Join(snap, n))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, n), b, 0o600); err != nil {
				t.Fatal(err)
			}
			changed++
		}
	}
	if changed == 0 {
		t.Fatal("the rollback changed no object file")
	}
}

// TestBreakglassRollbackSoftHSM: on a SoftHSM2 token, an attacker who can
// write the token directory puts back the object files of an active grant
// after its revocation. The running daemon honours nothing of the store
// (an ERROR line with the store's MESSAGE_ID, a breakglass.store audit
// record), and a daemon started anew with its high-water file refuses the
// store; a fresh host without one reads the older generation (the limit
// docs/breakglass.md states).
func TestBreakglassRollbackSoftHSM(t *testing.T) {
	softhsmtest.Need(t, tok)
	label := fmt.Sprintf("bg-rollback-%08x", rand.Uint32())
	pin, err := tok.InitToken(label)
	if err != nil {
		t.Fatal(err)
	}
	pinFile := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(pinFile, []byte(pin), 0o600); err != nil {
		t.Fatal(err)
	}
	tokenDir, err := tok.TokenDirOf(label)
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Defaults()
	cfg.Backend.Module, cfg.Backend.Token, cfg.Backend.PINFile = tok.Module, label, pinFile
	cfg.Backend.MetadataMaxAge = config.Duration{Duration: -1}
	be, err := daemon.OpenBackend(t.Context(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	// Closed, so that the module is finalised with its last token: a
	// module loaded since before a token was made does not show it.
	t.Cleanup(func() { be.Close() })
	if _, err := be.CreateKey(t.Context(), "db/sign", keys.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	clock := &testClock{now: time.Now()}
	dir := bgDir(t)
	d, err := startBG(t, dir, be, clock, 1)
	if err != nil {
		t.Fatal(err)
	}
	seen := filepath.Join(dir, "state", "breakglass-seen.json")
	req, appr := as(t, d.sock, bgRequesterUID), as(t, d.sock, bgApproverUID)
	id := requestGrant(t, req, "db-emergency db/sign sign 600 INC-10")
	expect(t, appr, "bg-approve "+id, "OK active")
	expect(t, req, "sign db/sign", "OK signed(1)")
	snap := snapshotDir(t, tokenDir)
	expect(t, appr, "bg-revoke "+id, "OK revoked")
	expect(t, req, "sign db/sign", "PermissionDenied PERMISSION_DENIED")
	if fi, err := os.Lstat(seen); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("high-water file: %v %v, want mode 0600", fi, err)
	}

	rollBackObjects(t, tokenDir, snap)
	// A requester's list reads the store afresh (a change may be refused
	// from the cached view first: the grant is revoked there).
	if got := req.do("bg-list"); !strings.Contains(got, "INTEGRITY") {
		t.Errorf("list on the rolled-back store: %q, want an INTEGRITY failure", got)
	}
	if !strings.Contains(d.logs.String(), "MESSAGE_ID=5f0b6c1e9a3d4e2b8c7f1a6d3e9b2c47") {
		t.Error("no log line with the store's MESSAGE_ID")
	}
	expect(t, req, "sign db/sign", "PermissionDenied PERMISSION_DENIED")
	if err := d.stop(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(d.logs.String(), "level=ERROR") {
		t.Error("no ERROR line for the failed store")
	}
	recs, err := audit.ReadRecords(d.auditLog)
	if err != nil {
		t.Fatal(err)
	}
	stored := false
	for _, r := range recs {
		stored = stored || r.Op == "breakglass.store" && r.Result == "INTEGRITY" && r.Peer.Unit == daemon.BreakglassUnit
	}
	if !stored {
		t.Error("no breakglass.store INTEGRITY audit record")
	}

	// A restart: a fresh process reads the token anew.
	if got := bgTokenCheck(t, label, pinFile, seen); !strings.HasPrefix(got, "refused") || !strings.Contains(got, id) {
		t.Errorf("restart with the high-water file: %q, want refused naming grant %s", got, id)
	}
	if got, want := bgTokenCheck(t, label, pinFile, ""), "ok "+id+":2:active"; got != want {
		t.Errorf("fresh host without a high-water file: %q, want %q (the rollback the file guards against)", got, want)
	}
}
