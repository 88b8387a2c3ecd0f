package accessreview

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"

	"github.com/keyward/keyward/audit"
	"github.com/keyward/keyward/policy"
)

// writeRecords writes records 0..n-1 of gen through the audit package's
// writer into dir (rotating at maxFile bytes), in batches, never holding
// more than a batch; it returns the chain's files.
func writeRecords(t testing.TB, dir string, n int, maxFile int64, gen func(int) audit.Record) []string {
	t.Helper()
	path := filepath.Join(dir, "audit.log")
	l, err := audit.Open(path, audit.Options{MaxFileSize: maxFile, Sync: audit.SyncWrite})
	if err != nil {
		t.Fatal(err)
	}
	batch := make([]audit.Record, 0, 1000)
	for i := range n {
		batch = append(batch, gen(i))
		if len(batch) == cap(batch) || i == n-1 {
			if err := l.AppendAll(context.Background(), batch); err != nil {
				t.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	files, _, err := audit.Chain(path)
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestBoundedMemory: the review streams. Over a log of many records and few
// distinct groups, the live heap (after a GC, sampled along the pass) stays
// under a constant far below the log's size and does not grow with the
// records read.
func TestBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("writes a 40 MB log")
	}
	const n = 120_000
	files := writeRecords(t, t.TempDir(), n, 8<<20, genRecord)
	var size int64
	for _, f := range files {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		size += fi.Size()
	}
	var early, peak uint64
	var ms runtime.MemStats
	pol, err := policy.Compile([]policy.Rule{{Name: "apps", UIDs: []uint32{1000, 1001}, Keys: []string{"app/*"}, Operations: []string{"wrap", "unwrap"}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Run(Options{Files: files, Users: testUsers, Policy: pol, afterRecord: func(i uint64) {
		if i%10_000 != 0 {
			return
		}
		runtime.GC()
		runtime.ReadMemStats(&ms)
		if i == 10_000 {
			early = ms.HeapAlloc
		}
		peak = max(peak, ms.HeapAlloc)
	}})
	if err != nil || rep.Chain.Records != n || !rep.Grants[0].Used() {
		t.Fatalf("Run: %d records, %v", rep.Chain.Records, err)
	}
	const bound = 16 << 20 // generous: a few MiB in practice
	t.Logf("log %d MB in %d files, %d rows; live heap %d KiB after 10k records, at most %d KiB", size>>20, len(files), len(rep.Rows), early>>10, peak>>10)
	if size < 3*bound {
		t.Fatalf("the log is %d bytes: too small to tell streaming from holding it", size)
	}
	if peak > bound {
		t.Errorf("live heap reached %d bytes over a %d-byte log: more than %d", peak, size, bound)
	}
	if growth := int64(peak) - int64(early); growth > 4<<20 {
		t.Errorf("live heap grew by %s bytes from 10k to %d records: memory follows the records read", strconv.FormatInt(growth, 10), n)
	}
}
