package audit

import (
	"context"
	"crypto"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// gatedFile is the log file with an fsync that waits for the test: each
// Sync says so on entered, takes a token from gate (or gives up once open
// is closed) before syncing, and counts itself in synced once the data is
// durable.
type gatedFile struct {
	*os.File
	entered, gate, open chan struct{}
	synced              *atomic.Int64
	armed               *atomic.Bool // false: Sync does not wait (Open's own fsyncs)
}

func (f gatedFile) Sync() error {
	if f.armed.Load() {
		select {
		case f.entered <- struct{}{}:
		case <-f.open:
		}
		select {
		case <-f.gate:
		case <-f.open:
		}
	}
	err := f.File.Sync()
	if err == nil && f.armed.Load() {
		f.synced.Add(1)
	}
	return err
}

// TestGroupCommitReleasesAfterFsync: the callers that queue while an fsync
// runs share the next write and fsync, and none of them returns before
// that fsync has returned, single Appends and an AppendAll alike.
func TestGroupCommitReleasesAfterFsync(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	entered, gate, opened := make(chan struct{}), make(chan struct{}), make(chan struct{})
	var synced atomic.Int64
	var armed atomic.Bool
	l := open(t, path, Options{openFile: func(name string, flag int, perm fs.FileMode) (file, error) {
		f, err := os.OpenFile(name, flag, perm)
		if err != nil {
			return nil, err
		}
		return gatedFile{File: f, entered: entered, gate: gate, open: opened, synced: &synced, armed: &armed}, nil
	}})
	t.Cleanup(func() { close(opened) }) // before l.Close, should the test fail
	armed.Store(true)
	before := l.Stats()

	// The first record's fsync holds the writer.
	var returned atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := l.Append(context.Background(), rec("first")); err != nil {
			t.Error(err)
		}
		returned.Add(1)
	})
	<-entered // the writer is in its fsync

	// Meanwhile 8 single records and a batch call of 50 queue up.
	const singles, batch = 8, 50
	for i := range singles {
		wg.Go(func() {
			if err := l.Append(context.Background(), rec(fmt.Sprintf("single-%d", i))); err != nil {
				t.Error(err)
			}
			returned.Add(1)
		})
	}
	wg.Go(func() {
		rs := make([]Record, batch)
		for i := range rs {
			rs[i] = rec(fmt.Sprintf("batch-%02d", i))
		}
		if err := l.AppendAll(context.Background(), rs); err != nil {
			t.Error(err)
		}
		returned.Add(1)
	})
	waitFor(t, func() bool { _, _, q := l.Status(); return q == singles+batch })
	if n := returned.Load(); n != 0 {
		t.Fatalf("%d callers returned before any fsync returned", n)
	}

	gate <- struct{}{} // the first fsync completes
	waitFor(t, func() bool { return returned.Load() == 1 })
	// The second batch is written and its fsync waits: nobody of it may
	// have returned.
	<-entered
	if _, _, q := l.Status(); q != 0 {
		t.Fatalf("%d records left out of the second batch", q)
	}
	time.Sleep(50 * time.Millisecond)
	if n := returned.Load(); n != 1 {
		t.Fatalf("%d callers returned with one fsync done, want 1", n)
	}
	gate <- struct{}{}
	wg.Wait()
	if n := synced.Load(); n != 2 {
		t.Fatalf("%d fsyncs, want 2", n)
	}
	st := l.Stats()
	if b, r := st.Batches-before.Batches, st.Records-before.Records; b != 2 || r != 1+singles+batch {
		t.Fatalf("%d records in %d batches, want %d in 2", r, b, 1+singles+batch)
	}
	armed.Store(false)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	verifyChain(t, path, 1+singles+batch)
}

// TestAppendAllOverMaxBatch: one call's records are never split across
// batches, even when they are more than MaxBatch.
func TestAppendAllOverMaxBatch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := open(t, path, Options{MaxBatch: 10})
	rs := make([]Record, 25)
	for i := range rs {
		rs[i] = rec(fmt.Sprintf("b-%02d", i))
	}
	if err := l.AppendAll(context.Background(), rs); err != nil {
		t.Fatal(err)
	}
	if st := l.Stats(); st.Batches != 1 || st.Records != 25 {
		t.Fatalf("stats %+v, want 25 records in 1 batch", st)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	verifyChain(t, path, 25)
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(30 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("condition not reached in 30 s")
		}
	}
}

// jsonBody is the body as encoding/json writes it: what appendBody must
// match byte for byte (the verifier re-encodes with encoding/json).
func jsonBody(t testing.TB, r Record) []byte {
	valid := func(s string) string { // invalid UTF-8, DEL and C1 as U+FFFD
		return strings.Map(func(r rune) rune {
			if r >= 0x7f && r < 0xa0 {
				return '\uFFFD'
			}
			return r
		}, strings.ToValidUTF8(s, "\uFFFD"))
	}
	peer := r.Peer
	peer.Unit = valid(peer.Unit)
	digest := hex.EncodeToString(r.ContextDigest[:])
	if r.ContextKeyed {
		digest = ContextHMACPrefix + digest
	}
	b, err := json.Marshal(body{Peer: peer, Op: valid(r.Op), Key: valid(r.Key), Version: r.Version,
		ContextDigest: digest, Result: valid(r.Result), Reason: valid(r.Reason), CallerRef: valid(r.CallerRef),
		DurationUS: r.Duration.Microseconds(), RequestID: valid(r.RequestID), Sig: r.Sig})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestAppendBodyIsJSON(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Record)
	}{
		{name: "typical", mod: func(*Record) {}},
		{name: "reason", mod: func(r *Record) { r.Reason = "no rule grants wrap on app/x" }},
		{name: "keyed context digest", mod: func(r *Record) { r.ContextKeyed = true }},
		{name: "extremes", mod: func(r *Record) {
			r.Peer = Peer{UID: 1<<32 - 1, GID: 0, PID: -1 << 31}
			r.Version, r.Duration = 1<<32-1, -time.Hour
		}},
		{name: "json escapes", mod: func(r *Record) { r.Key, r.Reason = `a"b\c`, "<script>&amp;</script>" }},
		{name: "control characters", mod: func(r *Record) { r.Reason = "tab\there\nnl\r\b\f\x00\x1f\x7f" }},
		{name: "line separators", mod: func(r *Record) { r.Peer.Unit = "a\u2028b\u2029c.service" }},
		{name: "invalid utf-8", mod: func(r *Record) { r.Key, r.RequestID = "k\xff\xfe", "\xc3" }},
		{name: "DEL and C1", mod: func(r *Record) { r.Key, r.Reason, r.Peer.Unit = "k\x7f", "a\u0085b\u009bc\u0080", "u\u009f.service" }},
		{name: "non-ascii", mod: func(r *Record) { r.Reason = "clé refusée ✓ 🔑" }},
		{name: "checkpoint signature", mod: func(r *Record) { r.Op, r.Sig = OpCheckpoint, []byte{0, 1, 2, 0xfb, 0xff} }},
		{name: "empty signature", mod: func(r *Record) { r.Sig = []byte{} }},
		{name: "caller ref", mod: func(r *Record) { r.Reason, r.CallerRef = "why", "a3b1c2d4-0000-4000-8000-00000000\"<ref>" }},
		{name: "caller ref, invalid utf-8", mod: func(r *Record) { r.CallerRef = "ref\xff" }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := rec(tc.name)
			tc.mod(&r)
			got, want := appendBody(nil, r), jsonBody(t, r)
			if string(got) != string(want) {
				t.Fatalf("appendBody:\n%s\nencoding/json:\n%s", got, want)
			}
		})
	}
}

// FuzzAppendBody: the hand-written body encoder writes what encoding/json
// writes, for any strings.
func FuzzAppendBody(f *testing.F) {
	f.Add("payments.service", "unwrap", "payments/db", "OK", "", "0123456789abcdef", uint32(3), int64(412), []byte(nil))
	f.Add("a\u2028.service", "op\"", "k<>&", "R\x00", "why\n", "\xff", uint32(0), int64(-1), []byte{0xff, 0})
	f.Fuzz(func(t *testing.T, unit, op, key, result, reason, id string, version uint32, us int64, sig []byte) {
		r := Record{Peer: Peer{UID: 1, GID: 2, PID: 3, Unit: unit}, Op: op, Key: key, Version: version,
			Result: result, Reason: reason, Duration: time.Duration(us) * time.Microsecond, RequestID: id, Sig: sig}
		got, want := appendBody(nil, r), jsonBody(t, r)
		if string(got) != string(want) {
			t.Fatalf("appendBody:\n%q\nencoding/json:\n%q", got, want)
		}
	})
}

// TestInlineCommit: on an idle log the appender writes its own record (no
// hand-off to the writer), and inline commits mixed with the writer's
// batches, checkpoints (by count and by time), rotations and Close keep one
// unbroken chain with every record once.
func TestInlineCommit(t *testing.T) {
	t.Run("idle", func(t *testing.T) {
		l := open(t, filepath.Join(t.TempDir(), "audit.log"), Options{})
		appendN(t, l, "r", 20)
		if st := l.Stats(); st.Records != 20 || st.Batches != 20 || st.Inline != 20 {
			t.Fatalf("stats %+v: want 20 records, each committed inline", st)
		}
	})
	t.Run("mixed", func(t *testing.T) {
		const goroutines, each = 8, 150
		path := filepath.Join(t.TempDir(), "audit.log")
		sig := newSigner(t)
		l, err := Open(path, Options{Checkpoint: sig, CheckpointEvery: 37, CheckpointInterval: 3 * time.Millisecond, MaxFileSize: 64 << 10})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for g := range goroutines {
			wg.Go(func() {
				for i := range each {
					if err := l.Append(context.Background(), rec(fmt.Sprintf("g%d-%d", g, i))); err != nil {
						t.Error(err)
						return
					}
					if i%25 == 0 {
						time.Sleep(4 * time.Millisecond) // idle gaps: inline commits and timed checkpoints
					}
				}
			})
		}
		wg.Wait()
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		st := l.Stats()
		const n = goroutines * each
		if st.Records != n+st.Checkpoints || st.Seq != st.Records {
			t.Fatalf("stats %+v: want %d records plus checkpoints", st, n)
		}
		if st.Inline == 0 || st.Inline == st.Batches || st.Rotations == 0 || st.Checkpoints < n/37 {
			t.Fatalf("stats %+v: want inline and writer batches, rotations and checkpoints", st)
		}
		files, _, err := Chain(path)
		if err != nil {
			t.Fatal(err)
		}
		res, err := VerifyWith(VerifyOptions{CheckpointKeys: []crypto.PublicKey{&sig.key.PublicKey}}, files...)
		if err != nil {
			t.Fatal(err)
		}
		if res.Records != st.Records || res.Checkpoints != st.Checkpoints || res.LastCheckpointSeq != res.LastSeq {
			t.Fatalf("verify %+v, stats %+v", res, st)
		}
		seen := map[string]bool{}
		for _, r := range records(t, files...) {
			if r.Op != "" && r.RequestID != "" {
				if seen[r.RequestID] {
					t.Fatalf("%s twice", r.RequestID)
				}
				seen[r.RequestID] = true
			}
		}
		if len(seen) != n {
			t.Fatalf("%d distinct records, want %d", len(seen), n)
		}
		t.Logf("%d records in %d batches (%d inline), %d checkpoints, %d rotations", st.Records, st.Batches, st.Inline, st.Checkpoints, st.Rotations)
	})
}
