package audit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Options tunes a Log. The zero value is the default for every field.
type Options struct {
	// MaxFileSize: once a batch leaves the file at this size or more, it is
	// rotated. Default 64 MiB; negative: never rotate.
	MaxFileSize int64
	// MaxBatch bounds the records of one write and fsync (one AppendAll's
	// records are never split, so a larger one goes alone). Default 4096.
	MaxBatch int
	// MaxDelay is the group-commit window: how long the writer waits, after
	// the first record of a batch arrives, for more (or for MaxBatch). The
	// default, 0, writes as soon as the writer is free: a batch is whatever
	// queued while the previous fsync ran, which already groups under load
	// and adds no latency when idle.
	MaxDelay time.Duration
	// MaxWait, when positive, bounds how long an Append waits for the batch
	// its records queued for (beyond what its ctx allows): it then returns
	// context.DeadlineExceeded. The timer starts only when the record
	// queues; an append to an idle log commits on the caller's goroutine
	// and needs none.
	MaxWait time.Duration
	// RetryInterval: while failing, at most one Append per interval is let
	// through to retry the disk; the others fail fast. Default 100 ms.
	RetryInterval time.Duration
	// FileMode of the files the log creates. Default 0600.
	FileMode fs.FileMode
	// Logger receives the log's own events (failing, recovered, rotated,
	// torn tail). Default: discard.
	Logger *slog.Logger
	// Checkpoint, when set, signs checkpoint records (see Signer): one
	// after every CheckpointEvery records (default 1000), one when
	// CheckpointInterval (default 1 min) has passed since the last with
	// records in between, and one at Close.
	Checkpoint         Signer
	CheckpointEvery    int
	CheckpointInterval time.Duration
	// OnFsync, when set, is called with the duration of each fsync of the
	// log file after a write (for a latency histogram). It must not block.
	OnFsync func(time.Duration)
	// Sync says when records reach the disk; the default is SyncEach.
	Sync SyncMode
	// SyncInterval: with SyncWrite, the longest a written record waits for
	// its fsync. Default 1 s.
	SyncInterval time.Duration
	// NoPreallocate turns off the free space (see the package doc): the
	// file then ends at its last record at all times, for readers that
	// follow the current file as plain text, and every sync is a full
	// fsync (the file's size changes with each batch). SyncWrite never
	// keeps free space.
	NoPreallocate bool

	// openFile, when set, opens the log file for writing instead of the
	// default (relative to the directory, never through a symlink); tests
	// set it to inject write and fsync failures.
	openFile func(name string, flag int, perm fs.FileMode) (file, error)
	// scanWindow, when set, replaces the package's scanWindow (tests
	// shrink it).
	scanWindow int64
	// chunk, when set, replaces the package's preallocChunk (tests shrink
	// it).
	chunk int64
}

// SyncMode says when the records of a batch are fsynced.
type SyncMode int

const (
	// SyncEach fsyncs every batch before releasing its callers: a record
	// whose Append returned outlives the daemon, the kernel and a power
	// failure.
	SyncEach SyncMode = iota
	// SyncWrite releases a batch's callers once its write(2) returned: the
	// record is in the kernel's page cache, so it outlives the daemon
	// crashing or being killed, but the records of the last SyncInterval
	// can be lost when the machine crashes or loses power. The file is
	// fsynced at most SyncInterval after a write, at rotation and at Close.
	// If that fsync fails, the log fails closed (as a failed write does)
	// and names the records that were acknowledged but may not be on disk.
	SyncWrite
)

// String is the mode's configuration name: "fsync" or "write".
func (m SyncMode) String() string {
	switch m {
	case SyncEach:
		return "fsync"
	case SyncWrite:
		return "write"
	}
	return fmt.Sprintf("SyncMode(%d)", int(m))
}

// ParseSyncMode reads a mode's configuration name.
func ParseSyncMode(s string) (SyncMode, error) {
	switch s {
	case "fsync":
		return SyncEach, nil
	case "write":
		return SyncWrite, nil
	}
	return 0, fmt.Errorf("audit: sync mode %q: want \"fsync\" or \"write\"", s)
}

// file is what the writer needs of the open log file.
type file interface {
	io.WriterAt
	Sync() error
	Truncate(size int64) error
	Stat() (fs.FileInfo, error)
	Close() error
}

func (o Options) withDefaults() (Options, error) {
	switch {
	case o.MaxBatch < 0:
		return o, fmt.Errorf("audit: MaxBatch %d is negative", o.MaxBatch)
	case o.MaxDelay < 0:
		return o, fmt.Errorf("audit: MaxDelay %v is negative", o.MaxDelay)
	case o.MaxWait < 0:
		return o, fmt.Errorf("audit: MaxWait %v is negative", o.MaxWait)
	case o.RetryInterval < 0:
		return o, fmt.Errorf("audit: RetryInterval %v is negative", o.RetryInterval)
	case o.Sync != SyncEach && o.Sync != SyncWrite:
		return o, fmt.Errorf("audit: unknown %v", o.Sync)
	case o.SyncInterval < 0:
		return o, fmt.Errorf("audit: SyncInterval %v is negative", o.SyncInterval)
	case o.CheckpointEvery < 0 || o.CheckpointInterval < 0:
		return o, fmt.Errorf("audit: negative checkpoint setting")
	case o.FileMode&^fs.ModePerm != 0:
		return o, fmt.Errorf("audit: FileMode %v has more than permission bits", o.FileMode)
	}
	if o.MaxFileSize == 0 {
		o.MaxFileSize = 64 << 20
	}
	if o.MaxBatch == 0 {
		o.MaxBatch = 4096
	}
	if o.CheckpointEvery == 0 {
		o.CheckpointEvery = 1000
	}
	if o.CheckpointInterval == 0 {
		o.CheckpointInterval = time.Minute
	}
	if o.RetryInterval == 0 {
		o.RetryInterval = 100 * time.Millisecond
	}
	if o.SyncInterval == 0 {
		o.SyncInterval = time.Second
	}
	if o.FileMode == 0 {
		o.FileMode = 0o600
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.scanWindow == 0 {
		o.scanWindow = scanWindow
	}
	if o.chunk == 0 {
		o.chunk = preallocChunk
	}
	return o, nil
}

// OpenReport says where Open found the chain.
type OpenReport struct {
	// Seq and Hash are those of the last record found: the next Append is
	// Seq+1 and links to Hash. Seq 0: a new chain.
	Seq  uint64
	Hash [32]byte
	// From is the file that record is in ("" for a new chain).
	From string
	// TornFile and TornBytes: where a torn tail was moved, and its size
	// ("" and 0: there was none).
	TornFile  string
	TornBytes int64
	// NewlineAdded: the last record lacked only its newline; it was kept.
	NewlineAdded bool
}

// Stats are counters since Open, for metrics and tests.
type Stats struct {
	Records uint64 // records written (with SyncEach: made durable)
	Batches uint64 // batches written (with SyncEach: one fsync each)
	Inline  uint64 // of those, batches written on an appender's goroutine, not the writer's
	Fsyncs  uint64 // fsyncs of the log file: batches, and truncations on recovery
	// Datasyncs: of Fsyncs, those that were data-only (fdatasync, of
	// records written into free space); the others were full fsyncs.
	Datasyncs uint64
	Rotations uint64
	// Checkpoints written, and checkpoints due but not written because the
	// signer failed (the records are durable either way; the next attempt
	// is at the next batch).
	Checkpoints        uint64
	CheckpointFailures uint64
	Refused            uint64   // Appends that returned ErrUnavailable
	Seq                uint64   // last written seq (0: none yet)
	Hash               [32]byte // its hash
	// Synced is the last seq known to be on disk: Seq with SyncEach; with
	// SyncWrite it trails Seq by at most SyncInterval.
	Synced uint64
}

// Unsynced is the number of records written and acknowledged but not yet
// known to be on disk (always 0 with SyncEach).
func (s Stats) Unsynced() uint64 { return s.Seq - s.Synced }

// Log is an open audit log. Its methods are safe for concurrent use.
type Log struct {
	path     string
	base     string   // the file name of path
	dir      *os.File // path's directory, opened and checked at Open
	opts     Options
	log      *slog.Logger
	lockFile *os.File // flock held while open

	keyMu  sync.RWMutex
	ctxKey [32]byte // the context key (see ContextDigest); zeroed at Close

	kick   chan struct{} // wakes the writer; capacity 1
	exited chan struct{} // closed when the writer returns

	mu     sync.Mutex
	queue  []*pending
	queued int // records in queue
	// committing: a batch is being written, by the writer or, when the log
	// was idle, by the appender itself (see wait). The fields below "Owned
	// by the committer" belong to whoever set it.
	committing bool
	awaited    bool // the writer waits for an inline commit to end
	closed     bool
	failing    bool
	retrying   bool // an Append was let through as the retry
	nextRetry  time.Time
	lastErr    error
	failedAt   time.Time
	outage     uint64 // Appends refused in the current outage
	stats      Stats
	closeErr   error

	report OpenReport

	// Owned by the committer (and Open before the writer starts).
	f         file
	dirty     bool  // f must be reopened and truncated to size before a write
	size      int64 // bytes of written records in f
	alloc     int64 // bytes of f: size, then free space (NULs) up to alloc
	metaDirty bool  // f's size changed since its last full fsync
	// preallocFailing: the last extension's zeros could not be written
	// (warned once per streak).
	preallocFailing bool
	unsynced        bool // SyncWrite: records written since the last fsync
	lastSync        time.Time
	syncedSeq       uint64 // the last seq known to be on disk
	first           uint64
	seq             uint64
	prev            [32]byte
	buf             []byte
	rotateNext      time.Time // after a failed rotation, when to try again
	// Checkpoints: records since the last one, when it was written, and
	// whether the next commit must write one even without records.
	sinceCheckpoint int
	lastCheckpoint  time.Time
	forceCheckpoint bool
	checkpointRetry time.Time // after a signer failure, no attempt before this

	checkpointFailing bool // under mu: the last checkpoint attempt failed (warned once per streak)

	fsyncs    atomic.Uint64
	datasyncs atomic.Uint64
}

// pending is one caller's records: one Append's, or all of one AppendAll's.
// They go out in the same batch, in order, and the caller is released once,
// after that batch's fsync.
type pending struct {
	recs []prepared
	one  [1]prepared // recs' storage for a single Append
	done chan error
}

// Open opens (or creates) the log at path and starts its writer. It
// continues the chain from the last record of path, or of the newest rotated
// file when path is missing or empty; a torn tail is handled as the package
// doc says. Of a large path it checks only the end (see the package doc);
// Verify checks all of it.
//
// The directory must exist, be owned by this process's user or root and not
// be writable by its group or others; every file of the log in it must be a
// regular file owned by this process's user. Open fails with ErrUnsafe
// otherwise, and never writes through a symlink. It also loads (or, the
// first time, creates) the directory's context key (see ContextDigest).
func Open(path string, opts Options) (*Log, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	l := &Log{
		path:   path,
		base:   filepath.Base(path),
		opts:   opts,
		log:    opts.Logger,
		kick:   make(chan struct{}, 1),
		exited: make(chan struct{}),
	}
	if l.dir, err = openDir(filepath.Dir(path)); err != nil {
		return nil, err
	}
	if err := l.lock(); err != nil {
		l.dir.Close()
		return nil, err
	}
	err = l.loadContextKey()
	if err == nil {
		err = l.recover()
	}
	if err == nil {
		err = l.reopen()
	}
	if err != nil {
		l.unlock()
		return nil, err
	}
	l.stats.Seq, l.stats.Hash, l.stats.Synced = l.seq, l.prev, l.syncedSeq
	l.lastCheckpoint = time.Now()
	l.log.Info("audit log open", "path", path, "seq", l.seq, "from", l.report.From)
	go l.run()
	return l, nil
}

// lock takes an exclusive flock on path+".lock" for the life of the Log:
// the log file itself is renamed by rotation, the lock file never is. Two
// daemons on one audit log would each continue the chain from the same
// record and fork it.
func (l *Log) lock() error {
	name := l.path + lockSuffix
	f, err := openAt(l.dir, filepath.Dir(l.path), l.base+lockSuffix, os.O_RDWR|os.O_CREATE, l.opts.FileMode)
	if err != nil {
		return fmt.Errorf("audit lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return fmt.Errorf("%s: %w", l.path, ErrInUse)
		}
		return fmt.Errorf("audit lock %s: %w", name, err)
	}
	l.lockFile = f
	return nil
}

// unlock releases the lock and the directory, and zeroes the context key.
func (l *Log) unlock() {
	if l.lockFile != nil {
		l.lockFile.Close()
		l.lockFile = nil
	}
	if l.dir != nil {
		l.dir.Close()
		l.dir = nil
	}
	l.keyMu.Lock()
	clear(l.ctxKey[:])
	l.keyMu.Unlock()
}

// OpenReport says where Open found the chain and what it did to the tail.
func (l *Log) OpenReport() OpenReport { return l.report }

// Append writes r and returns once it is durable, or with an error matching
// ErrUnavailable when it could not be (the caller must then refuse the
// operation), ErrInvalidRecord, or ctx's error. With ctx's error the record
// may still be written: there can be a record without a reply, never a
// reply after a nil Append without a record.
func (l *Log) Append(ctx context.Context, r Record) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p, err := prepare(r, time.Now())
	if err != nil {
		return err
	}
	pd := &pending{done: make(chan error, 1)}
	pd.one[0] = p
	pd.recs = pd.one[:]
	return l.wait(ctx, pd)
}

// AppendAll appends rs as Append does, queued together so that they share
// one write and fsync (the records of one batch call), whatever MaxBatch
// says. It returns nil once all are durable; on error none or all of rs
// may be durable, never a record out of order.
func (l *Log) AppendAll(ctx context.Context, rs []Record) error {
	if len(rs) == 1 {
		return l.Append(ctx, rs[0])
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	now := time.Now()
	pd := &pending{recs: make([]prepared, len(rs)), done: make(chan error, 1)}
	for i, r := range rs {
		p, err := prepare(r, now)
		if err != nil {
			return err
		}
		pd.recs[i] = p
	}
	return l.wait(ctx, pd)
}

// wait queues pd (unless the log refuses it) and waits for its batch.
func (l *Log) wait(ctx context.Context, pd *pending) error {
	n := len(pd.recs)
	l.mu.Lock()
	switch {
	case l.closed:
		l.mu.Unlock()
		return ErrClosed
	case l.failing && (l.retrying || time.Now().Before(l.nextRetry)):
		l.outage += uint64(n)
		l.stats.Refused += uint64(n)
		err := l.lastErr
		l.mu.Unlock()
		return fmt.Errorf("%w: failing since the last write: %v", ErrUnavailable, err)
	case l.failing:
		l.retrying = true
	case !l.committing && len(l.queue) == 0 && l.opts.MaxDelay == 0:
		// Idle: commit here rather than hand the record to the writer and
		// wait to be handed the result (two goroutine wake-ups, which cost
		// more than the write on an idle machine). Anyone arriving
		// meanwhile queues for the writer as usual.
		l.committing = true
		l.mu.Unlock()
		l.commitInline(pd)
		return <-pd.done
	}
	l.queue = append(l.queue, pd)
	l.queued += n
	l.mu.Unlock()
	select {
	case l.kick <- struct{}{}:
	default:
	}
	var timeout <-chan time.Time
	if l.opts.MaxWait > 0 {
		t := time.NewTimer(l.opts.MaxWait)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case err := <-pd.done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("audit: %d record(s) queued, not yet durable: %w", n, ctx.Err())
	case <-timeout:
		return fmt.Errorf("audit: %d record(s) queued %v, not yet durable: %w", n, l.opts.MaxWait, context.DeadlineExceeded)
	}
}

// Accepting reports whether an Append now could be written: the log is not
// failing, or a retry is due. Callers that must not act unrecorded ask
// before acting (a false answer costs nothing; a true one can still be
// followed by a failed Append).
func (l *Log) Accepting() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return !l.closed && (!l.failing || (!l.retrying && !time.Now().Before(l.nextRetry)))
}

// Status reports whether the log is failing, the error that made it fail
// (kept after recovery, nil if none yet) and how many records wait.
func (l *Log) Status() (failing bool, lastErr error, queue int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.failing, l.lastErr, l.queued
}

// SyncMode is the mode the log was opened with.
func (l *Log) SyncMode() SyncMode { return l.opts.Sync }

// Stats returns the counters.
func (l *Log) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.stats
	s.Fsyncs, s.Datasyncs = l.fsyncs.Load(), l.datasyncs.Load()
	return s
}

// Close writes what is queued, stops the writer and closes the file. Appends
// after Close fail with ErrClosed.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		<-l.exited
		return nil
	}
	l.closed = true
	l.mu.Unlock()
	select {
	case l.kick <- struct{}{}:
	default:
	}
	<-l.exited
	l.unlock()
	return l.closeErr
}

// run is the writer: take a batch, commit it, until closed and drained.
func (l *Log) run() {
	defer close(l.exited)
	for {
		batch, done := l.take()
		if done {
			if l.opts.Checkpoint != nil && l.sinceCheckpoint > 0 && !l.isFailing() {
				l.forceCheckpoint = true // anchor the tail at a clean stop
				l.commit(nil, false)
			}
			l.finish()
			return
		}
		l.commit(batch, false)
		l.mu.Lock()
		l.committing = false
		l.mu.Unlock()
	}
}

// finish leaves the file as a clean stop must: its free space cut, every
// record synced, closed.
func (l *Log) finish() {
	if l.f == nil {
		return
	}
	var err error
	synced := true
	switch {
	case !l.dirty && l.alloc > l.size:
		// A cleanly stopped PATH ends at its last record.
		err = l.trimFree()
	case l.unsynced:
		err = l.sync()
	default:
		synced = false
	}
	if err != nil {
		l.fail(nil, 0, err)
		l.closeErr = err
	} else if synced {
		l.markSynced()
	}
	if err := l.f.Close(); l.closeErr == nil {
		l.closeErr = err
	}
	l.f = nil
}

// commitInline commits pd alone on its appender's goroutine (committing is
// set), then wakes the writer if it has something to do: records queued
// meanwhile, a close, a checkpoint timer to start, or it was waiting for
// this commit to end, or SyncWrite's fsync timer to start.
func (l *Log) commitInline(pd *pending) {
	idle, synced := l.sinceCheckpoint == 0, !l.unsynced
	l.commit([]*pending{pd}, true)
	if l.opts.Sync == SyncWrite {
		// Records queued during that write: write them too rather than
		// wake the writer to do it (a commit here is a write(2), seldom an
		// fsync). Once: this caller's reply waits meanwhile.
		l.mu.Lock()
		var batch []*pending
		if l.queued > 0 && !l.closed {
			batch = l.dequeue()
		}
		l.mu.Unlock()
		if batch != nil {
			l.commit(batch, true)
		}
	}
	kick := l.opts.Checkpoint != nil && idle && l.sinceCheckpoint > 0 || synced && l.unsynced
	l.mu.Lock()
	l.committing = false
	kick = kick || l.awaited || l.queued > 0 || l.closed
	l.awaited = false
	l.mu.Unlock()
	if kick {
		select {
		case l.kick <- struct{}{}:
		default:
		}
	}
}

// take waits for records and returns the callers of up to MaxBatch of them
// (or of one AppendAll, however large), after the group-commit window if
// there is one; done once closed and drained.
func (l *Log) take() (batch []*pending, done bool) {
	var window *time.Timer
	for {
		l.mu.Lock()
		n, closed := l.queued, l.closed
		if l.committing { // an appender's inline commit; it kicks when done
			l.awaited = true
			l.mu.Unlock()
			<-l.kick
			continue
		}
		switch {
		case n == 0 && closed:
			l.mu.Unlock()
			return nil, true
		case n == 0:
			wait, ok := l.checkpointWait()
			if l.unsynced && !l.failing { // SyncWrite's fsync of written records
				if _, swait := l.syncDue(); !ok || swait < wait {
					wait = swait
				}
				ok = true
			}
			l.mu.Unlock()
			if ok {
				t := time.NewTimer(wait)
				select {
				case <-l.kick:
					t.Stop()
					continue
				case <-t.C:
					// Due unless an inline commit did it meanwhile.
					l.mu.Lock()
					if l.committing || l.queued > 0 {
						l.mu.Unlock()
						continue
					}
					if syncDue, _ := l.syncDue(); !syncDue && !l.checkpointDue(0) {
						l.mu.Unlock()
						continue
					}
					l.committing = true
					l.mu.Unlock()
					return nil, false
				}
			}
			<-l.kick
			continue
		}
		l.mu.Unlock()
		if l.opts.MaxDelay > 0 && n < l.opts.MaxBatch && !closed {
			if window == nil {
				window = time.NewTimer(l.opts.MaxDelay)
			}
			select {
			case <-l.kick:
				continue
			case <-window.C:
			}
		}
		if window != nil {
			window.Stop()
		}
		l.mu.Lock()
		if l.committing {
			l.mu.Unlock()
			continue
		}
		batch = l.dequeue()
		l.committing = true
		l.mu.Unlock()
		return batch, false
	}
}

// dequeue takes the callers of up to MaxBatch queued records (or of one
// AppendAll, however large) off the queue. l.mu is held.
func (l *Log) dequeue() []*pending {
	k, recs := 0, 0
	for k < len(l.queue) && (k == 0 || recs+len(l.queue[k].recs) <= l.opts.MaxBatch) {
		recs += len(l.queue[k].recs)
		k++
	}
	batch := make([]*pending, k)
	copy(batch, l.queue)
	rest := copy(l.queue, l.queue[k:])
	clear(l.queue[rest:])
	l.queue = l.queue[:rest]
	l.queued -= recs
	return batch
}

// commit writes a batch with one write and one fsync, then releases its
// callers; on failure it rolls back and fails them all. inline: on the
// appender's goroutine (see wait), not the writer's.
func (l *Log) commit(batch []*pending, inline bool) {
	records := 0
	for _, pd := range batch {
		records += len(pd.recs)
	}
	if l.refuseQueued(batch, records) {
		return
	}
	w, err := l.write(batch, records)
	if err != nil {
		l.fail(batch, records, err)
		return
	}
	l.committed(w, records, inline)
	release(batch, nil)
	if !inline {
		// The callers just released are queued on this P; the next batch's
		// fsync would keep it in a system call until sysmon hands it off
		// (tens to hundreds of microseconds when the other Ps are busy),
		// and the replies would wait for that. Let them run first: records
		// that arrive meanwhile join the next batch.
		runtime.Gosched()
	}
	if l.opts.MaxFileSize > 0 && l.size >= l.opts.MaxFileSize && !time.Now().Before(l.rotateNext) {
		l.rotate()
	}
}

// refuseQueued fails a batch queued before the log was known to fail,
// without a write, unless this batch is the one let through to retry.
func (l *Log) refuseQueued(batch []*pending, records int) bool {
	l.mu.Lock()
	if !l.failing || l.retrying {
		l.mu.Unlock()
		return false
	}
	err := l.lastErr
	l.outage += uint64(records)
	l.stats.Refused += uint64(records)
	l.mu.Unlock()
	release(batch, fmt.Errorf("%w: failing since the last write: %v", ErrUnavailable, err))
	return true
}

// written is what one commit's write left: the chain's new head, the bytes
// written and whether they end with a checkpoint.
type written struct {
	seq          uint64
	prev         [32]byte
	n            int
	checkpointed bool
}

// write appends the batch's records (and a checkpoint when one is due) to
// the file and fsyncs it as the sync mode says. The log's state is not
// advanced: committed does that once the batch is safe.
func (l *Log) write(batch []*pending, records int) (written, error) {
	if l.dirty || l.f == nil {
		if err := l.reopen(); err != nil {
			return written{}, err
		}
	}
	w := written{seq: l.seq, prev: l.prev}
	buf := l.buf[:0]
	for _, pd := range batch {
		for _, p := range pd.recs {
			w.seq++
			buf, w.prev = appendLine(buf, w.seq, w.prev, p)
		}
	}
	if l.checkpointDue(records) {
		if cp, ok := l.checkpoint(w.seq+1, w.prev); ok {
			w.seq++
			buf, w.prev = appendLine(buf, w.seq, w.prev, cp)
			w.checkpointed = true
		}
	}
	l.buf, w.n = buf, len(buf)
	// Nothing to write: a sync (SyncWrite's timer) or a checkpoint alone
	// that could not be signed.
	if len(buf) > 0 {
		l.extend(int64(len(buf)))
		if err := l.writeRecords(buf); err != nil {
			return w, err
		}
	}
	if len(buf) > 0 || l.unsynced {
		if l.opts.Sync == SyncEach || !time.Now().Before(l.lastSync.Add(l.opts.SyncInterval)) {
			return w, l.sync()
		}
		l.unsynced = true
	}
	return w, nil
}

// committed advances the log past a written batch of records and counts
// it; a log that was failing is writable again.
func (l *Log) committed(w written, records int, inline bool) {
	first := l.seq + 1
	l.size += int64(w.n)
	l.alloc = max(l.alloc, l.size)
	l.seq, l.prev = w.seq, w.prev
	if !l.unsynced {
		l.syncedSeq = w.seq
	}
	if l.first == 0 {
		l.first = first
	}
	l.forceCheckpoint = false
	if w.checkpointed {
		l.sinceCheckpoint, l.lastCheckpoint = 0, time.Now()
	} else {
		l.sinceCheckpoint += records
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if w.checkpointed {
		l.stats.Checkpoints++
		l.stats.Records++
	}
	l.stats.Records += uint64(records)
	if w.n > 0 {
		l.stats.Batches++
		if inline {
			l.stats.Inline++
		}
	}
	l.stats.Seq, l.stats.Hash, l.stats.Synced = w.seq, w.prev, l.syncedSeq
	if l.failing {
		l.failing, l.retrying = false, false
		l.log.Info("audit log writable again", "path", l.path, "down_for", time.Since(l.failedAt).String(),
			"appends_refused", l.outage, "seq", first)
		l.outage = 0
	}
}

// sync makes the file durable after a write: everything written so far is
// then on disk. Records written into free space need only their data
// synced (fdatasync: the file's blocks and size are already on disk);
// after the file grew, or without free space, it is a full fsync.
func (l *Log) sync() error {
	start := time.Now()
	var err error
	if l.metaDirty || !l.prealloc() {
		err = l.f.Sync()
	} else {
		err = datasync(l.f)
		l.datasyncs.Add(1)
	}
	l.fsyncs.Add(1)
	if l.opts.OnFsync != nil {
		l.opts.OnFsync(time.Since(start))
	}
	if err != nil {
		return withPath("fsync", l.path, err)
	}
	l.unsynced, l.lastSync, l.metaDirty = false, start, false
	return nil
}

// markSynced records, after a sync outside a commit, that every record
// written so far is on disk.
func (l *Log) markSynced() {
	l.syncedSeq = l.seq
	l.mu.Lock()
	l.stats.Synced = l.seq
	l.mu.Unlock()
}

// syncDue reports whether SyncWrite's fsync of written records is due, and
// if not, how long until it is. l.mu is held, and no commit is under way.
func (l *Log) syncDue() (bool, time.Duration) {
	if !l.unsynced || l.failing {
		return false, 0
	}
	wait := time.Until(l.lastSync.Add(l.opts.SyncInterval))
	return wait <= 0, max(wait, 0)
}

// fail rolls the file back to the last written record and enters (or stays
// in) the failing state. With SyncWrite, records written and acknowledged
// since the last fsync may not be on disk: fail names them.
func (l *Log) fail(batch []*pending, records int, err error) {
	l.dirty = true
	var unsyncedAcked string
	if l.syncedSeq < l.seq {
		unsyncedAcked = fmt.Sprintf("%d..%d", l.syncedSeq+1, l.seq)
	}
	if l.f != nil {
		// Best effort now, so that no half line sits in the file during the
		// outage; the retry does it again on a fresh descriptor before writing
		// (and cuts the free space).
		if l.f.Truncate(l.size) == nil && l.f.Sync() == nil {
			l.fsyncs.Add(1)
		}
	}
	l.mu.Lock()
	was := l.failing
	l.failing, l.retrying = true, false
	l.lastErr = err
	l.nextRetry = time.Now().Add(l.opts.RetryInterval)
	l.outage += uint64(records)
	l.stats.Refused += uint64(records)
	if !was {
		l.failedAt = time.Now()
		l.log.Error("audit log unwritable: refusing operations until it can be written",
			"path", l.path, "err", err.Error(), "records_refused", records, "seq", l.seq)
		if unsyncedAcked != "" {
			l.log.Error("audit records acknowledged before this failure were not yet fsynced and may be lost if the machine goes down",
				"path", l.path, "seqs", unsyncedAcked)
		}
	} else {
		l.log.Warn("audit log retry failed", "path", l.path, "err", err.Error())
	}
	l.mu.Unlock()
	release(batch, fmt.Errorf("%w: %v", ErrUnavailable, err))
}

func release(batch []*pending, err error) {
	for _, pd := range batch {
		pd.done <- err
	}
}

// reopen opens path for writing on a fresh descriptor (a failed fsync's
// error is reported once per descriptor), cuts anything after the durable
// records and makes that durable before anything is written.
func (l *Log) reopen() error {
	if l.f != nil {
		l.f.Close()
		l.f = nil
	}
	var st unix.Stat_t
	statErr := unix.Fstatat(int(l.dir.Fd()), l.base, &st, unix.AT_SYMLINK_NOFOLLOW)
	var f file
	var err error
	if l.opts.openFile != nil {
		f, err = l.opts.openFile(l.path, os.O_RDWR|os.O_CREATE, l.opts.FileMode)
	} else {
		f, err = openAt(l.dir, filepath.Dir(l.path), l.base, os.O_RDWR|os.O_CREATE, l.opts.FileMode)
	}
	if err != nil {
		return fmt.Errorf("open %s: %w", l.path, err)
	}
	if of, ok := f.(*os.File); ok {
		f = osFile{of}
	}
	fi, err := f.Stat()
	if err == nil {
		err = checkFile(l.path, fi)
	}
	if err == nil {
		switch size := fi.Size(); {
		case size < l.size:
			err = fmt.Errorf("%s is %d bytes, shorter than its %d bytes of records: %w", l.path, size, l.size, ErrCorrupt)
		case size > l.size:
			err = f.Truncate(l.size)
		}
	}
	if err == nil {
		err = f.Sync()
		l.fsyncs.Add(1)
	}
	if err == nil && errors.Is(statErr, unix.ENOENT) {
		err = l.syncDir()
	}
	if err != nil {
		f.Close()
		return err
	}
	if perm := fi.Mode().Perm(); perm&^l.opts.FileMode != 0 {
		l.log.Warn("audit file is more open than FileMode", "path", l.path, "mode", perm.String(), "want", l.opts.FileMode.String())
	}
	l.f, l.dirty, l.alloc, l.metaDirty = f, false, l.size, false
	l.unsynced, l.lastSync, l.syncedSeq = false, time.Now(), l.seq
	return nil
}

// rotate renames the full file to its rotated name and starts a new one. A
// failure is logged, not fatal: the records are durable, the file just
// grows until a later rotation works.
func (l *Log) rotate() {
	if l.alloc > l.size {
		// A rotated file ends at its last record: no free space.
		if err := l.trimFree(); err != nil {
			l.fail(nil, 0, err)
			return
		}
		l.markSynced()
	} else if l.unsynced {
		// A rotated file is complete on disk before it gets its final name.
		if err := l.sync(); err != nil {
			l.fail(nil, 0, err)
			return
		}
		l.markSynced()
	}
	name := RotatedName(l.path, l.first, l.seq)
	err := func() error {
		// Never onto an existing name (a symlink planted there included).
		if err := renameAt(l.dir, l.base, filepath.Base(name)); err != nil {
			return err
		}
		return l.syncDir()
	}()
	if err != nil {
		l.rotateNext = time.Now().Add(10 * l.opts.RetryInterval)
		l.log.Error("audit log rotation failed; writing on in the same file", "path", l.path, "err", err.Error())
		return
	}
	l.f.Close()
	l.f, l.size, l.alloc, l.first = nil, 0, 0, 0
	l.mu.Lock()
	l.stats.Rotations++
	l.mu.Unlock()
	l.log.Info("audit log rotated", "path", l.path, "to", name)
	if err := l.reopen(); err != nil {
		// The next batch retries, and fails closed if it still cannot.
		l.dirty = true
		l.log.Error("audit log: cannot start a new file after rotation", "path", l.path, "err", err.Error())
	}
}

// withPath names the file in err unless it already does.
func withPath(op, path string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return err
	}
	return &fs.PathError{Op: op, Path: path, Err: err}
}

// syncDir fsyncs the log's directory: a create, rename or removal in it is
// then durable.
func (l *Log) syncDir() error {
	if err := l.dir.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", filepath.Dir(l.path), err)
	}
	return nil
}
