package accessreview

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/keyward/keyward/audit"
	"github.com/keyward/keyward/policy"
)

// realisticRecord is record i of a log shaped like a busy daemon's: 50
// uids (some in units), 20 keys, four operations, a keyed context digest,
// a request id and a duration on every call, refusal summaries now and then.
func realisticRecord(i int) audit.Record {
	r := genRecord(i)
	if r.Op == "refused" {
		return r
	}
	r.Peer = audit.Peer{UID: 1000 + uint32(i%50), GID: 1000 + uint32(i%50), PID: int32(4000 + i%300)}
	if i%50 >= 40 {
		r.Peer.Unit = fmt.Sprintf("svc%d.service", i%50)
	}
	r.Key = fmt.Sprintf("app%d/secret%d", (i/50)%5, (i/250)%4)
	r.Version = uint32(1 + i%3)
	var seed [8]byte
	binary.BigEndian.PutUint64(seed[:], uint64(i))
	r.ContextDigest, r.ContextKeyed = sha256.Sum256(seed[:]), true
	id := sha256.Sum256(append(seed[:], 'r'))
	r.RequestID = hex.EncodeToString(id[:8])
	r.Duration = time.Duration(200+i%900) * time.Microsecond
	return r
}

// TestWriteLargeLog writes a realistic log of KEYWARD_REVIEW_LOG_MB
// megabytes (default 256) into KEYWARD_REVIEW_LOG_DIR, for measuring
// "keyward audit report" on it (the rate and peak RSS the access review
// page states); skipped unless that variable is set.
func TestWriteLargeLog(t *testing.T) {
	dir := os.Getenv("KEYWARD_REVIEW_LOG_DIR")
	if dir == "" {
		t.Skip("set KEYWARD_REVIEW_LOG_DIR (and KEYWARD_REVIEW_LOG_MB) to write a large log there")
	}
	mb := 256
	if s := os.Getenv("KEYWARD_REVIEW_LOG_MB"); s != "" {
		var err error
		if mb, err = strconv.Atoi(s); err != nil || mb <= 0 {
			t.Fatalf("KEYWARD_REVIEW_LOG_MB=%q", s)
		}
	}
	// About 400 bytes a record.
	files := writeRecords(t, dir, mb<<20/400, 64<<20, realisticRecord)
	t.Logf("wrote %d files in %s", len(files), dir)
}

// BenchmarkReview reviews a realistic log of 20 MB with a policy: the
// rate in MB/s and records/s.
func BenchmarkReview(b *testing.B) {
	const n = 50_000
	files := writeRecords(b, b.TempDir(), n, 8<<20, realisticRecord)
	var size int64
	for _, f := range files {
		fi, err := os.Stat(f)
		if err != nil {
			b.Fatal(err)
		}
		size += fi.Size()
	}
	pol, err := policy.Compile([]policy.Rule{{Name: "apps", UIDs: []uint32{1000, 1001, 1002}, Keys: []string{"app*/**"}, Operations: []string{"wrap", "unwrap"}}}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(size)
	b.ResetTimer()
	for b.Loop() {
		if _, err := Run(Options{Files: files, Policy: pol, Users: testUsers}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "records/s")
}
