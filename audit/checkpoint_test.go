package audit

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/asn1"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyward/keyward/keys"
)

// ecdsaSigner signs as keyward's sign operation does for an ecdsa-p256 key
// (ASN.1 DER over SHA-256). The daemon's tests use the HSM's key.
type ecdsaSigner struct {
	key   *ecdsa.PrivateKey
	calls atomic.Int64
	fail  atomic.Bool
}

func (s *ecdsaSigner) SignCheckpoint(_ context.Context, msg []byte) (string, uint32, []byte, error) {
	s.calls.Add(1)
	if s.fail.Load() {
		return "", 0, nil, errors.New("device unavailable")
	}
	d := sha256.Sum256(msg)
	r, ss, err := ecdsa.Sign(rand.Reader, s.key, d[:])
	if err != nil {
		return "", 0, nil, err
	}
	sig, err := keys.ECDSASignature(r, ss) // low-S, as both backends sign
	return "audit/checkpoint", 1, sig, err
}

func newSigner(t *testing.T) *ecdsaSigner {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &ecdsaSigner{key: k}
}

func TestCheckpoints(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	sig := newSigner(t)
	l, err := Open(path, Options{Checkpoint: sig, CheckpointEvery: 10, CheckpointInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, l, "r", 35)
	if st := l.Stats(); st.Checkpoints != 3 || st.Records != 38 {
		t.Fatalf("before Close: %d checkpoints, %d records; want 3, 38", st.Checkpoints, st.Records)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	res, err := VerifyWith(VerifyOptions{CheckpointKeys: []crypto.PublicKey{&sig.key.PublicKey}}, path)
	if err != nil {
		t.Fatal(err)
	}
	// 35 records, checkpoints after records 10, 20, 30 and one at Close.
	if res.Records != 39 || res.Checkpoints != 4 || res.LastCheckpointSeq != res.LastSeq {
		t.Fatalf("verify: %+v", res)
	}

	other := newSigner(t)
	if _, err := VerifyWith(VerifyOptions{CheckpointKeys: []crypto.PublicKey{&other.key.PublicKey}}, path); !errors.Is(err, ErrBroken) ||
		!strings.Contains(err.Error(), "does not verify") || !strings.Contains(err.Error(), ":11 ") {
		t.Fatalf("verify with another key: %v; want a break at line 11, the first checkpoint", err)
	}
}

// TestCheckpointDefeatsRechaining: an attacker who can write the file
// changes record 5 and recomputes every hash after it. The chain alone
// verifies; the checkpoint after it does not.
func TestCheckpointDefeatsRechaining(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	sig := newSigner(t)
	l, err := Open(path, Options{Checkpoint: sig, CheckpointEvery: 10, CheckpointInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, l, "r", 25)
	l.Close()

	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []byte
	var prev [32]byte
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		r, err := parseLine(sc.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		if r.Seq == 5 {
			r.Key = "payments/innocent"
		}
		p, err := prepare(r, r.Time)
		if err != nil {
			t.Fatal(err)
		}
		out, prev = appendLine(out, r.Seq, prev, p)
	}
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(path); err != nil {
		t.Fatalf("the re-chained file should pass the chain check alone: %v", err)
	}
	_, err = VerifyWith(VerifyOptions{CheckpointKeys: []crypto.PublicKey{&sig.key.PublicKey}}, path)
	var brk *Break
	if !errors.As(err, &brk) || brk.Seq != 11 {
		t.Fatalf("verify with the key: %v; want the checkpoint at seq 11 to fail", err)
	}
}

// TestCheckpointInterval: an idle log anchors its last records after the
// interval, without waiting for more records or for Close.
func TestCheckpointInterval(t *testing.T) {
	t.Parallel() // its own Log in its own directory; it mostly waits
	sig := newSigner(t)
	l := open(t, filepath.Join(t.TempDir(), "audit.log"), Options{Checkpoint: sig, CheckpointEvery: 1000, CheckpointInterval: 50 * time.Millisecond})
	appendN(t, l, "r", 3)
	deadline := time.Now().Add(30 * time.Second)
	for l.Stats().Checkpoints == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if st := l.Stats(); st.Checkpoints != 1 || st.Seq != 4 {
		t.Fatalf("stats %+v: want one checkpoint as seq 4", st)
	}
	time.Sleep(200 * time.Millisecond)
	if st := l.Stats(); st.Checkpoints != 1 {
		t.Fatalf("checkpoints without new records: %+v", st)
	}
}

// TestCheckpointSignerFailure: records stay durable when the signer fails,
// the writer does not spin on it, and checkpoints resume when it works.
func TestCheckpointSignerFailure(t *testing.T) {
	t.Parallel() // its own Log in its own directory; it mostly waits
	sig := newSigner(t)
	sig.fail.Store(true)
	path := filepath.Join(t.TempDir(), "audit.log")
	l := open(t, path, Options{Checkpoint: sig, CheckpointEvery: 2, CheckpointInterval: 100 * time.Millisecond})
	start := time.Now()
	appendN(t, l, "a", 6)
	time.Sleep(300 * time.Millisecond)
	st := l.Stats()
	if st.Records != 6 || st.Checkpoints != 0 || st.CheckpointFailures == 0 {
		t.Fatalf("stats %+v", st)
	}
	// At most one retry per interval of the time this really took.
	took := time.Since(start)
	if n, most := sig.calls.Load(), int64(took/(100*time.Millisecond))+7; n > most {
		t.Fatalf("%d signer calls in %v, want at most %d: the writer retries too eagerly", n, took, most)
	}
	sig.fail.Store(false)
	appendN(t, l, "b", 1)
	deadline := time.Now().Add(30 * time.Second)
	for l.Stats().Checkpoints == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if st := l.Stats(); st.Checkpoints == 0 {
		t.Fatalf("no checkpoint after the signer recovered: %+v", st)
	}
	l.Close()
	if res, err := VerifyWith(VerifyOptions{CheckpointKeys: []crypto.PublicKey{&sig.key.PublicKey}}, path); err != nil || res.Checkpoints == 0 {
		t.Fatalf("verify: %+v %v", res, err)
	}
}

func TestSigOnlyOnCheckpoints(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	var out []byte
	var prev [32]byte
	p, err := prepare(Record{Op: "wrap", Result: "OK", Sig: []byte("x")}, time.Unix(1e9, 0))
	if err != nil {
		t.Fatal(err)
	}
	out, _ = appendLine(out, 1, prev, p)
	os.WriteFile(path, out, 0o600)
	if _, err := Verify(path); !errors.Is(err, ErrBroken) || !strings.Contains(err.Error(), "not a checkpoint") {
		t.Fatalf("verify: %v", err)
	}
}

// TestCheckpointOneEncoding: a checkpoint's signature verifies only in the
// form keyward signs in: the high-S twin of a valid ECDSA signature, which
// is as valid to crypto/ecdsa, is refused.
func TestCheckpointOneEncoding(t *testing.T) {
	s := newSigner(t)
	r := Record{Seq: 7, Op: OpCheckpoint, Key: "audit/checkpoint", Version: 1}
	_, _, sig, err := s.SignCheckpoint(context.Background(), CheckpointMessage(r.Seq, r.Prev))
	if err != nil {
		t.Fatal(err)
	}
	r.Sig = sig
	if err := verifyCheckpoint([]crypto.PublicKey{&s.key.PublicKey}, r); err != nil {
		t.Fatalf("keyward's own signature: %v", err)
	}
	var parsed struct{ R, S *big.Int }
	if _, err := asn1.Unmarshal(sig, &parsed); err != nil {
		t.Fatal(err)
	}
	twin, err := asn1.Marshal(struct{ R, S *big.Int }{parsed.R, new(big.Int).Sub(elliptic.P256().Params().N, parsed.S)})
	if err != nil {
		t.Fatal(err)
	}
	if !ecdsa.VerifyASN1(&s.key.PublicKey, func() []byte { d := sha256.Sum256(CheckpointMessage(r.Seq, r.Prev)); return d[:] }(), twin) {
		t.Fatal("the twin should be valid to crypto/ecdsa")
	}
	r.Sig = twin
	if err := verifyCheckpoint([]crypto.PublicKey{&s.key.PublicKey}, r); err == nil {
		t.Fatal("the high-S twin of a checkpoint signature verified")
	}
}
