package audit

import (
	"crypto/sha256"
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

// rotatedLog writes n records rotating at 2 KiB and returns the log's path
// and its files, oldest first (at least three).
func rotatedLog(t *testing.T, n int) (string, []string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.log")
	l := open(t, path, Options{MaxFileSize: 2048})
	appendN(t, l, "r", n)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	files, _, err := Chain(path)
	if err != nil || len(files) < 3 {
		t.Fatalf("Chain: %v, %v", files, err)
	}
	return path, files
}

// TestVerifyFrom: a trail whose oldest files were removed verifies only
// from the start the operator gives (the seq and prev of its first record,
// as the full trail's Spans said), and fails with any other start.
func TestVerifyFrom(t *testing.T) {
	_, files := rotatedLog(t, 60)
	full, err := Verify(files...)
	if err != nil || len(full.Spans) < 3 || full.Spans[0].Start != (Start{Seq: 1}) {
		t.Fatalf("full trail: %+v, %v", full, err)
	}
	kept := files[1:]
	start := full.Spans[1].Start
	if full.Spans[1].File != files[1] || start.Seq != full.Spans[0].LastSeq+1 || start.Prev != full.Spans[0].LastHash {
		t.Fatalf("span of %s: %+v after %+v", files[1], full.Spans[1], full.Spans[0])
	}
	tests := []struct {
		name   string
		files  []string
		from   *Start
		reason string // "" for ok
	}{
		{name: "whole trail from genesis", files: files},
		{name: "genesis given explicitly", files: files, from: &Start{Seq: 1}},
		{name: "oldest file removed, no start given", files: kept, reason: "not the genesis record"},
		{name: "oldest file removed, its start given", files: kept, from: &start},
		{name: "more removed than the start says", files: files[2:], from: &start, reason: "are missing"},
		{name: "start later than the trail", files: files, from: &start, reason: "was to start at seq"},
		{name: "wrong hash", files: kept, from: &Start{Seq: start.Seq, Prev: sha256.Sum256(nil)}, reason: "not the hash given"},
		{name: "middle file missing", files: append([]string{files[0]}, files[2:]...), reason: "missing"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, err := VerifyWith(VerifyOptions{From: tc.from}, tc.files...)
			if tc.reason == "" {
				if err != nil || res.LastSeq != full.LastSeq {
					t.Fatalf("%+v, %v; want ok to seq %d", res, err, full.LastSeq)
				}
				return
			}
			var brk *Break
			if !errors.As(err, &brk) || !strings.Contains(brk.Reason, tc.reason) {
				t.Fatalf("err = %v; want a break ~%q", err, tc.reason)
			}
		})
	}
}

// TestVerifyEach: Each sees every record that verified, in chain order,
// across rotated files, and none after a break; its error stops the walk
// and is returned as it is.
func TestVerifyEach(t *testing.T) {
	_, files := rotatedLog(t, 60)
	var seqs []uint64
	res, err := VerifyWith(VerifyOptions{Each: func(r Record) error {
		seqs = append(seqs, r.Seq)
		return nil
	}}, files...)
	if err != nil || len(seqs) != 60 || res.Records != 60 {
		t.Fatalf("Each saw %d records, Verify %d: %v", len(seqs), res.Records, err)
	}
	for i, s := range seqs {
		if s != uint64(i+1) {
			t.Fatalf("record %d has seq %d", i, s)
		}
	}

	// A break: records before it are given, none after.
	recs, err := ReadRecords(files[1])
	if err != nil {
		t.Fatal(err)
	}
	brokenAt := recs[0].Seq
	seqs = nil
	_, err = VerifyWith(VerifyOptions{Each: func(r Record) error {
		seqs = append(seqs, r.Seq)
		return nil
	}}, append([]string{files[0]}, files[2:]...)...)
	if !errors.Is(err, ErrBroken) || len(seqs) != int(brokenAt-1) || seqs[len(seqs)-1] != brokenAt-1 {
		t.Fatalf("with %s left out: Each saw %d records (last %v), err %v; want seq 1..%d then the break", files[1], len(seqs), seqs[len(seqs)-1:], err, brokenAt-1)
	}

	stop := errors.New("enough")
	n := 0
	_, err = VerifyWith(VerifyOptions{Each: func(Record) error {
		if n++; n == 5 {
			return stop
		}
		return nil
	}}, files...)
	if err != stop || n != 5 {
		t.Fatalf("Each's error: got %v after %d records, want it as is after 5", err, n)
	}
}
