package daemon_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/audit"
	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/envelope"
)

type auditLine struct {
	Seq  uint64 `json:"seq"`
	Peer struct {
		UID  uint32 `json:"uid"`
		Unit string `json:"unit"`
	} `json:"peer"`
	Op            string `json:"op"`
	Key           string `json:"key"`
	Version       uint32 `json:"version"`
	ContextDigest string `json:"context_digest"`
	Result        string `json:"result"`
	Reason        string `json:"reason"`
	RequestID     string `json:"request_id"`
}

// readAudit reads the records of the log file at path, through the audit
// package's reader (complete lines; the free space after them skipped).
func readAudit(t *testing.T, path string) []auditLine { return readAuditAs[auditLine](t, path) }

// readAuditAs is readAudit into a record type of the caller's.
func readAuditAs[T any](t *testing.T, path string) []T {
	t.Helper()
	lines, err := audit.FileLines(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []T
	for _, l := range lines {
		var a T
		if err := json.Unmarshal(l, &a); err != nil {
			t.Fatalf("audit line %q: %v", l, err)
		}
		out = append(out, a)
	}
	return out
}

// TestAuditTrail: allowed, denied and failed operations, and each item of a
// batch, leave one record each, with the caller's uid, key, version, a
// context digest (never the values) and the result; the chain verifies.
// auditSyncModes runs f once per audit_sync mode: records are on file
// before the reply in both.
func auditSyncModes(t *testing.T, f func(t *testing.T, mode string)) {
	for _, mode := range []string{"fsync", "write"} {
		t.Run(mode, func(t *testing.T) { f(t, mode) })
	}
}

func TestAuditTrail(t *testing.T) { auditSyncModes(t, testAuditTrail) }

func testAuditTrail(t *testing.T, mode string) {
	r := start(t, testRules(), func(c *config.Config) { c.AuditSync = mode })
	ctx := context.Background()
	key := "app/audited-" + mode
	c := dial(t, r.sock)
	if _, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: key, KeyType: "aes-256-gcm"}); err != nil {
		t.Fatal(err)
	}
	w, err := c.Wrap(ctx, &pb.WrapRequest{Key: key, Plaintext: []byte("x"), Context: map[string]string{"app": "web"}})
	if err != nil {
		t.Fatal(err)
	}
	c.Unwrap(ctx, &pb.UnwrapRequest{Ciphertext: w.Ciphertext, Context: map[string]string{"app": "other-value"}})
	c.BatchWrap(ctx, &pb.BatchWrapRequest{Items: []*pb.WrapRequest{{Key: key, Plaintext: []byte("a")}, {Key: "app/missing", Plaintext: []byte("b")}}})
	c.Wrap(ctx, &pb.WrapRequest{Key: "Not/Valid", Plaintext: []byte("x")})
	outsider := as(t, r.sock, outsideUID)
	outsider.do("unwrap " + strings.Repeat("00", 4) + " app=web")
	outsider.do("wrap " + key)
	c.Status(ctx, &pb.StatusRequest{})

	logPath := filepath.Join(filepath.Dir(r.cfgPath), "audit", "audit.log")
	recs := readAudit(t, logPath)
	var got []string
	for _, a := range recs {
		got = append(got, strings.Join([]string{a.Op, a.Key, a.Result}, " "))
	}
	want := []string{
		"key.create " + key + " STARTED",
		"key.create " + key + " OK",
		"wrap " + key + " OK",
		"unwrap " + key + " DECRYPTION_FAILED",
		"wrap " + key + " OK",
		"wrap app/missing KEY_NOT_FOUND",
		"wrap Not/Valid INVALID_KEY_NAME",
		"unwrap  MALFORMED_CIPHERTEXT",
		"wrap " + key + " PERMISSION_DENIED",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("audit records:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if recs[0].RequestID != recs[1].RequestID {
		t.Errorf("the intent and outcome records of one change should share a request id")
	}
	recs = recs[1:]
	if recs[1].Version != 1 || recs[1].ContextDigest == "" || recs[1].Peer.UID != 0 {
		t.Errorf("wrap record %+v", recs[1])
	}
	// The digest is keyed with the log directory's context key, and marked so.
	ckey, err := audit.ReadContextKey(filepath.Join(filepath.Dir(logPath), audit.ContextKeyName))
	if err != nil {
		t.Fatal(err)
	}
	web := envelope.CanonicalContext(map[string]string{"app": "web"})
	if d := audit.ContextDigest(ckey, web); recs[1].ContextDigest != audit.ContextHMACPrefix+hex.EncodeToString(d[:]) {
		plain := sha256.Sum256(web)
		t.Errorf("wrap record's context digest %s: want the HMAC under the context key (plain SHA-256: %x)", recs[1].ContextDigest, plain)
	}
	if recs[3].RequestID != recs[4].RequestID || recs[3].RequestID == recs[1].RequestID {
		t.Errorf("batch items should share one request id, distinct from other calls")
	}
	if den := recs[7]; den.Peer.UID != outsideUID || !strings.Contains(den.Reason, "no rule grants wrap") {
		t.Errorf("denied record %+v", den)
	}
	raw, _ := os.ReadFile(logPath)
	if strings.Contains(string(raw), "other-value") || strings.Contains(string(raw), `"web"`) {
		t.Error("a context value appears in the audit log")
	}
	if res, err := audit.Verify(logPath); err != nil {
		t.Fatalf("audit verify: %v (%+v)", err, res)
	}
}

// TestAuditFailClosed: the audit log on a full file system (a 64 KiB tmpfs)
// makes keywardd refuse operations with AUDIT_UNAVAILABLE and say so in
// status; once space is freed it serves again, and every operation that
// succeeded is in the log.
func TestAuditFailClosed(t *testing.T) { auditSyncModes(t, testAuditFailClosed) }

func testAuditFailClosed(t *testing.T, mode string) {
	if os.Getuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", mnt).CombinedOutput(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("mount tmpfs: %v %s", err, out)
		}
		t.Skipf("cannot mount a tmpfs here: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", mnt).Run() })
	logPath := filepath.Join(mnt, "audit.log")
	r := start(t, testRules(), func(c *config.Config) { c.AuditLog, c.AuditSync = logPath, mode })
	ctx := context.Background()
	c := dial(t, r.sock)
	if _, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: "app/full-" + mode, KeyType: "aes-256-gcm"}); err != nil {
		t.Fatal(err)
	}
	// Fill the file system, leaving almost nothing.
	filler := filepath.Join(mnt, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 1024)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	f.Close()
	ok, refused := 0, 0
	wrap := func() string {
		_, err := c.Wrap(ctx, &pb.WrapRequest{Key: "app/full-" + mode, Plaintext: []byte("x")})
		r := reason(err)
		switch {
		case r == "OK":
			ok++
		case r == "Unavailable AUDIT_UNAVAILABLE":
			refused++
		default:
			t.Fatalf("wrap with a full audit disk: %s", r)
		}
		return r
	}
	for range 50 {
		wrap()
	}
	if refused == 0 {
		t.Fatalf("no operation refused with the audit file system full (%d ok)", ok)
	}
	st, err := c.Status(ctx, &pb.StatusRequest{})
	if err != nil || !strings.HasPrefix(st.Audit, "failing") {
		t.Errorf("status while failing: %q %v", st.GetAudit(), err)
	}
	okBefore := ok
	os.Remove(filler)
	deadline := time.Now().Add(30 * time.Second)
	for wrap() != "OK" {
		if time.Now().After(deadline) {
			t.Fatal("still refused 30 s after space was freed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	for range 20 {
		if wrap() != "OK" {
			t.Fatal("refused again after recovery")
		}
	}
	t.Logf("%d wraps succeeded before the disk filled or while it was full, %d refused, then served again", okBefore, refused)
	n := 0
	for _, a := range readAudit(t, logPath) {
		if a.Op == "wrap" && a.Result == "OK" {
			n++
		}
	}
	if n != ok {
		t.Errorf("%d successful wraps, %d OK wrap records", ok, n)
	}
	if _, err := audit.Verify(logPath); err != nil {
		t.Fatalf("audit verify after the outage: %v", err)
	}
	if st, _ := c.Status(ctx, &pb.StatusRequest{}); st.GetAudit() != "ok" {
		t.Errorf("status after recovery: %q", st.GetAudit())
	}
}

// TestAuditCheckpoints: with audit_checkpoint_key, keywardd signs checkpoint
// records with the HSM key; they verify with the key's public half, and no
// caller may sign with that key, whatever the policy grants.
func TestAuditCheckpoints(t *testing.T) {
	r := start(t, testRules(), func(c *config.Config) {
		c.AuditCheckpointKey = "audit/ckpt"
		c.AuditCheckpointEvery = 5
	})
	ctx := context.Background()
	c := dial(t, r.sock)
	if _, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: "audit/ckpt", KeyType: "ecdsa-p256"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: "app/ck", KeyType: "aes-256-gcm"}); err != nil {
		t.Fatal(err)
	}
	for range 12 {
		if _, err := c.Wrap(ctx, &pb.WrapRequest{Key: "app/ck", Plaintext: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	// Root may sign with every key by policy, but not with this one.
	if _, err := c.Sign(ctx, &pb.SignRequest{Key: "audit/ckpt", Message: []byte("forged checkpoint")}); !strings.HasSuffix(reason(err), " PERMISSION_DENIED") {
		t.Fatalf("sign with the checkpoint key: %v", err)
	}
	pk, err := c.GetPublicKey(ctx, &pb.GetPublicKeyRequest{Key: "audit/ckpt"})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.ParsePKIXPublicKey(pk.GetPublicKeyDer())
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(filepath.Dir(r.cfgPath), "audit", "audit.log")
	res, err := audit.VerifyWith(audit.VerifyOptions{CheckpointKeys: []crypto.PublicKey{pub}}, logPath)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if res.Checkpoints < 2 {
		t.Fatalf("%d checkpoints in %d records", res.Checkpoints, res.Records)
	}
	var denied bool
	for _, a := range readAudit(t, logPath) {
		if a.Op == "sign" && a.Key == "audit/ckpt" && a.Result == "PERMISSION_DENIED" && strings.Contains(a.Reason, "reserved") {
			denied = true
		}
	}
	if !denied {
		t.Error("the refused sign is not in the audit log with its reason")
	}
}

// TestAuditUnsyncedMetric: keyward_audit_unsynced_records (and status's
// audit_unsynced) counts the records acknowledged but not yet fsynced: none
// with audit_sync "fsync", every one since the last fsync with "write".
func TestAuditUnsyncedMetric(t *testing.T) {
	auditSyncModes(t, func(t *testing.T, mode string) {
		metricsSock := filepath.Join(t.TempDir(), "metrics.sock")
		r := start(t, testRules(), func(c *config.Config) {
			c.AuditSync, c.AuditSyncInterval = mode, config.Duration{Duration: time.Hour}
			c.MetricsSocket = metricsSock
		})
		ctx := context.Background()
		c := dial(t, r.sock)
		key := "app/unsynced-" + mode
		if _, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: key, KeyType: "aes-256-gcm"}); err != nil {
			t.Fatal(err)
		}
		for range 3 {
			if _, err := c.Wrap(ctx, &pb.WrapRequest{Key: key, Plaintext: []byte("x")}); err != nil {
				t.Fatal(err)
			}
		}
		want := "keyward_audit_unsynced_records 0\n"
		if mode == "write" {
			want = "keyward_audit_unsynced_records 5\n" // the create's intent and outcome, 3 wraps
		}
		if page := scrape(t, metricsSock); !strings.Contains(page, want) {
			t.Fatalf("metrics: want %q in\n%s", want, grepLines(page, "keyward_audit_"))
		}
		wantUnsynced := uint64(0)
		if mode == "write" {
			wantUnsynced = 5
		}
		st, err := c.Status(ctx, &pb.StatusRequest{})
		if err != nil || st.GetAuditSync() != mode || st.GetAuditUnsynced() != wantUnsynced || st.GetAudit() != "ok" {
			t.Fatalf("status: audit %q sync %q unsynced %d (%v); want ok, %s, %d", st.GetAudit(), st.GetAuditSync(), st.GetAuditUnsynced(), err, mode, wantUnsynced)
		}
	})
}

// TestAuditPreallocate: by default the running daemon's audit file ends
// with free space (NULs after the last record); audit_preallocate = false
// keeps it ending at its last record. The records are the same either way.
func TestAuditPreallocate(t *testing.T) {
	for _, prealloc := range []bool{true, false} {
		t.Run(fmt.Sprint(prealloc), func(t *testing.T) {
			r := start(t, testRules(), func(c *config.Config) { c.AuditPreallocate = prealloc })
			c := dial(t, r.sock)
			key := fmt.Sprintf("app/prealloc-%v", prealloc)
			if _, err := c.CreateKey(context.Background(), &pb.CreateKeyRequest{Key: key, KeyType: "aes-256-gcm"}); err != nil {
				t.Fatal(err)
			}
			logPath := filepath.Join(filepath.Dir(r.cfgPath), "audit", "audit.log")
			raw, err := os.ReadFile(logPath)
			if err != nil {
				t.Fatal(err)
			}
			records := bytes.TrimRight(raw, "\x00")
			if free := len(raw) > len(records); free != prealloc || bytes.IndexByte(records, 0) >= 0 {
				t.Errorf("audit_preallocate = %v: %d bytes, records end at %d", prealloc, len(raw), len(records))
			}
			if recs := readAudit(t, logPath); len(recs) < 2 || recs[len(recs)-1].Key != key {
				t.Errorf("records: %+v", recs)
			}
		})
	}
}

// TestAuditAdminVersion: a change that names a version (disable, enable,
// destroy, the new minimum) is recorded with that version, in its intent
// record and its outcome alike, so that the trail says which version an
// admin changed (and, after a crash between the two, which one was being
// changed); a create or rotation, with the version it made.
func TestAuditAdminVersion(t *testing.T) {
	r := start(t, testRules(), nil)
	ctx := context.Background()
	c := dial(t, r.sock)
	key := "audit/versions-" + randHex(4)
	steps := []struct {
		name string
		call func() error
	}{
		{"create", func() error {
			_, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: key, KeyType: "aes-256-gcm"})
			return err
		}},
		{"rotate", func() error { _, err := c.RotateKey(ctx, &pb.RotateKeyRequest{Key: key}); return err }},
		{"rotate", func() error { _, err := c.RotateKey(ctx, &pb.RotateKeyRequest{Key: key}); return err }},
		{"disable v1", func() error {
			_, err := c.SetVersionState(ctx, &pb.SetVersionStateRequest{Key: key, Version: 1, State: pb.VersionState_DISABLED})
			return err
		}},
		{"min v2", func() error {
			_, err := c.SetMinDecryptVersion(ctx, &pb.SetMinDecryptVersionRequest{Key: key, Version: 2})
			return err
		}},
		{"destroy v1", func() error {
			_, err := c.DestroyVersion(ctx, &pb.DestroyVersionRequest{Key: key, Version: 1})
			return err
		}},
	}
	for _, s := range steps {
		if err := s.call(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
	}
	var got []string
	for _, a := range readAudit(t, filepath.Join(filepath.Dir(r.cfgPath), "audit", "audit.log")) {
		if a.Key == key {
			got = append(got, fmt.Sprintf("%s %s v%d", a.Op, a.Result, a.Version))
		}
	}
	want := []string{
		"key.create STARTED v0", "key.create OK v1",
		"key.rotate STARTED v0", "key.rotate OK v2",
		"key.rotate STARTED v0", "key.rotate OK v3",
		"key.disable STARTED v1", "key.disable OK v1",
		"key.set-min-version STARTED v2", "key.set-min-version OK v2",
		"key.destroy STARTED v1", "key.destroy OK v1",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("records:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
