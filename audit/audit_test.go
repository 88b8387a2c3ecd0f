package audit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func rec(id string) Record {
	return Record{
		Peer:          Peer{UID: 1000, GID: 1000, PID: 4242, Unit: "payments.service"},
		Op:            "unwrap",
		Key:           "payments/db-password",
		Version:       3,
		ContextDigest: sha256.Sum256([]byte("app\x00billing")),
		Result:        "OK",
		Duration:      412 * time.Microsecond,
		RequestID:     id,
	}
}

func open(t testing.TB, path string, opts Options) *Log {
	t.Helper()
	l, err := Open(path, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func appendN(t testing.TB, l *Log, prefix string, n int) []string {
	t.Helper()
	var ids []string
	for i := range n {
		id := fmt.Sprintf("%s-%d", prefix, i)
		if err := l.Append(context.Background(), rec(id)); err != nil {
			t.Fatalf("Append %s: %v", id, err)
		}
		ids = append(ids, id)
	}
	return ids
}

// records parses every complete line of files (which must all parse),
// through the package's tolerant reader.
func records(t testing.TB, files ...string) []Record {
	t.Helper()
	var out []Record
	for _, name := range files {
		recs, err := ReadRecords(name)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, recs...)
	}
	return out
}

// verifyChain runs Verify over the whole log at path and wants it intact
// with records 1..want.
func verifyChain(t testing.TB, path string, want uint64) Result {
	t.Helper()
	files, _, err := Chain(path)
	if err != nil {
		t.Fatal(err)
	}
	res, err := Verify(files...)
	if err != nil {
		t.Fatalf("Verify(%v): %v", files, err)
	}
	if res.Records != want || res.LastSeq != want || (want > 0 && res.FirstSeq != 1) {
		t.Fatalf("Verify: %d records, seq %d..%d; want 1..%d", res.Records, res.FirstSeq, res.LastSeq, want)
	}
	return res
}

// TestFormat pins the file format: a fixed record gives this exact line, and
// its hash is SHA-256(prev || the line with the hash key cut).
func TestFormat(t *testing.T) {
	r := rec("req-1")
	r.Time = time.Date(2025, 1, 2, 3, 4, 5, 123456000, time.FixedZone("CET", 3600))
	r.Reason = `rule "ops" <denied> & more`
	p, err := prepare(r, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	line, h := appendLine(nil, 1, [32]byte{}, p)
	const want = `{"seq":1,"time":"2025-01-02T02:04:05.123456Z","prev":"0000000000000000000000000000000000000000000000000000000000000000",` +
		`"peer":{"uid":1000,"gid":1000,"pid":4242,"unit":"payments.service"},"op":"unwrap","key":"payments/db-password","version":3,` +
		`"context_digest":"` + "%s" + `","result":"OK","reason":"rule \"ops\" \u003cdenied\u003e \u0026 more","duration_us":412,"request_id":"req-1"}`
	digest := sha256.Sum256([]byte("app\x00billing"))
	canonical := fmt.Sprintf(want, hex.EncodeToString(digest[:]))
	wantHash := sha256.Sum256(append(make([]byte, 32), canonical...))
	wantLine := canonical[:len(canonical)-1] + `,"hash":"` + hex.EncodeToString(wantHash[:]) + "\"}\n"
	if string(line) != wantLine {
		t.Fatalf("line:\n%s\nwant:\n%s", line, wantLine)
	}
	if h != wantHash {
		t.Fatalf("hash %x, want %x", h, wantHash)
	}
	back, err := parseLine(line[:len(line)-1])
	if err != nil {
		t.Fatal(err)
	}
	if back.Seq != 1 || back.Hash != h || back.Reason != r.Reason || !back.Time.Equal(r.Time) || back.Peer != r.Peer {
		t.Fatalf("parse: %+v", back)
	}
}

// TestCanonicalIsMarshal: the writer's pieced-together line is exactly
// encoding/json's encoding of the whole record, whatever the strings hold.
func TestCanonicalIsMarshal(t *testing.T) {
	for _, s := range []string{"", "plain", "quote\" back\\slash", "nl\n\tcr\r", "<>&", "\u2028\u2029", "bad utf8 \xff\xfe", "ünïcødé 🔑", "\x00\x1f", "del \x7f c1 \u0085\u009b"} {
		r := rec(s)
		r.Key, r.Reason, r.Peer.Unit, r.Op, r.CallerRef = s, s, s, "op"+s, s
		p, err := prepare(r, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		var prev [32]byte
		prev[0] = 7
		line, _ := appendLine(nil, 99, prev, p)
		got, err := parseLine(line[:len(line)-1])
		if err != nil {
			t.Fatalf("%q: %v\n%s", s, err, line)
		}
		if !strings.HasSuffix(string(line), "\"}\n") || bytes.Count(line, []byte("\n")) != 1 {
			t.Fatalf("%q: line %q", s, line)
		}
		w := wire{Seq: 99, Time: string(p.time()), Prev: hex.EncodeToString(prev[:]), Peer: got.Peer, Op: got.Op, Key: got.Key,
			Version: got.Version, ContextDigest: hex.EncodeToString(got.ContextDigest[:]), Result: got.Result, Reason: got.Reason, CallerRef: got.CallerRef,
			DurationUS: got.Duration.Microseconds(), RequestID: got.RequestID}
		m, _ := json.Marshal(w)
		if !bytes.HasPrefix(line, m[:len(m)-1]) {
			t.Fatalf("%q:\n%s\nis not\n%s", s, line, m)
		}
		// Nothing a terminal obeys: no DEL, no C1 (encoding/json escapes C0).
		if i := bytes.IndexFunc(line[:len(line)-1], func(r rune) bool { return r < 0x20 || r >= 0x7f && r < 0xa0 }); i >= 0 {
			t.Fatalf("%q: control character at %d in %q", s, i, line)
		}
	}
}

// TestAppendConcurrent: 50 goroutines append at once; every record is
// durable, seq is continuous, and records shared fsyncs.
func TestAppendConcurrent(t *testing.T) {
	const goroutines, each = 50, 40
	path := filepath.Join(t.TempDir(), "audit.log")
	l := open(t, path, Options{})
	var wg sync.WaitGroup
	errs := make(chan error, goroutines*each)
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				if err := l.Append(context.Background(), rec(fmt.Sprintf("g%d-%d", g, i))); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	st := l.Stats()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	const n = goroutines * each
	if st.Records != n || st.Seq != n {
		t.Fatalf("stats %+v, want %d records", st, n)
	}
	if st.Batches >= n || st.Fsyncs >= n {
		t.Errorf("%d batches, %d fsyncs for %d records: no group commit", st.Batches, st.Fsyncs, n)
	}
	t.Logf("%d records in %d batches (%d fsyncs)", n, st.Batches, st.Fsyncs)
	verifyChain(t, path, n)
	seen := map[string]bool{}
	for _, r := range records(t, path) {
		seen[r.RequestID] = true
	}
	if len(seen) != n {
		t.Fatalf("%d distinct records in the file, want %d", len(seen), n)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
}

// TestAppendAll: a batch call's records go out together, in order, in one
// fsync, beside single appends from other goroutines.
func TestAppendAll(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := open(t, path, Options{})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			batch := make([]Record, 100)
			for i := range batch {
				batch[i] = rec(fmt.Sprintf("b%d-%03d", g, i))
			}
			if err := l.AppendAll(context.Background(), batch); err != nil {
				t.Error(err)
			}
			if err := l.Append(context.Background(), rec(fmt.Sprintf("s%d", g))); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	st := l.Stats()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if st.Records != 404 || st.Fsyncs > 20 {
		t.Fatalf("stats %+v: want 404 records in few fsyncs", st)
	}
	verifyChain(t, path, 404)
	last := map[byte]string{}
	for _, r := range records(t, path) {
		if r.RequestID[0] == 'b' {
			g := r.RequestID[1]
			if r.RequestID <= last[g] {
				t.Fatalf("batch %c out of order: %s after %s", g, r.RequestID, last[g])
			}
			last[g] = r.RequestID
		}
	}
}

// TestGroupWindow: with a window, MaxBatch records queued together go out in
// one batch, long before the window ends.
func TestGroupWindow(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := open(t, path, Options{MaxBatch: 10, MaxDelay: time.Minute})
	start := time.Now()
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Go(func() {
			if err := l.Append(context.Background(), rec(fmt.Sprint(i))); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if d := time.Since(start); d > 30*time.Second { // half the window: generous
		t.Errorf("a full batch waited %v", d)
	}
	if st := l.Stats(); st.Batches != 1 {
		t.Errorf("%d batches, want 1", st.Batches)
	}
}

func TestAppendRefuses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := open(t, path, Options{})
	tests := []struct {
		name    string
		mod     func(*Record)
		wantErr error
	}{
		{name: "no op", mod: func(r *Record) { r.Op = "" }, wantErr: ErrInvalidRecord},
		{name: "no result", mod: func(r *Record) { r.Result = "" }, wantErr: ErrInvalidRecord},
		{name: "year 10000", mod: func(r *Record) { r.Time = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) }, wantErr: ErrInvalidRecord},
		{name: "too large", mod: func(r *Record) { r.Reason = strings.Repeat("x", MaxLine) }, wantErr: ErrInvalidRecord},
		{name: "ok", mod: func(*Record) {}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := rec(tc.name)
			tc.mod(&r)
			if err := l.Append(context.Background(), r); !errors.Is(err, tc.wantErr) || (err == nil) != (tc.wantErr == nil) {
				t.Fatalf("Append: %v, want %v", err, tc.wantErr)
			}
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := l.Append(ctx, rec("cancelled")); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled ctx: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Append(context.Background(), rec("closed")); !errors.Is(err, ErrClosed) || !errors.Is(err, ErrUnavailable) {
		t.Errorf("after Close: %v, want ErrClosed and ErrUnavailable", err)
	}
	verifyChain(t, path, 1)
}

// writeLog makes a log of n records at dir/audit.log and returns its lines.
func writeLog(t testing.TB, dir string, n int, opts Options) (string, [][]byte) {
	t.Helper()
	path := filepath.Join(dir, "audit.log")
	l := open(t, path, opts)
	appendN(t, l, "r", n)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.SplitAfter(b, []byte("\n"))
	return path, lines[:len(lines)-1]
}

// TestVerifyTamper: Verify passes on a real log and names the record at
// which each kind of tampering shows.
func TestVerifyTamper(t *testing.T) {
	path, lines := writeLog(t, t.TempDir(), 10, Options{})
	if res, err := Verify(path); err != nil || res.Records != 10 || res.LastSeq != 10 || res.Files != 1 {
		t.Fatalf("intact log: %+v, %v", res, err)
	}
	join := func(ls ...[]byte) []byte { return bytes.Join(ls, nil) }
	edit := func(i int, f func([]byte) []byte) []byte {
		ls := make([][]byte, len(lines))
		for j := range lines {
			ls[j] = bytes.Clone(lines[j])
		}
		ls[i] = f(ls[i])
		return join(ls...)
	}
	flip := func(i int, field string) []byte {
		return edit(i, func(l []byte) []byte {
			at := bytes.Index(l, []byte(field)) + len(field)
			if l[at] == '0' { // keep hex fields hex
				l[at] = '1'
			} else {
				l[at] = '0'
			}
			return l
		})
	}
	tests := []struct {
		name     string
		content  []byte
		line     int
		seq      uint64
		reason   string
		wantRecs uint64
	}{
		{name: "byte flipped in key", content: flip(4, `"key":"`), line: 5, seq: 5, reason: "hash does not match", wantRecs: 4},
		{name: "byte flipped in hash", content: flip(4, `"hash":"`), line: 5, seq: 5, reason: "hash does not match", wantRecs: 4},
		{name: "byte flipped in prev", content: flip(4, `"prev":"`), line: 5, seq: 5, reason: "hash does not match", wantRecs: 4},
		{name: "seq changed", content: edit(4, func(l []byte) []byte { return bytes.Replace(l, []byte(`"seq":5`), []byte(`"seq":6`), 1) }), line: 5, seq: 6, reason: "hash does not match", wantRecs: 4},
		{name: "record deleted", content: join(append(append([][]byte{}, lines[:4]...), lines[5:]...)...), line: 5, seq: 6, reason: "seq 5..5 missing", wantRecs: 4},
		{name: "first record deleted", content: join(lines[1:]...), line: 1, seq: 2, reason: "not the genesis record (seq 1): seq 1..1 are missing", wantRecs: 0},
		{name: "first records deleted", content: join(lines[3:]...), line: 1, seq: 4, reason: "seq 1..3 are missing", wantRecs: 0},
		{name: "two records swapped", content: join(append(append(append([][]byte{}, lines[:4]...), lines[5], lines[4]), lines[6:]...)...), line: 5, seq: 6, reason: "seq 5..5 missing", wantRecs: 4},
		{name: "record repeated", content: join(append(append([][]byte{}, lines[:5]...), lines[4:]...)...), line: 6, seq: 5, reason: "out of order or repeated", wantRecs: 5},
		{name: "tail truncated mid-line", content: join(lines...)[:len(join(lines...))-40], line: 10, seq: 10, reason: "incomplete last line", wantRecs: 9},
		{name: "newline lost", content: join(lines...)[:len(join(lines...))-1], line: 10, seq: 10, reason: "incomplete last line", wantRecs: 9},
		{name: "empty line", content: join(join(lines[:3]...), []byte("\n"), join(lines[3:]...)), line: 4, reason: "not a record", wantRecs: 3},
		{name: "spaces added", content: edit(2, func(l []byte) []byte { return bytes.Replace(l, []byte(`,"op"`), []byte(`, "op"`), 1) }), line: 3, seq: 3, reason: "canonical", wantRecs: 2},
		{name: "duplicate key", content: edit(2, func(l []byte) []byte {
			return bytes.Replace(l, []byte(`,"op":"unwrap"`), []byte(`,"op":"wrap","op":"unwrap"`), 1)
		}), line: 3, seq: 3, reason: "canonical", wantRecs: 2},
		{name: "not json", content: join(lines[0], []byte("hello\n")), line: 2, reason: "not a record", wantRecs: 1},
		{name: "seq 1 with a prev", content: mustLine(t, 1, [32]byte{1}), line: 1, seq: 1, reason: "64 zeros", wantRecs: 0},
		{name: "seq 0", content: mustLine(t, 0, [32]byte{}), line: 1, reason: "seq 0", wantRecs: 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			name := filepath.Join(t.TempDir(), "audit.log")
			if err := os.WriteFile(name, tc.content, 0o600); err != nil {
				t.Fatal(err)
			}
			res, err := Verify(name)
			if tc.line == 0 {
				if err != nil || res.Records != tc.wantRecs {
					t.Fatalf("Verify: %+v, %v; want ok with %d records", res, err, tc.wantRecs)
				}
				return
			}
			var brk *Break
			if !errors.As(err, &brk) || !errors.Is(err, ErrBroken) || res.Broken != brk {
				t.Fatalf("Verify: %v, want a *Break", err)
			}
			if brk.File != name || brk.Line != tc.line || brk.Seq != tc.seq || !strings.Contains(brk.Reason, tc.reason) {
				t.Errorf("break %+v; want line %d seq %d reason ~%q", *brk, tc.line, tc.seq, tc.reason)
			}
			if res.Records != tc.wantRecs {
				t.Errorf("%d records verified before the break, want %d", res.Records, tc.wantRecs)
			}
			t.Log(err)
		})
	}
	if _, err := Verify(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

// mustLine is a well-formed line with any seq and prev.
func mustLine(t testing.TB, seq uint64, prev [32]byte) []byte {
	t.Helper()
	p, err := prepare(rec("x"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	line, _ := appendLine(nil, seq, prev, p)
	return line
}

// TestRotation: a small MaxFileSize makes many files; they are named by
// their seqs, verify as one chain, and each links to the one before.
func TestRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	l := open(t, path, Options{MaxFileSize: 2048})
	appendN(t, l, "a", 120)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	st := l.Stats()
	files, torn, err := Chain(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 5 || len(torn) != 0 || st.Rotations != uint64(len(files)-1) {
		t.Fatalf("files %v, torn %v, %d rotations", files, torn, st.Rotations)
	}
	verifyChain(t, path, 120)

	// Each rotated file holds the seqs its name says, and is past the size.
	var prevHash [32]byte
	next := uint64(1)
	for i, f := range files {
		rs := records(t, f)
		if len(rs) == 0 && i == len(files)-1 {
			break // rotated right after the last batch
		}
		if len(rs) == 0 {
			t.Fatalf("%s is empty", f)
		}
		if rs[0].Seq != next || rs[0].Prev != prevHash {
			t.Fatalf("%s starts at seq %d prev %x; want %d, %x", f, rs[0].Seq, rs[0].Prev, next, prevHash)
		}
		last := rs[len(rs)-1]
		if i < len(files)-1 {
			if want := RotatedName(path, rs[0].Seq, last.Seq); f != want {
				t.Errorf("rotated file %s, want %s", f, want)
			}
			if fi, _ := os.Stat(f); fi.Size() < 2048 || fi.Mode().Perm() != 0o600 {
				t.Errorf("%s: %d bytes, mode %v", f, fi.Size(), fi.Mode().Perm())
			}
		}
		next, prevHash = last.Seq+1, last.Hash
	}

	// Files out of order, or one missing, break at the first line that shows it.
	for _, tc := range []struct {
		name  string
		files []string
		at    string
		seq   uint64
	}{
		{name: "middle file missing", files: append(append([]string{}, files[:1]...), files[2:]...), at: files[2], seq: records(t, files[2])[0].Seq},
		{name: "files swapped", files: append([]string{files[1], files[0]}, files[2:]...), at: files[1], seq: records(t, files[1])[0].Seq},
		{name: "oldest file missing", files: files[1:], at: files[1], seq: records(t, files[1])[0].Seq},
	} {
		res, err := Verify(tc.files...)
		var brk *Break
		if !errors.As(err, &brk) || brk.File != tc.at || brk.Line != 1 || brk.Seq != tc.seq {
			t.Errorf("%s: %v (%+v)", tc.name, err, res)
		}
	}

	// Restart after rotation continues the chain.
	l = open(t, path, Options{MaxFileSize: 2048})
	appendN(t, l, "b", 30)
	l.Close()
	verifyChain(t, path, 150)
}

// TestRestart: reopening continues seq and chain; each kind of damage at the
// end of the file is handled as the package doc says.
func TestRestart(t *testing.T) {
	tests := []struct {
		name         string
		damage       func(lines [][]byte) []byte // the file's new content
		wantSeq      uint64                      // where the chain stands after Open
		wantTorn     func(lines [][]byte) []byte // the bytes moved aside
		newlineAdded bool
		wantErr      error
	}{
		{name: "clean", damage: func(ls [][]byte) []byte { return bytes.Join(ls, nil) }, wantSeq: 10},
		{name: "torn last line", damage: func(ls [][]byte) []byte { return append(bytes.Join(ls[:9], nil), ls[9][:50]...) }, wantSeq: 9,
			wantTorn: func(ls [][]byte) []byte { return ls[9][:50] }},
		{name: "last newline lost", damage: func(ls [][]byte) []byte { b := bytes.Join(ls, nil); return b[:len(b)-1] }, wantSeq: 10, newlineAdded: true},
		{name: "garbage line at the end", damage: func(ls [][]byte) []byte { return append(bytes.Join(ls, nil), "\x00\x00garbage\n\x00"...) }, wantSeq: 10,
			wantTorn: func([][]byte) []byte { return []byte("\x00\x00garbage\n") }}, // the last NUL is free space
		{name: "record after damage", damage: func(ls [][]byte) []byte {
			return bytes.Join([][]byte{bytes.Join(ls[:4], nil), []byte("xx\n"), bytes.Join(ls[5:], nil)}, nil)
		}, wantErr: ErrCorrupt},
		{name: "record missing", damage: func(ls [][]byte) []byte {
			return append(bytes.Join(ls[:4], nil), bytes.Join(ls[5:], nil)...)
		}, wantErr: ErrCorrupt},
		{name: "empty file", damage: func([][]byte) []byte { return nil }, wantSeq: 0},
		// Free space: NULs after the last record are no torn tail.
		{name: "free space", damage: func(ls [][]byte) []byte { return append(bytes.Join(ls, nil), make([]byte, 5000)...) }, wantSeq: 10},
		{name: "only free space", damage: func([][]byte) []byte { return make([]byte, 5000) }, wantSeq: 0},
		{name: "torn write into free space", damage: func(ls [][]byte) []byte {
			return bytes.Join([][]byte{bytes.Join(ls[:9], nil), ls[9][:50], make([]byte, 5000)}, nil)
		}, wantSeq: 9, wantTorn: func(ls [][]byte) []byte { return ls[9][:50] }},
		// Blocks of one batch reached the disk out of order: the records after
		// the hole are of that same unacknowledged write.
		{name: "torn write with a hole", damage: func(ls [][]byte) []byte {
			return bytes.Join([][]byte{bytes.Join(ls[:6], nil), make([]byte, 100), ls[7][20:], ls[8], ls[9][:30], make([]byte, 5000)}, nil)
		}, wantSeq: 6, wantTorn: func(ls [][]byte) []byte {
			return bytes.Join([][]byte{make([]byte, 100), ls[7][20:], ls[8], ls[9][:30]}, nil)
		}},
		{name: "newline lost before free space", damage: func(ls [][]byte) []byte {
			b := bytes.Join(ls, nil)
			return append(b[:len(b)-1], make([]byte, 5000)...)
		}, wantSeq: 10, newlineAdded: true},
		// Damage without a NUL, then a record, then free space: still corruption.
		{name: "record after damage, then free space", damage: func(ls [][]byte) []byte {
			return bytes.Join([][]byte{bytes.Join(ls[:4], nil), []byte("xx\n"), bytes.Join(ls[5:], nil), make([]byte, 5000)}, nil)
		}, wantErr: ErrCorrupt},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path, lines := writeLog(t, dir, 10, Options{})
			content := tc.damage(lines)
			if err := os.WriteFile(path, content, 0o600); err != nil {
				t.Fatal(err)
			}
			var logBuf bytes.Buffer
			l, err := Open(path, Options{Logger: slog.New(slog.NewTextHandler(&logBuf, nil))})
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Open: %v, want %v", err, tc.wantErr)
				}
				if after, _ := os.ReadFile(path); !bytes.Equal(after, content) {
					t.Error("Open changed a corrupt file")
				}
				t.Log(err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			rep := l.OpenReport()
			if rep.Seq != tc.wantSeq || rep.NewlineAdded != tc.newlineAdded {
				t.Errorf("report %+v, want seq %d newline added %v", rep, tc.wantSeq, tc.newlineAdded)
			}
			if tc.wantTorn != nil {
				want := tc.wantTorn(lines)
				got, err := os.ReadFile(rep.TornFile)
				if err != nil || !bytes.Equal(got, want) || rep.TornBytes != int64(len(want)) {
					t.Errorf("torn file %q: %q, %v; want %q", rep.TornFile, got, err, want)
				}
				if !strings.Contains(logBuf.String(), "level=ERROR") || !strings.Contains(logBuf.String(), fmt.Sprintf("bytes=%d", len(want))) {
					t.Errorf("no ERROR with the byte count: %s", logBuf.String())
				}
				if _, torn, _ := Chain(path); len(torn) != 1 || torn[0] != rep.TornFile {
					t.Errorf("Chain torn = %v", torn)
				}
			} else if rep.TornFile != "" {
				t.Errorf("torn file %s", rep.TornFile)
			}
			appendN(t, l, "after", 5)
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			if size, end := fileState(t, path); size != end {
				t.Errorf("after Close: %d bytes, records end at %d: free space left", size, end)
			}
			verifyChain(t, path, tc.wantSeq+5)
		})
	}
}

// TestRestartAfterRotation: a crash between rename and create leaves no
// current file; Open continues from the newest rotated file.
func TestRestartAfterRotation(t *testing.T) {
	dir := t.TempDir()
	path, _ := writeLog(t, dir, 10, Options{})
	rotated := RotatedName(path, 1, 10)
	if err := os.Rename(path, rotated); err != nil {
		t.Fatal(err)
	}
	l := open(t, path, Options{})
	if rep := l.OpenReport(); rep.Seq != 10 || rep.From != rotated {
		t.Fatalf("report %+v", rep)
	}
	appendN(t, l, "b", 3)
	l.Close()
	verifyChain(t, path, 13)

	// A rotated file whose end disagrees with its name is refused.
	os.Remove(path)
	if err := os.Rename(rotated, RotatedName(path, 1, 11)); err != nil {
		t.Fatal(err)
	}
	os.Remove(RotatedName(path, 1, 10))
	if _, err := Open(path, Options{}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open: %v, want ErrCorrupt", err)
	}
}

func TestLogs(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	l := open(t, path, Options{MaxFileSize: 1024})
	appendN(t, l, "a", 20)
	l.Close()
	os.WriteFile(path+".torn-20250101T000000.000000000Z", []byte("x"), 0o600)
	logs, err := Logs(dir)
	if err != nil || len(logs) != 1 || logs[0] != path {
		t.Fatalf("Logs = %v, %v", logs, err)
	}
	os.WriteFile(filepath.Join(dir, "other.log"), nil, 0o600)
	if logs, _ := Logs(dir); len(logs) != 2 {
		t.Fatalf("Logs = %v", logs)
	}
}

// TestSecondWriterRefused: two Logs (two daemons) on one path would fork the
// chain; the second Open is refused until the first closes, and the lock
// outlives a rotation (the lock file is never renamed).
func TestSecondWriterRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := open(t, path, Options{MaxFileSize: 4096})
	for i := range 40 { // past one rotation
		if err := l.Append(t.Context(), Record{Op: "wrap", Key: fmt.Sprintf("k%d", i), Result: "OK"}); err != nil {
			t.Fatal(err)
		}
	}
	if st := l.Stats(); st.Rotations == 0 {
		t.Fatalf("no rotation happened: %+v", st)
	}
	if _, err := Open(path, Options{}); !errors.Is(err, ErrInUse) {
		t.Fatalf("second Open: %v, want ErrInUse", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l2, err := Open(path, Options{})
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	l2.Close()
	if fi, err := os.Stat(path + ".lock"); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("lock file: %v %v", fi, err)
	}
}
