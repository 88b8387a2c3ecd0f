package audit

import (
	"bytes"
	"crypto"
	"fmt"
	"io"
	"strconv"
)

// Result is what Verify checked.
type Result struct {
	Files    int    // files read
	Records  uint64 // records that verified (before the break, if any)
	FirstSeq uint64 // seq of the first record (0: none)
	LastSeq  uint64 // seq of the last record that verified
	LastHash [32]byte
	// Spans are the files that held records, in order, each with where it
	// starts: the Start to give VerifyOptions once the files before it
	// have been removed.
	Spans []Span
	// Checkpoints counts checkpoint records: their signatures verified when
	// VerifyOptions.CheckpointKeys were given, only seen otherwise.
	Checkpoints uint64
	// LastCheckpointSeq is the seq of the last checkpoint (0: none); the
	// records after it (LastSeq - LastCheckpointSeq) are not anchored.
	LastCheckpointSeq uint64
	// Broken names the first broken record; nil when the chain holds.
	Broken *Break
}

// VerifyOptions tunes VerifyWith.
type VerifyOptions struct {
	// CheckpointKeys, when set, are the public keys of the checkpoint
	// signing key's versions (keyward pubkey NAME --version N): every
	// checkpoint's signature must verify with one of them, or the
	// checkpoint is reported as the break.
	CheckpointKeys []crypto.PublicKey
	// From, when set, is where a trail that no longer holds the genesis
	// record (its older files removed on purpose) starts. Unset, the
	// first record must be the genesis record, seq 1.
	From *Start
	// Each, when set, is called with every record once it has verified
	// (its line canonical, its hash recomputed, linked to the one before;
	// a checkpoint's signature checked as CheckpointKeys say), in chain
	// order, before the next line is read: a reader of the whole trail
	// (keyward audit report) streams it in the same pass that verifies it,
	// in memory bounded by one line. A record after the break is never
	// given. An error from Each stops VerifyWith, which returns it as is.
	Each func(Record) error
}

// Start is where a trail starts: the seq of its first record and that
// record's prev, the hash of the record before it (the last one removed).
// The genesis start is seq 1, prev 64 zeros.
type Start struct {
	Seq  uint64
	Prev [32]byte
}

// Span is the part of the chain one file holds.
type Span struct {
	File     string
	Start    Start // its first record's seq and prev
	LastSeq  uint64
	LastHash [32]byte
	Records  uint64
}

// Break names the first broken record and why. It is also the error Verify
// returns; it matches ErrBroken.
type Break struct {
	File   string
	Line   int    // 1-based
	Seq    uint64 // the seq the line holds; 0 when it cannot be read
	Reason string
}

func (b *Break) Error() string {
	seq := "seq unreadable"
	if b.Seq != 0 {
		seq = "seq " + strconv.FormatUint(b.Seq, 10)
	}
	return fmt.Sprintf("%s:%d (%s): %s", b.File, b.Line, seq, b.Reason)
}

func (b *Break) Is(target error) bool { return target == ErrBroken }

// Verify reads files in chain order (oldest first, as Chain lists them) and
// checks every line: it is a complete, canonical record; its seq is one more
// than the one before; its prev is the hash of the one before (64 zeros for
// seq 1); its hash recomputes. The first record must be the genesis record,
// seq 1, unless VerifyOptions.From says where the trail starts: then it
// must be that seq, with that prev. Records (or whole files) missing at the
// start are so a break like any other. Across files, the first record of a
// file must continue the last of the file before.
//
// The last file may end with free space (NULs from the start of a line to
// the end of the file) when its name is not a rotated one: it is the
// current file. Any other NUL is a break.
//
// A broken chain gives a *Break (in Result.Broken and as the error); a file
// that cannot be read gives its error.
func Verify(files ...string) (Result, error) {
	return VerifyWith(VerifyOptions{}, files...)
}

// VerifyWith is Verify, with checkpoint signatures checked as opts says.
func VerifyWith(opts VerifyOptions, files ...string) (Result, error) {
	v := verifier{opts: opts}
	for i, name := range files {
		f, err := OpenRegular(name) // never through a symlink, never a FIFO
		if err != nil {
			return v.res, fmt.Errorf("audit: %w", err)
		}
		brk, err := v.file(name, f, i == len(files)-1 && !isRotated(name))
		f.Close()
		v.res.Files++
		if v.eachErr != nil {
			return v.res, v.eachErr
		}
		if err != nil {
			return v.res, fmt.Errorf("audit: read %s: %w", name, err)
		}
		if brk != nil {
			v.res.Broken = brk
			return v.res, brk
		}
	}
	return v.res, nil
}

// verifier carries the chain from line to line and file to file.
type verifier struct {
	opts     VerifyOptions
	res      Result
	lastFile string
	lastLine int
	eachErr  error // what opts.Each returned, which stops the walk
}

// file checks the lines of one file. active: it is the current file (the
// last one given, not a rotated name), which may end with free space.
func (v *verifier) file(name string, r io.Reader, active bool) (*Break, error) {
	s := newLineScanner(r)
	n := 0
	for s.next() {
		n++
		brk := func(seq uint64, format string, a ...any) *Break {
			return &Break{File: name, Line: n, Seq: seq, Reason: fmt.Sprintf(format, a...)}
		}
		if s.nul {
			if why := nulReason(s, active); why != "" {
				return brk(seqPrefix(s.line), "%s", why), nil
			}
			continue // the free space, which ends the file
		}
		switch {
		case s.long:
			return brk(seqPrefix(s.line), "line longer than %d bytes", MaxLine), nil
		case !s.complete:
			return brk(seqPrefix(s.line), "incomplete last line (%d bytes, no newline): torn write or truncated file", len(s.line)), nil
		}
		rec, err := parseLine(s.line)
		if err != nil {
			return brk(seqPrefix(s.line), "%v", err), nil
		}
		if why := v.link(rec, name); why != "" {
			return brk(rec.Seq, "%s", why), nil
		}
		switch {
		case rec.Op == OpCheckpoint:
			if len(v.opts.CheckpointKeys) > 0 {
				if err := verifyCheckpoint(v.opts.CheckpointKeys, rec); err != nil {
					return brk(rec.Seq, "%v", err), nil
				}
			}
			v.res.Checkpoints++
			v.res.LastCheckpointSeq = rec.Seq
		case len(rec.Sig) > 0:
			return brk(rec.Seq, "a signature on a record that is not a checkpoint"), nil
		}
		if v.res.Records == 0 {
			v.res.FirstSeq = rec.Seq
		}
		if len(v.res.Spans) == 0 || v.res.Spans[len(v.res.Spans)-1].File != name {
			v.res.Spans = append(v.res.Spans, Span{File: name, Start: Start{Seq: rec.Seq, Prev: rec.Prev}})
		}
		sp := &v.res.Spans[len(v.res.Spans)-1]
		sp.LastSeq, sp.LastHash = rec.Seq, rec.Hash
		sp.Records++
		v.res.Records++
		v.res.LastSeq, v.res.LastHash = rec.Seq, rec.Hash
		v.lastFile, v.lastLine = name, n
		if v.opts.Each != nil {
			if v.eachErr = v.opts.Each(rec); v.eachErr != nil {
				return nil, nil
			}
		}
	}
	return nil, s.err
}

// nulReason says why a line holding NUL bytes breaks the trail, or ""
// when it is the current file's free space: NULs from the
// start of a line to the end of the file.
func nulReason(s *lineScanner, active bool) string {
	switch {
	case !active:
		return fmt.Sprintf("NUL bytes (from byte %d): only the current file may end with free space; a rotated or earlier file never does", s.start)
	case s.line[0] != 0:
		return fmt.Sprintf("a record torn by NUL bytes (from byte %d): a write into the free space that did not complete (keywardd moves it aside at its next start)", s.start)
	case !s.allNUL:
		return fmt.Sprintf("a byte that is not NUL in the free space (NULs from byte %d): the free space must be NULs to the end of the file", s.start)
	}
	return ""
}

// isRotated reports whether name is a rotated file's name.
func isRotated(name string) bool {
	_, _, ok := RotatedSeqs(name)
	return ok
}

// link says why rec does not continue the chain, or "".
func (v *verifier) link(rec Record, name string) string {
	if v.res.Records == 0 {
		return v.first(rec)
	}
	where := fmt.Sprintf("line %d", v.lastLine)
	if v.lastFile != name {
		where = fmt.Sprintf("%s:%d, the last record of the file before", v.lastFile, v.lastLine)
	}
	want := v.res.LastSeq + 1
	switch {
	case rec.Seq > want:
		return fmt.Sprintf("seq %d follows seq %d (%s): seq %d..%d missing", rec.Seq, v.res.LastSeq, where, want, rec.Seq-1)
	case rec.Seq < want:
		return fmt.Sprintf("seq %d follows seq %d (%s): out of order or repeated", rec.Seq, v.res.LastSeq, where)
	case rec.Prev != v.res.LastHash:
		return fmt.Sprintf("prev is not the hash of seq %d (%s): a record before it was changed or replaced", v.res.LastSeq, where)
	}
	return ""
}

// first says why rec cannot be the first record of the trail, or "".
func (v *verifier) first(rec Record) string {
	from := v.opts.From
	switch {
	case rec.Seq == 0:
		return "seq 0: seqs start at 1"
	case rec.Seq == 1 && rec.Prev != [32]byte{}:
		return "seq 1 must have a prev of 64 zeros"
	case from == nil && rec.Seq != 1:
		return fmt.Sprintf("the first record is seq %d, not the genesis record (seq 1): seq 1..%d are missing "+
			"(records deleted, or older files removed; a trail that starts later needs the seq and hash it starts from)",
			rec.Seq, rec.Seq-1)
	case from == nil:
		return ""
	case rec.Seq > from.Seq:
		return fmt.Sprintf("the first record is seq %d, the trail was to start at seq %d: seq %d..%d are missing",
			rec.Seq, from.Seq, from.Seq, rec.Seq-1)
	case rec.Seq < from.Seq:
		return fmt.Sprintf("the first record is seq %d, the trail was to start at seq %d", rec.Seq, from.Seq)
	case rec.Prev != from.Prev:
		return fmt.Sprintf("prev of seq %d is not the hash given to start from (that of seq %d): the record was replaced, or the hash given is wrong",
			rec.Seq, rec.Seq-1)
	}
	return ""
}

// seqPrefix reads the seq of a line that does not parse, for the report.
func seqPrefix(line []byte) uint64 {
	rest, ok := bytes.CutPrefix(line, []byte(`{"seq":`))
	if !ok {
		return 0
	}
	i := 0
	for i < len(rest) && i < 20 && rest[i] >= '0' && rest[i] <= '9' {
		i++
	}
	if i == len(rest) || rest[i] != ',' {
		return 0
	}
	n, err := strconv.ParseUint(string(rest[:i]), 10, 64)
	if err != nil {
		return 0
	}
	return n
}
