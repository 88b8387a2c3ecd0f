package accessreview

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"path/filepath"
	"testing"

	"github.com/keyward/keyward/audit"
)

// edSigner signs checkpoints with an Ed25519 key, as a device's key would.
type edSigner struct{ key ed25519.PrivateKey }

func (s edSigner) SignCheckpoint(_ context.Context, msg []byte) (string, uint32, []byte, error) {
	return "audit/checkpoint", 1, ed25519.Sign(s.key, msg), nil
}

// TestCheckpoints: a trail with signed checkpoints is verified with their
// keys as it is read; checkpoint records are not counted as calls; a key
// that did not sign them is the break.
func TestCheckpoints(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := audit.Open(path, audit.Options{Checkpoint: edSigner{priv}, CheckpointEvery: 10, Sync: audit.SyncWrite})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		if err := l.Append(context.Background(), genRecord(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	files, _, err := audit.Chain(path)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Run(Options{Files: files, Users: testUsers, Verify: audit.VerifyOptions{CheckpointKeys: []crypto.PublicKey{pub}}})
	if err != nil || rep.Chain.Checkpoints == 0 {
		t.Fatalf("Run: %v, %d checkpoints", err, rep.Chain.Checkpoints)
	}
	checkCounts(t, rep.Rows, handCount(t, files, t0))
	for _, r := range rep.Rows {
		if r.Op == audit.OpCheckpoint {
			t.Errorf("a checkpoint counted as a call: %+v", r)
		}
	}

	other, _, _ := ed25519.GenerateKey(rand.Reader)
	_, err = Run(Options{Files: files, Users: testUsers, Verify: audit.VerifyOptions{CheckpointKeys: []crypto.PublicKey{other}}})
	var brk *audit.Break
	if !errors.As(err, &brk) || brk.Seq != firstCheckpoint(t, files) {
		t.Fatalf("checkpoints signed by another key: %v", err)
	}
}

// firstCheckpoint is the seq of the trail's first checkpoint record.
func firstCheckpoint(t *testing.T, files []string) uint64 {
	t.Helper()
	for _, f := range files {
		recs, err := audit.ReadRecords(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			if r.Op == audit.OpCheckpoint {
				return r.Seq
			}
		}
	}
	t.Fatal("no checkpoint")
	return 0
}
