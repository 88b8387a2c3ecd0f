package audit

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"syscall"
)

// ReadLines is the reader for whoever reads a log file that keywardd may be
// writing: it calls fn with each complete line of r from byte off on
// (without its newline; fn must not keep it) and returns the offset just
// after the last one. It stops, without error, before the first line that
// holds a NUL byte or lacks its newline: the current file's free space, a
// record being written, or a torn tail that Open will move aside. Read on
// from the offset returned once the file has grown. A line longer than
// MaxLine (no record is) is an error naming its offset.
//
// It checks no chain and parses no record (Verify does): a line it returns
// is as the file holds it.
func ReadLines(r io.ReaderAt, off int64, fn func(line []byte) error) (int64, error) {
	s := newLineScanner(io.NewSectionReader(r, off, math.MaxInt64-off))
	s.off = off
	end := off
	for s.next() {
		switch {
		case s.nul || !s.complete:
			return end, nil
		case s.long:
			return end, fmt.Errorf("audit: byte %d: a line longer than %d bytes: not a record", s.start, MaxLine)
		}
		if err := fn(s.line); err != nil {
			return end, err
		}
		end = s.off
	}
	if s.err != nil {
		return end, fmt.Errorf("audit: read: %w", s.err)
	}
	return end, nil
}

// FileLines returns the complete lines of the log file name, as ReadLines
// reads them (without newlines, free space and a torn or unfinished last
// line left out). It does not follow a symlink.
func FileLines(name string) ([][]byte, error) {
	f, err := OpenRegular(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var lines [][]byte
	_, err = ReadLines(f, 0, func(line []byte) error {
		lines = append(lines, bytes.Clone(line))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return lines, nil
}

// ReadRecords parses the complete lines of the log file name (see
// FileLines) as records, in order; a line that is not a record is an error
// naming it. It checks no chain: Verify does.
func ReadRecords(name string) ([]Record, error) {
	lines, err := FileLines(name)
	if err != nil {
		return nil, err
	}
	recs := make([]Record, 0, len(lines))
	for i, line := range lines {
		r, err := parseLine(line)
		if err != nil {
			return nil, fmt.Errorf("audit: %s:%d: %w", name, i+1, err)
		}
		recs = append(recs, r)
	}
	return recs, nil
}

// LineSeq reads the seq of a record line from its start ({"seq":N,...),
// without parsing the rest; ok false when the line does not start so.
func LineSeq(line []byte) (seq uint64, ok bool) {
	seq = seqPrefix(line)
	return seq, seq != 0
}

// RotatedSeqs reports whether name is a rotated file of a log (see
// RotatedName), and the seqs of its first and last records, which its name
// carries.
func RotatedSeqs(name string) (first, last uint64, ok bool) {
	base := filepath.Base(name)
	if len(base) <= 42 {
		return 0, 0, false
	}
	return parseRotated(base[:len(base)-42], base)
}

// OpenRegular opens a log file for reading: never through a symlink, and
// only a regular file (checked on what was opened, so a FIFO or device put
// in its place after a directory listing is refused, not waited on:
// O_NONBLOCK keeps the open itself from blocking on a FIFO).
func OpenRegular(name string) (*os.File, error) {
	f, err := os.OpenFile(name, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("%s is not a regular file: %w", name, ErrUnsafe)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
