package audit

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// RotatedName is the name a full log file is renamed to: path.<first>-<last>,
// the seqs of its first and last records as 20 zero-padded digits, so that
// names sort in chain order.
func RotatedName(path string, first, last uint64) string {
	return fmt.Sprintf("%s.%020d-%020d", path, first, last)
}

// tornInfix marks a torn tail moved aside at Open: path.torn-<UTC time>.
const tornInfix = ".torn-"

// parseRotated reports whether name is a rotated file of base, and its seqs.
func parseRotated(base, name string) (first, last uint64, ok bool) {
	rest, found := strings.CutPrefix(name, base+".")
	if !found || len(rest) != 41 || rest[20] != '-' {
		return 0, 0, false
	}
	a, b := rest[:20], rest[21:]
	for _, s := range []string{a, b} {
		for i := 0; i < len(s); i++ {
			if s[i] < '0' || s[i] > '9' {
				return 0, 0, false
			}
		}
	}
	first, err1 := strconv.ParseUint(a, 10, 64)
	last, err2 := strconv.ParseUint(b, 10, 64)
	return first, last, err1 == nil && err2 == nil
}

// Chain lists the files of the log at path in chain order: its rotated files
// (oldest first), then path itself when it exists. torn lists the torn tails
// Open moved aside (path.torn-*), which are not part of the chain. A name of
// the chain that is not a regular file (a symlink, a directory) is an error
// matching ErrUnsafe: the chain is never read or written through a link.
func Chain(path string) (files, torn []string, err error) {
	dir, _ := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, err
	}
	return chainOf(dir, path, entries)
}

// chainOf is Chain of the log at path in dir, whose entries are given.
func chainOf(dir, path string, entries []os.DirEntry) (files, torn []string, err error) {
	base := filepath.Base(path)
	type rotated struct {
		first uint64
		name  string
	}
	var rs []rotated
	current := false
	for _, e := range entries {
		name := e.Name()
		first, _, rot := parseRotated(base, name)
		if (rot || name == base) && !e.Type().IsRegular() {
			return nil, nil, fmt.Errorf("audit: %s is not a regular file (%v): %w", filepath.Join(dir, name), e.Type(), ErrUnsafe)
		}
		switch {
		case rot:
			rs = append(rs, rotated{first, filepath.Join(dir, name)})
		case name == base:
			current = true
		case strings.HasPrefix(name, base+tornInfix):
			torn = append(torn, filepath.Join(dir, name))
		}
	}
	slices.SortFunc(rs, func(a, b rotated) int {
		if a.first != b.first {
			return compare(a.first, b.first)
		}
		return strings.Compare(a.name, b.name)
	})
	for _, r := range rs {
		files = append(files, r.name)
	}
	if current {
		files = append(files, path)
	}
	return files, torn, nil
}

func compare(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// lockSuffix names a log's lock file (path + lockSuffix).
const lockSuffix = ".lock"

// Logs returns the current-file paths of the logs in dir: every regular
// file that is neither a rotated file, a torn tail nor a lock file, and the
// base of every rotated file. A directory that holds one log gives one path.
func Logs(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		name := e.Name()
		if !e.Type().IsRegular() || strings.HasPrefix(name, ".") || strings.Contains(name, tornInfix) || strings.HasSuffix(name, lockSuffix) ||
			name == ContextKeyName {
			continue
		}
		if i := len(name) - 42; i > 0 {
			if _, _, ok := parseRotated(name[:i], name); ok {
				name = name[:i]
			}
		}
		names = append(names, filepath.Join(dir, name))
	}
	slices.Sort(names)
	return slices.Compact(names), nil
}

// lineScanner reads lines of any length, with their offsets, keeping at
// most MaxLine bytes of each.
type lineScanner struct {
	r        *bufio.Reader
	off      int64  // bytes consumed
	start    int64  // offset of the current line
	line     []byte // the current line, without its newline
	complete bool   // it ended with a newline
	long     bool   // it is longer than MaxLine (line holds a prefix)
	nul      bool   // it holds a NUL byte (records never do)
	allNUL   bool   // every byte of it is NUL (so it has no newline)
	err      error  // a read error other than EOF
}

func newLineScanner(r io.Reader) *lineScanner {
	return &lineScanner{r: bufio.NewReaderSize(r, 64<<10)}
}

func (s *lineScanner) next() bool {
	s.start, s.line, s.complete, s.long = s.off, s.line[:0], false, false
	s.nul, s.allNUL = false, true
	for {
		chunk, err := s.r.ReadSlice('\n')
		s.off += int64(len(chunk))
		s.noteNUL(chunk)
		if len(s.line)+len(chunk) <= MaxLine {
			s.line = append(s.line, chunk...)
		} else {
			s.long = true
		}
		switch {
		case err == nil:
			s.complete = true
			if !s.long {
				s.line = s.line[:len(s.line)-1]
			}
			return true
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF):
			return s.off > s.start
		default:
			s.err = err
			return false
		}
	}
}

// noteNUL updates nul and allNUL with a chunk of the current line.
func (s *lineScanner) noteNUL(chunk []byte) {
	if !s.nul && bytes.IndexByte(chunk, 0) >= 0 {
		s.nul = true
	}
	if s.allNUL {
		for _, c := range chunk {
			if c != 0 {
				s.allNUL = false
				break
			}
		}
	}
}

// scanWindow bounds what Open reads of a large current file: one larger
// than this is checked only in its first line and its last scanWindow bytes
// (see scanTail). Tests shrink it per Log (Options.scanWindow).
const scanWindow int64 = 1 << 20

// scan is what recover learned of the current file.
type scan struct {
	// scanned counts the good records read: for a file larger than
	// scanWindow, those in the window only, not the file's total. Use it
	// only as "the file has records".
	scanned        uint64
	first, seq     uint64
	hash           [32]byte
	good           int64 // end of the last good record
	missingNewline bool  // that record ends the file without its newline
	size           int64 // end of the bytes before the free space
}

// scanFile checks path record by record: all of it, or for a file larger
// than window its first record and its last window bytes. Damaged
// bytes after the good records are a tail for recover to move; a
// self-consistent record after damage, or one that does not continue the
// chain, is ErrCorrupt. f is path, open for reading.
func scanFile(f *os.File, path string, window int64) (scan, error) {
	fi, err := f.Stat()
	if err != nil {
		return scan{}, err
	}
	return scanAt(f, fi.Size(), path, window)
}

// scanAt is scanFile of the size bytes of r.
func scanAt(f io.ReaderAt, size int64, path string, window int64) (scan, error) {
	// The free space (NULs at the end) is skipped first: a restart reads
	// the records' end, not the chunk of free space before it.
	end, err := dataEnd(f, size)
	if err != nil {
		return scan{}, fmt.Errorf("audit: read %s: %w", path, err)
	}
	if end > window {
		if sc, ok, err := scanTail(path, f, end, window); ok || err != nil {
			return sc, err
		}
	}
	return scanLines(path, newLineScanner(io.NewSectionReader(f, 0, end)), false)
}

// scanTail is scanFile for a file of size bytes, larger than window: it
// reads the first record (for first, which names the file at rotation), skips
// to the first line that starts in the last window bytes, and checks from
// there as scanLines does. Damage before the window goes unseen here (it is
// what keyward audit verify is for); a torn write only ever damages the end.
// ok false: the window does not settle it (no good record in it, the first
// line damaged or reaching into the window, seqs not increasing from the
// first record to the window); the caller scans the whole file.
func scanTail(path string, f io.ReaderAt, size, window int64) (sc scan, ok bool, err error) {
	start := size - window
	head := newLineScanner(io.NewSectionReader(f, 0, size))
	if !head.next() {
		if head.err != nil {
			return sc, false, fmt.Errorf("audit: read %s: %w", path, head.err)
		}
		return sc, false, nil
	}
	if head.long || !head.complete || head.off > start {
		return sc, false, nil
	}
	first, err := parseLine(head.line)
	if err != nil {
		return sc, false, nil
	}
	// Start one byte early so that a window starting on a line boundary
	// keeps that line: the first line read is then just the newline before it.
	s := newLineScanner(io.NewSectionReader(f, start-1, size-start+1))
	s.off = start - 1
	s.next() // the end of the line the window starts in
	sc, err = scanLines(path, s, true)
	if err != nil {
		return sc, true, err
	}
	if sc.scanned == 0 || sc.first <= first.Seq {
		return scan{}, false, nil
	}
	sc.first = first.Seq
	return sc, true, nil
}

// scanLines checks the lines of s as scanFile says. window: s starts at the
// window of scanTail, so places are given as byte offsets, not line numbers.
func scanLines(path string, s *lineScanner, window bool) (scan, error) {
	var sc scan
	here := func(n int) string {
		if window {
			return fmt.Sprintf("%s (byte %d)", path, s.start)
		}
		return fmt.Sprintf("%s:%d", path, n)
	}
	damaged := "" // where the first damaged line is
	// tornFree: the first damaged line holds NULs: a batch written into
	// free space whose blocks reached the disk in part, in any order.
	// Records after it are of that same unacknowledged write: torn too.
	tornFree := false
	for n := 1; s.next(); n++ {
		var rec Record
		err := errors.New("line too long")
		if !s.long {
			rec, err = parseLine(s.line)
		}
		switch {
		case damaged != "" && tornFree:
		case damaged != "" && err == nil:
			return sc, fmt.Errorf("audit: %s: a complete record (seq %d) follows damaged bytes at %s; run keyward audit verify: %w",
				here(n), rec.Seq, damaged, ErrCorrupt)
		case damaged != "":
		case err != nil:
			damaged, tornFree = fmt.Sprintf("line %d", n), s.nul
			if window {
				damaged = fmt.Sprintf("byte %d", s.start)
			}
		case sc.scanned > 0 && (rec.Seq != sc.seq+1 || rec.Prev != sc.hash):
			return sc, fmt.Errorf("audit: %s: seq %d does not continue the chain after seq %d; run keyward audit verify: %w",
				here(n), rec.Seq, sc.seq, ErrCorrupt)
		default:
			if sc.scanned == 0 {
				sc.first = rec.Seq
			}
			sc.scanned++
			sc.seq, sc.hash = rec.Seq, rec.Hash
			sc.good = s.off
			sc.missingNewline = !s.complete
		}
	}
	if s.err != nil {
		return sc, fmt.Errorf("audit: read %s: %w", path, s.err)
	}
	sc.size = s.off
	return sc, nil
}

// openAt opens name in the log's directory as openAt does.
func (l *Log) openAt(name string, flag int, perm fs.FileMode) (*os.File, error) {
	return openAt(l.dir, filepath.Dir(l.path), name, flag, perm)
}

// recover finds where the chain stands before the writer starts: the last
// record of path (after moving a torn tail aside), else of the newest
// rotated file, else a new chain.
func (l *Log) recover() error {
	var sc scan
	f, err := l.openAt(l.base, os.O_RDONLY, 0)
	switch {
	case err == nil:
		sc, err = scanFile(f, l.path, l.opts.scanWindow)
		f.Close()
		if err != nil {
			return err
		}
	case !errors.Is(err, fs.ErrNotExist):
		return err
	}
	if sc.size > sc.good {
		if err := l.moveTail(sc); err != nil {
			return err
		}
	}
	if sc.missingNewline {
		if err := l.appendNewline(sc.good); err != nil {
			return err
		}
		sc.good++
		l.report.NewlineAdded = true
		l.log.Warn("audit log: last record lacked its newline; kept, newline added", "path", l.path, "seq", sc.seq)
	}
	l.size = sc.good
	if sc.scanned > 0 {
		l.first, l.seq, l.prev = sc.first, sc.seq, sc.hash
		l.report.Seq, l.report.Hash, l.report.From = sc.seq, sc.hash, l.path
		return nil
	}
	entries, err := readDirAt(l.dir)
	if err != nil {
		return err
	}
	files, _, err := chainOf(filepath.Dir(l.path), l.path, entries)
	if err != nil {
		return err
	}
	for i := len(files) - 1; i >= 0; i-- {
		if files[i] == l.path {
			continue
		}
		rec, err := l.lastRecord(files[i])
		if err != nil {
			return err
		}
		l.seq, l.prev = rec.Seq, rec.Hash
		l.report.Seq, l.report.Hash, l.report.From = rec.Seq, rec.Hash, files[i]
		return nil
	}
	return nil
}

// moveTail copies the bytes after the last good record to path.torn-<time>,
// makes that durable, then cuts them from path.
func (l *Log) moveTail(sc scan) error {
	n := sc.size - sc.good
	torn := l.path + tornInfix + time.Now().UTC().Format("20060102T150405.000000000Z")
	err := func() error {
		src, err := l.openAt(l.base, os.O_RDONLY, 0)
		if err != nil {
			return err
		}
		defer src.Close()
		dst, err := l.openAt(filepath.Base(torn), os.O_WRONLY|os.O_CREATE|os.O_EXCL, l.opts.FileMode)
		if err != nil {
			return err
		}
		if _, err := io.Copy(dst, io.NewSectionReader(src, sc.good, n)); err != nil {
			dst.Close()
			return err
		}
		if err := dst.Sync(); err != nil {
			dst.Close()
			return err
		}
		if err := dst.Close(); err != nil {
			return err
		}
		if err := l.syncDir(); err != nil {
			return err
		}
		f, err := l.openAt(l.base, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := f.Truncate(sc.good); err != nil {
			return err
		}
		return f.Sync()
	}()
	if err != nil {
		return fmt.Errorf("audit: move the torn tail of %s (%d bytes) to %s: %w", l.path, n, torn, err)
	}
	l.report.TornFile, l.report.TornBytes = torn, n
	l.log.Error("audit log: torn tail moved aside (a crash mid-write?); the chain continues from the last good record",
		"path", l.path, "torn_file", torn, "bytes", n, "after_seq", sc.seq)
	return nil
}

func (l *Log) appendNewline(at int64) error {
	f, err := l.openAt(l.base, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte{'\n'}, at); err != nil {
		return err
	}
	return f.Sync()
}

// lastRecord reads the last record of a rotated file, which must be
// complete and carry the seq its name says.
func (l *Log) lastRecord(name string) (Record, error) {
	corrupt := func(why string) (Record, error) {
		return Record{}, fmt.Errorf("audit: %s: %s; run keyward audit verify: %w", name, why, ErrCorrupt)
	}
	base := filepath.Base(name)
	_, wantLast, _ := parseRotated(base[:len(base)-42], base)
	f, err := l.openAt(base, os.O_RDONLY, 0)
	if err != nil {
		return Record{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return Record{}, err
	}
	size := fi.Size()
	n := min(size, 2*MaxLine)
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, size-n); err != nil {
		return Record{}, err
	}
	if len(buf) == 0 || buf[len(buf)-1] != '\n' {
		return corrupt("does not end with a complete record")
	}
	buf = buf[:len(buf)-1]
	line := buf[bytes.LastIndexByte(buf, '\n')+1:]
	rec, err := parseLine(line)
	if err != nil {
		return corrupt("last record: " + err.Error())
	}
	if rec.Seq != wantLast {
		return corrupt(fmt.Sprintf("last record is seq %d, its name says %d", rec.Seq, wantLast))
	}
	return rec, nil
}
