package tpm_test

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyward/keyward/internal/testutil"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/tpm"
	"github.com/keyward/keyward/tpm/swtpmtest"
)

// grantSnapshot copies the state directory's manifest, key records and
// grant records.
func grantSnapshot(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := snapshot(t, dir)
	files, _ := filepath.Glob(filepath.Join(dir, "grants", "*.json"))
	for _, f := range files {
		rel, _ := filepath.Rel(dir, f)
		out[rel] = mustRead(t, f)
	}
	return out
}

// putState restores snap exactly: grant files it lacks are removed.
func putState(t *testing.T, dir string, snap map[string][]byte) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "grants", "*.json"))
	for _, f := range files {
		if rel, _ := filepath.Rel(dir, f); snap[rel] == nil {
			os.Remove(f)
		}
	}
	restore(t, dir, snap)
}

func wantGrants(t *testing.T, be *tpm.TPM, want map[string]string) {
	t.Helper()
	all, err := be.Grants(t.Context())
	if err != nil {
		t.Fatalf("Grants: %v", err)
	}
	got := map[string]string{}
	for _, g := range all {
		got[g.ID] = string(g.Body)
	}
	if len(got) != len(want) {
		t.Fatalf("Grants = %v, want %v", got, want)
	}
	for id, body := range want {
		if got[id] != body {
			t.Fatalf("Grants = %v, want %v", got, want)
		}
	}
}

func mustPut(t *testing.T, be *tpm.TPM, id string, gen uint64, body string) {
	t.Helper()
	if err := be.PutGrant(t.Context(), id, gen, []byte(body)); err != nil {
		t.Fatalf("PutGrant(%s, gen %d): %v", id, gen, err)
	}
}

// TestGrantRollback: grant files put back from an older copy (the grant
// from before its revocation), edited, removed, or moved are refused at
// start with ErrIntegrity (ErrRollback for an older copy), and while the
// daemon runs by Grants; a deleted grant put back is removed, never
// served. Untouched, the state opens with the later grants.
func TestGrantRollback(t *testing.T) {
	sw := swtpmtest.Start(t)
	dir := t.TempDir()
	ctx := t.Context()
	var logs testutil.SyncBuffer
	openLogged := func(t *testing.T) (*tpm.TPM, error) {
		be, err := tpm.Open(ctx, tpm.Config{Device: sw.Device(), StateDir: dir, Auth: testAuth, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		if err == nil {
			t.Cleanup(func() { be.Close() })
		}
		return be, err
	}
	be, err := openLogged(t)
	if err != nil {
		t.Fatal(err)
	}
	mustCreate(t, be, "app/db", keys.AES256GCM)
	mustPut(t, be, "g1", 1, `{"state":"pending"}`)
	mustPut(t, be, "g1", 2, `{"state":"active"}`)
	mustPut(t, be, "g2", 1, `{"state":"active"}`)
	before := grantSnapshot(t, dir)
	mustPut(t, be, "g1", 3, `{"state":"revoked"}`)
	if err := be.DeleteGrant(ctx, "g2"); err != nil {
		t.Fatal(err)
	}
	wantLater := map[string]string{"g1": `{"state":"revoked"}`}
	wantGrants(t, be, wantLater)

	// While it runs: files put back, edited or removed fail Grants.
	later := grantSnapshot(t, dir)
	for _, edit := range []func(){
		func() { restore(t, dir, before, "grants/g1.json") },
		func() { restore(t, dir, before, "grants/g2.json") },
		func() { os.Remove(filepath.Join(dir, "grants", "g1.json")) },
		func() { tamperGrant(t, dir, "g1") },
	} {
		edit()
		if _, err := be.Grants(ctx); !errors.Is(err, keys.ErrIntegrity) {
			t.Fatalf("Grants after the state directory's grants changed: %v, want ErrIntegrity", err)
		}
		putState(t, dir, later)
		wantGrants(t, be, wantLater)
	}
	be.Close()

	cases := []struct {
		name    string
		edit    func(t *testing.T)
		wantErr error
		wantMsg string
	}{
		{"grant put back from before its revocation", func(t *testing.T) {
			restore(t, dir, before, "grants/g1.json")
		}, tpm.ErrRollback, "rolled back"},
		{"manifest and grants put back together", func(t *testing.T) { putState(t, dir, before) }, tpm.ErrRollback, "was rolled back"},
		{"grant edited", func(t *testing.T) { tamperGrant(t, dir, "g1") }, keys.ErrIntegrity, "fails its MAC"},
		{"grant removed", func(t *testing.T) { os.Remove(filepath.Join(dir, "grants", "g1.json")) }, tpm.ErrRollback, "record is missing"},
		{"grant copied to another id", func(t *testing.T) {
			write(t, filepath.Join(dir, "grants", "g3.json"), later["grants/g1.json"])
		}, keys.ErrIntegrity, "grants/g3.json"},
		{"key record as a grant", func(t *testing.T) {
			write(t, filepath.Join(dir, "grants", "g3.json"), later["keys/app%2Fdb.json"])
		}, keys.ErrIntegrity, "grants/g3.json"},
		{"grant as a key record", func(t *testing.T) {
			write(t, filepath.Join(dir, "keys", "g1.json"), later["grants/g1.json"])
		}, keys.ErrIntegrity, "keys/g1.json"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.edit(t)
			defer func() {
				os.Remove(filepath.Join(dir, "keys", "g1.json"))
				putState(t, dir, later)
			}()
			be, err := openLogged(t)
			if err == nil {
				be.Close()
				t.Fatal("Open accepted the changed grants")
			}
			if !errors.Is(err, tc.wantErr) || !errors.Is(err, keys.ErrIntegrity) || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("Open: %v; want %v mentioning %q", err, tc.wantErr, tc.wantMsg)
			}
		})
	}

	t.Run("deleted grant put back", func(t *testing.T) {
		restore(t, dir, before, "grants/g2.json")
		be, err := openLogged(t)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		wantGrants(t, be, wantLater)
		be.Close()
		if _, err := os.Lstat(filepath.Join(dir, "grants", "g2.json")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("the deleted grant's file put back is still there: %v", err)
		}
		if !strings.Contains(logs.String(), "removing the file of a grant that manifest.json does not list") {
			t.Fatalf("no log line for the removed file:\n%s", logs.String())
		}
	})

	t.Run("read_only", func(t *testing.T) {
		ro, err := tpm.Open(ctx, tpm.Config{Device: sw.Device(), StateDir: dir, Auth: testAuth, ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		defer ro.Close()
		wantGrants(t, ro, wantLater)
		if err := ro.PutGrant(ctx, "g1", 4, []byte("x")); !errors.Is(err, keys.ErrReadOnly) {
			t.Fatalf("PutGrant read-only: %v", err)
		}
		if err := ro.DeleteGrant(ctx, "g1"); !errors.Is(err, keys.ErrReadOnly) {
			t.Fatalf("DeleteGrant read-only: %v", err)
		}
	})

	// Untouched: it opens with the later grants.
	be, err = openLogged(t)
	if err != nil {
		t.Fatal(err)
	}
	wantGrants(t, be, wantLater)
	if err := be.PutGrant(ctx, "g1", 3, []byte("stale")); !errors.Is(err, keys.ErrGrantConflict) {
		t.Fatalf("PutGrant(gen 3) after reopening: %v, want ErrGrantConflict", err)
	}
}

// TestGrantHalfDoneChange: a grant change or deletion whose counter step
// fails stands, the next start finishes it, and a deleted grant's file
// left behind is removed then.
func TestGrantHalfDoneChange(t *testing.T) {
	sw := swtpmtest.Start(t)
	dir := t.TempDir()
	ctx := t.Context()
	be := open(t, sw.Device(), dir)
	mustPut(t, be, "g1", 1, "one")
	mustPut(t, be, "g2", 1, "two")
	fault := errors.New("injected fault")

	be.FailCounterStep("increment", fault)
	mustPut(t, be, "g1", 2, "one again")
	be.Close()
	be = open(t, sw.Device(), dir)
	if _, nv, mf, settled := be.CounterStatus(); !settled || nv != mf {
		t.Fatalf("after reopen: nv %d manifest %d settled %v", nv, mf, settled)
	}
	wantGrants(t, be, map[string]string{"g1": "one again", "g2": "two"})

	be.FailCounterStep("increment", fault)
	if err := be.DeleteGrant(ctx, "g2"); err != nil {
		t.Fatalf("DeleteGrant with the increment failing: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "grants", "g2.json")); err != nil {
		t.Fatalf("the file of a deletion not yet counted is gone: %v", err)
	}
	wantGrants(t, be, map[string]string{"g1": "one again"})
	be.Close()
	be = open(t, sw.Device(), dir)
	wantGrants(t, be, map[string]string{"g1": "one again"})
	if _, err := os.Lstat(filepath.Join(dir, "grants", "g2.json")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the deleted grant's file after reopen: %v", err)
	}
	be.FailCounterStep("record", fault)
	if err := be.PutGrant(ctx, "g3", 1, []byte("failed")); !errors.Is(err, fault) {
		t.Fatalf("PutGrant with its write failing: %v", err)
	}
	if err := be.PutGrant(ctx, "g1", 3, []byte("failed")); !errors.Is(err, fault) {
		t.Fatalf("PutGrant with its write failing: %v", err)
	}
	be.FailCounterStep("", nil)
	wantGrants(t, be, map[string]string{"g1": "one again"})
	be.Close()
	be = open(t, sw.Device(), dir)
	wantGrants(t, be, map[string]string{"g1": "one again"})

	// A deletion whose manifest could not be written keeps the file, and a
	// second deletion of the same id does not remove it while the manifest
	// on disk still lists the grant: the next start would find it missing.
	be.FailCounterStep("manifest", fault)
	if err := be.DeleteGrant(ctx, "g1"); err != nil {
		t.Fatalf("DeleteGrant with the manifest failing: %v", err)
	}
	if err := be.DeleteGrant(ctx, "g1"); !errors.Is(err, fault) {
		t.Fatalf("second DeleteGrant with the manifest still failing: %v, want the fault", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "grants", "g1.json")); err != nil {
		t.Fatalf("the file of a deletion the manifest still lists is gone: %v", err)
	}
	be.FailCounterStep("", nil)
	be.Close()
	// The start is not refused; the deletion never reached the manifest
	// (its failure was logged, and nothing retried it before the close),
	// so the grant is still there.
	be = open(t, sw.Device(), dir)
	wantGrants(t, be, map[string]string{"g1": "one again"})
}
