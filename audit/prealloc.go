package audit

import (
	"bytes"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// preallocChunk is how far ahead of its records the current file is
// extended with written zero bytes (bounded by MaxFileSize): a batch
// written into that free space is made durable by an fdatasync, which
// changes no metadata, instead of an fsync that commits the file's new
// size to the journal. Extending costs one write of the chunk and one full
// fsync per chunk (about 5000 records of 200 bytes).
const preallocChunk int64 = 1 << 20

// zeros is what free space is written with.
var zeros [64 << 10]byte

// osFile is the log file opened by the package: a file that can be
// fdatasynced.
type osFile struct{ *os.File }

func (f osFile) Datasync() error {
	return unix.Fdatasync(int(f.Fd()))
}

// datasync syncs f's data (and the metadata needed to read it back) where f
// can; a file that cannot (a test's) gets a full fsync.
func datasync(f file) error {
	if d, ok := f.(interface{ Datasync() error }); ok {
		return d.Datasync()
	}
	return f.Sync()
}

// extend makes room for n bytes of records after l.size: when they do not
// fit in the free space, the file is extended with zero bytes up to the
// next chunk boundary (not past MaxFileSize unless the records need it),
// written now; the batch's sync is then a full fsync (metaDirty). When the
// zeros cannot be written (a disk with less than a chunk free), they are
// cut again and the batch is appended as without preallocation: the disk
// being nearly full is no reason to refuse records that still fit.
func (l *Log) extend(n int64) {
	need := l.size + n
	if need <= l.alloc {
		return
	}
	l.metaDirty = true
	if !l.prealloc() {
		l.alloc = need
		return
	}
	target := (need + l.opts.chunk - 1) / l.opts.chunk * l.opts.chunk
	if m := l.opts.MaxFileSize; m > 0 && target > m {
		target = max(m, need)
	}
	for off := max(l.alloc, need); off < target; {
		k := min(target-off, int64(len(zeros)))
		if _, err := l.f.WriteAt(zeros[:k], off); err != nil {
			l.f.Truncate(max(l.alloc, l.size)) // best effort: give the space back
			if !l.preallocFailing {
				l.log.Warn("audit log: cannot write free space ahead of the records; appending without it",
					"path", l.path, "bytes", target-l.alloc, "err", err.Error())
			}
			l.preallocFailing, l.alloc = true, need
			return
		}
		off += k
	}
	l.preallocFailing, l.alloc = false, target
}

// prealloc reports whether the file keeps free space: with SyncEach, unless
// turned off. SyncWrite gains nothing from it (one fsync a second), and
// its unsynced records, up to SyncInterval's worth, could come back from a
// power failure with holes anywhere in them: more than Open's window
// checks.
func (l *Log) prealloc() bool {
	return l.opts.Sync == SyncEach && !l.opts.NoPreallocate
}

// writeRecords writes a batch's lines at the end of the records. Into free
// space, a batch over half of Open's window is written and synced in
// pieces of whole lines no larger than that (a negligible sync more per
// half MiB), so that the bytes not yet synced when the machine goes down,
// where blocks may be missing in any order, always lie within the window
// Open checks; one longer line (tests' small windows) goes whole.
func (l *Log) writeRecords(buf []byte) error {
	off, piece := l.size, int(l.opts.scanWindow/2)
	for l.prealloc() && len(buf) > piece {
		cut := bytes.LastIndexByte(buf[:piece], '\n') + 1
		if cut == 0 {
			cut = bytes.IndexByte(buf, '\n') + 1
		}
		if cut == 0 || cut == len(buf) {
			break
		}
		if _, err := l.f.WriteAt(buf[:cut], off); err != nil {
			return withPath("write", l.path, err)
		}
		if err := l.sync(); err != nil {
			return err
		}
		off, buf = off+int64(cut), buf[cut:]
	}
	if _, err := l.f.WriteAt(buf, off); err != nil {
		return withPath("write", l.path, err)
	}
	return nil
}

// trimFree cuts the free space off the file (it then ends at its last
// record) and fsyncs it: done before the file is rotated or closed.
func (l *Log) trimFree() error {
	if err := l.f.Truncate(l.size); err != nil {
		return withPath("truncate", l.path, err)
	}
	l.alloc, l.metaDirty = l.size, true
	return l.sync()
}

// dataEnd is the offset just after the last byte of r's first size bytes
// that is not NUL: the file's free space, a run of NULs at its end, starts
// there. It reads backwards, so a restart reads the free space once and
// not the records before it.
func dataEnd(r io.ReaderAt, size int64) (int64, error) {
	buf := make([]byte, 64<<10)
	for end := size; end > 0; {
		start := max(0, end-int64(len(buf)))
		b := buf[:end-start]
		if _, err := r.ReadAt(b, start); err != nil && err != io.EOF {
			return 0, err
		}
		for i := len(b) - 1; i >= 0; i-- {
			if b[i] != 0 {
				return start + int64(i) + 1, nil
			}
		}
		end = start
	}
	return 0, nil
}
