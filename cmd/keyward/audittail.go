package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/keyward/keyward/audit"
	"github.com/keyward/keyward/config"
)

const auditTailLong = `Prints the last records of keywardd's audit log, one JSON line each, and
with --follow the records written after them as they come, until
interrupted (Ctrl-C, SIGTERM: exit status 0).

Only complete records are printed. While keywardd runs, the current file
ends with free space, NUL bytes that the next records overwrite (see
audit_preallocate): a plain "tail -f" of it prints those NULs and records
cut in the middle of their write; this command stops before them and waits
for the record to be whole. When keywardd rotates the file, --follow
finishes the renamed file and goes on with the new one, so no record is
skipped or printed twice.

The log is found as audit verify finds it: in --dir DIR (by default the
directory of the default audit_log, /var/log/keyward), or named by FILE,
the log's current file. -n counts back across rotated files. Nothing is
checked: "keyward audit verify" checks the chain. A record printed while
keywardd writes it was written, not yet known durable: if the disk then
fails, keywardd cuts it again (a note on stderr says so) and refuses the
call it recorded.

Exit status 0; 2 for a bad command line, or a DIR holding several logs;
3 when a file may not be read; 4 when FILE or DIR does not exist, or DIR
holds no log.`

// auditTailFlags are audit tail's flags.
type auditTailFlags struct {
	dir    string
	follow bool
	lines  int
	poll   time.Duration // how often --follow looks for more
}

func (a *app) auditTailCmd() *cobra.Command {
	f := auditTailFlags{poll: 200 * time.Millisecond}
	c := &cobra.Command{
		Use:   "tail [FILE | --dir DIR] [-n N] [-f]",
		Short: "print the audit log's last records and, with -f, follow it across rotation (complete records only)",
		Long:  auditTailLong,
		Example: `  keyward audit tail --dir /var/log/keyward -n 20
  keyward audit tail -f | your-shipper   # follows across rotation, never prints free space`,
		Annotations: localOnly,
		Args:        cobra.MaximumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return a.auditTail(c.Context(), cmdName(c), f, args)
		},
	}
	c.Flags().StringVar(&f.dir, "dir", "", "the audit `DIR`ectory (default: that of the default audit_log)")
	c.Flags().BoolVarP(&f.follow, "follow", "f", false, "print records as they are written, across rotation, until interrupted")
	c.Flags().IntVarP(&f.lines, "lines", "n", 10, "print the last `N` records first (0: none)")
	return c
}

// auditTail runs audit tail.
func (a *app) auditTail(ctx context.Context, cmd string, f auditTailFlags, args []string) error {
	if f.lines < 0 {
		return usagef(cmd, "-n %d: want 0 or more", f.lines)
	}
	path, err := tailPath(cmd, f.dir, args)
	if err != nil {
		return err
	}
	files, _, err := audit.Chain(path)
	if err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	out := bufio.NewWriter(a.stdout)
	defer out.Flush()
	t := &tailer{path: path, out: out, stderr: a.stderr}
	if err := t.last(files, f.lines); err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	if err := out.Flush(); err != nil || !f.follow {
		return err
	}
	defer t.close()
	tick := time.NewTicker(f.poll)
	defer tick.Stop()
	for {
		if err := t.poll(); err != nil {
			return fmt.Errorf("%s: %w", cmd, err)
		}
		if err := out.Flush(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// tailPath is the current file of the log that FILE or --dir names.
func tailPath(cmd, dir string, args []string) (string, error) {
	switch {
	case dir != "" && len(args) > 0:
		return "", usagef(cmd, "give FILE or --dir, not both")
	case len(args) == 1:
		if fi, err := os.Stat(args[0]); err == nil && fi.IsDir() {
			return "", usagef(cmd, "%s is a directory: use --dir %s", args[0], args[0])
		}
		return args[0], nil
	case dir == "":
		dir = filepath.Dir(config.Defaults().AuditLog)
	}
	logs, err := audit.Logs(dir)
	switch {
	case err != nil:
		return "", fmt.Errorf("%s: %w", cmd, err)
	case len(logs) == 0:
		return "", fmt.Errorf("%s: no audit log in %s: %w", cmd, dir, fs.ErrNotExist)
	case len(logs) > 1:
		return "", usagef(cmd, "%s holds several logs: name the current file of one (%v)", dir, logs)
	}
	return logs[0], nil
}

// tailer follows the current file of a log. It keeps the seq it is to
// print next, so that records read twice (a file renamed by rotation
// between two looks) are printed once, and a file rotated between two polls
// is read from its rotated name.
type tailer struct {
	path   string
	out    *bufio.Writer
	stderr io.Writer
	f      *os.File // the current file, once open
	off    int64    // the end of the last complete line read of it
	next   uint64   // the seq to print next (0: any)
	// recent are the last lines read from f, to find what keywardd
	// rolled back after a write that failed (see intact).
	recent []printedLine
}

// printedLine is where a line printed from the current file was, and a
// checksum of it.
type printedLine struct {
	start, end int64
	seq        uint64
	sum        uint32
}

// maxRecent bounds tailer.recent: more than a batch of records (a batch
// is what a failed write rolls back).
const maxRecent = 8192

// follow reads the current file's complete lines from t.off on and prints
// them, noting each in recent.
func (t *tailer) follow() error {
	pos := t.off
	end, err := audit.ReadLines(t.f, t.off, func(line []byte) error {
		start := pos
		pos += int64(len(line)) + 1
		seq, _ := audit.LineSeq(line)
		if seq != 0 && seq < t.next {
			return nil
		}
		t.note(line, start, seq)
		return t.emit(line)
	})
	t.off = end
	return err
}

// note adds a line of the current file, read at start, to recent.
func (t *tailer) note(line []byte, start int64, seq uint64) {
	if len(t.recent) == 2*maxRecent {
		t.recent = append(t.recent[:0], t.recent[maxRecent:]...)
	}
	t.recent = append(t.recent, printedLine{start, start + int64(len(line)) + 1, seq, crc32.ChecksumIEEE(line)})
}

// holds reports whether the current file still holds p as printed.
func (t *tailer) holds(p printedLine) bool {
	b := make([]byte, p.end-p.start)
	if _, err := t.f.ReadAt(b, p.start); err != nil || b[len(b)-1] != '\n' {
		return false
	}
	return crc32.ChecksumIEEE(b[:len(b)-1]) == p.sum
}

// intact checks that the lines printed last are still in the current file:
// after a write or sync that failed, keywardd cuts the file back to its
// last durable record and writes the next records (with the same seqs)
// there. Then the lines from the first one that changed are printed again
// as they now are, after a note on stderr.
func (t *tailer) intact() {
	if len(t.recent) == 0 || t.holds(t.recent[len(t.recent)-1]) {
		return
	}
	i := 0
	for i < len(t.recent) && t.holds(t.recent[i]) {
		i++
	}
	from := t.recent[i]
	fmt.Fprintf(t.stderr, "keyward: note: keywardd rolled back the records of %s from seq %d on (a write that failed); printing what is there now\n",
		t.path, from.seq)
	t.off, t.next, t.recent = from.start, from.seq, t.recent[:i]
}

// print writes one record. A line with a control character (C0, DEL or
// C1) or that is not UTF-8 could drive the terminal: it is named on
// stderr, never printed. keywardd writes neither (encoding/json escapes
// C0 and writes only UTF-8; DEL and C1 in callers' text are recorded as
// U+FFFD); older logs may hold DEL or C1, which `audit verify` checks.
func (t *tailer) print(line []byte) error {
	if !utf8.Valid(line) {
		fmt.Fprintf(t.stderr, "keyward: %s: a line that is not UTF-8 is not an audit record; not printed\n", t.path)
		return nil
	}
	if i := bytes.IndexFunc(line, func(r rune) bool { return r < 0x20 || r >= 0x7f && r < 0xa0 }); i >= 0 {
		fmt.Fprintf(t.stderr, "keyward: %s: a line with a control character at offset %d (it could drive a terminal); not printed\n", t.path, i)
		return nil
	}
	t.out.Write(line)
	return t.out.WriteByte('\n')
}

// emit prints a line read while following, unless it was printed already.
func (t *tailer) emit(line []byte) error {
	seq, ok := audit.LineSeq(line)
	if ok && seq < t.next {
		return nil
	}
	if ok {
		t.next = seq + 1
	}
	return t.print(line)
}

// last prints the last n complete records of files (the chain, oldest
// first, the current file last) and leaves the current file open after
// them.
func (t *tailer) last(files []string, n int) error {
	if err := t.open(); err != nil {
		return err
	}
	var lines [][]byte
	var pos int64
	keep := func(line []byte) error {
		seq, ok := audit.LineSeq(line)
		if ok {
			t.next = seq + 1
		}
		t.note(line, pos, seq)
		pos += int64(len(line)) + 1
		if n > 0 {
			if len(lines) == n {
				lines = append(lines[:0], lines[1:]...)
			}
			lines = append(lines, bytes.Clone(line))
		}
		return nil
	}
	if t.f != nil {
		var err error
		if t.off, err = audit.ReadLines(t.f, 0, keep); err != nil {
			return err
		}
	}
	for i := len(files) - 1; i >= 0; i-- {
		_, last, rotated := audit.RotatedSeqs(files[i])
		if !rotated || (len(lines) >= n && t.next != 0) {
			continue
		}
		if t.next == 0 {
			t.next = last + 1
		}
		if len(lines) < n {
			ls, err := audit.FileLines(files[i])
			if err != nil {
				return err
			}
			lines = append(ls[max(0, len(ls)-(n-len(lines))):], lines...)
		}
	}
	for _, l := range lines {
		t.print(l)
	}
	return nil
}

// open opens the current file, if it exists, to read it from the start.
func (t *tailer) open() error {
	f, err := audit.OpenRegular(t.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // between a rotation's rename and create
	}
	if err != nil {
		return err
	}
	t.f, t.off = f, 0
	return nil
}

func (t *tailer) close() {
	if t.f != nil {
		t.f.Close()
	}
}

// poll prints the records written since the last poll. When the current
// file was rotated (its name now holds another file), it finishes the
// renamed one (keywardd cut and synced it before the rename: it is whole)
// and catches up from there.
func (t *tailer) poll() error {
	if t.f == nil {
		return t.catchUp()
	}
	t.intact()
	if err := t.follow(); err != nil {
		return err
	}
	cur, err := t.f.Stat()
	if err != nil {
		return err
	}
	named, err := os.Lstat(t.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil // renamed; the new file is not there yet
	case err != nil:
		return err
	case os.SameFile(cur, named):
		return nil
	}
	if err := t.follow(); err != nil {
		return err
	}
	t.f.Close()
	t.f, t.recent = nil, nil
	return t.catchUp()
}

// catchUp opens the current file, then prints the records from t.next on
// that rotated files hold (files rotated since the last poll, and the one
// just opened if it was rotated meanwhile), then those of the current file.
func (t *tailer) catchUp() error {
	if err := t.open(); err != nil || t.f == nil {
		return err
	}
	files, _, err := audit.Chain(t.path)
	if err != nil {
		return err
	}
	for _, name := range files {
		if _, last, ok := audit.RotatedSeqs(name); !ok || last < t.next {
			continue
		}
		f, err := audit.OpenRegular(name)
		if err != nil {
			return err
		}
		_, err = audit.ReadLines(f, 0, t.emit)
		f.Close()
		if err != nil {
			return err
		}
	}
	return t.follow()
}
