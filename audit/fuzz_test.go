package audit

import (
	"bytes"
	"testing"
	"time"
)

// sampleLog is a valid chain of n lines.
func sampleLog(n int) []byte {
	var out []byte
	var prev [32]byte
	p, _ := prepare(rec("fuzz"), time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC))
	for i := 1; i <= n; i++ {
		out, prev = appendLine(out, uint64(i), prev, p)
	}
	return out
}

// FuzzVerify: the verifier (line reader, parser, chain) never panics on any
// bytes split into two files, and what it accepts is one record per line.
// The seed corpus is in testdata/fuzz/FuzzVerify.
func FuzzVerify(f *testing.F) {
	log := sampleLog(4)
	f.Add(log, uint(len(log)/2))
	f.Add(log, uint(len(bytes.SplitAfter(log, []byte("\n"))[0])))
	f.Add(log[:len(log)-9], uint(0))
	f.Add([]byte(`{"seq":1,"hash":"`+string(bytes.Repeat([]byte("0"), 64))+`"}`+"\n"), uint(0))
	f.Add([]byte("\n\n{}\n"), uint(1))
	// Free space: after the last record, torn into, not NUL to the end, in
	// the first file.
	free := append(bytes.Clone(log), make([]byte, 300)...)
	f.Add(free, uint(len(log)/2))
	torn := bytes.Clone(free)
	copy(torn[len(log):], log[:40])
	f.Add(torn, uint(0))
	stray := bytes.Clone(free)
	stray[len(stray)-7] = 'x'
	f.Add(stray, uint(0))
	f.Add(free, uint(len(free)-1))
	f.Fuzz(func(t *testing.T, data []byte, split uint) {
		in := bytes.Clone(data)
		cut := int(split % uint(len(data)+1))
		var v verifier
		brk, err := v.file("a", bytes.NewReader(data[:cut]), false)
		if err == nil && brk == nil {
			brk, err = v.file("b", bytes.NewReader(data[cut:]), true)
		}
		if err != nil {
			t.Fatalf("reading from memory: %v", err)
		}
		if !bytes.Equal(in, data) {
			t.Fatal("the verifier modified its input")
		}
		if brk != nil {
			if brk.Line < 1 || brk.Reason == "" {
				t.Fatalf("break without a line or reason: %+v", brk)
			}
			_ = brk.Error()
			return
		}
		// The second file is the current one: it may end with free space,
		// NULs that follow a whole record and run to its end, and nowhere
		// else holds a NUL.
		data = bytes.TrimRight(data, "\x00")
		if bytes.IndexByte(data, 0) >= 0 || len(data) > 0 && data[len(data)-1] != '\n' {
			t.Fatalf("accepted NUL bytes that are not the current file's free space")
		}
		if lines := uint64(bytes.Count(data, []byte("\n"))); v.res.Records != lines {
			t.Fatalf("accepted %d records in %d lines", v.res.Records, lines)
		}
		if v.res.Records > 0 && v.res.LastSeq-v.res.FirstSeq+1 != v.res.Records {
			t.Fatalf("accepted seq %d..%d as %d records", v.res.FirstSeq, v.res.LastSeq, v.res.Records)
		}
		for _, line := range bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n")) {
			if len(line) == 0 {
				continue
			}
			r, err := parseLine(line)
			if err != nil {
				t.Fatalf("accepted, yet a line does not parse: %v", err)
			}
			// An accepted line is exactly what the writer makes of its record.
			p, err := prepare(r, time.Time{})
			if err != nil {
				t.Fatalf("accepted record cannot be written: %v", err)
			}
			again, _ := appendLine(nil, r.Seq, r.Prev, p)
			if !bytes.Equal(again[:len(again)-1], line) {
				t.Fatalf("accepted line is not canonical:\n%s\n%s", line, again)
			}
		}
	})
}

// FuzzScan: Open's scan of the current file (free space, torn tails, the
// window) never panics, and what it keeps holds no NUL: the records end at
// good, the free space (all NULs) starts at size, and the bytes between
// are the torn tail.
func FuzzScan(f *testing.F) {
	log := sampleLog(6)
	f.Add(log, uint16(0))
	f.Add(append(bytes.Clone(log), make([]byte, 700)...), uint16(300))
	torn := append(bytes.Clone(log[:len(log)-50]), make([]byte, 700)...)
	f.Add(torn, uint16(300))
	hole := bytes.Clone(log)
	clear(hole[len(log)/2 : len(log)/2+40])
	f.Add(append(hole, make([]byte, 100)...), uint16(0))
	f.Fuzz(func(t *testing.T, data []byte, window uint16) {
		sc, err := scanAt(bytes.NewReader(data), int64(len(data)), "audit.log", int64(window)+1)
		if err != nil {
			return
		}
		if sc.good > sc.size || sc.size > int64(len(data)) {
			t.Fatalf("good %d, size %d, file %d", sc.good, sc.size, len(data))
		}
		if len(bytes.Trim(data[sc.size:], "\x00")) != 0 {
			t.Fatalf("free space from %d holds other bytes", sc.size)
		}
		if sc.scanned > 0 && bytes.IndexByte(data[:sc.good], 0) >= 0 && int64(window)+1 >= sc.size {
			t.Fatalf("kept records up to %d hold a NUL", sc.good)
		}
	})
}
