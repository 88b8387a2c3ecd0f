// Package audit is keywardd's tamper-evident, durable audit log: one JSON
// record per line per operation, allowed or denied, each hash-chained to the
// one before it, fsynced before the daemon replies.
//
// Promises:
//   - Append returns nil only once the record is written and on disk. One
//     writer goroutine group-commits: it writes every queued record, syncs
//     once and releases all their callers. That sync is an fdatasync when
//     the records went into free space (below): the file's size and blocks
//     are already on disk, only the data is written, as a database's
//     write-ahead log does; a full fsync when the file grew (or without
//     free space, Options.NoPreallocate).
//   - Fail closed: when a write or fsync fails (disk full, I/O error) every
//     Append of that batch, and every Append after it until a retry succeeds,
//     returns an error matching ErrUnavailable. A failed batch leaves no byte
//     in the file: the file is truncated back to the end of the last durable
//     record (and fsynced) before anything else is written.
//   - The chain, and seq, continue across rotation and restart; a torn tail
//     found at Open is moved aside and reported, never silently dropped.
//   - A record holds who (kernel identity), what (operation, key, version),
//     a keyed digest of the context and the result code: never a context
//     value, a plaintext or any other secret.
//   - No file of the log is opened, created or renamed through a symlink:
//     Open checks the directory (owned by this user or root, not writable by
//     group or others) and works relative to it with O_NOFOLLOW, refusing a
//     file that is not regular or not this user's (ErrUnsafe).
//
// Threat model: the chain has no secret in it, so whoever can write the files
// can rewrite them entirely and re-chain; what it detects is a record changed,
// inserted, removed or reordered by anyone who did not also rewrite every
// record after it (and, across rotation, the later files). Keep the directory
// root-only and ship the files off the host (or add signed checkpoints) for
// more.
//
// # File format
//
// Each line is one record, a JSON object with exactly these keys, in this
// order, and a newline:
//
//	{"seq":1,"time":"2025-01-02T03:04:05.123456789Z","prev":"<64 hex>",
//	 "peer":{"uid":1000,"gid":1000,"pid":4242,"unit":"payments.service"},
//	 "op":"unwrap","key":"payments/db","version":3,"context_digest":"<64 hex>",
//	 "result":"OK","reason":"...","caller_ref":"...","grant":"...","duration_us":412,"request_id":"...","hash":"<64 hex>"}
//
// (on one line, no spaces). context_digest is "hmac-sha256:" and the
// HMAC-SHA256 of the canonical context under the directory's context key
// (the file context.key, see ContextDigest), or, in records written before
// keyed digests, 64 hex digits alone: a plain SHA-256; 64 zeros: no
// context. The chain hashes the field as it is written, so both verify.
// seq starts at 1 and increases by exactly 1 from
// one record to the next, across files. time is RFC 3339 with nanoseconds, in
// UTC ("Z"), trailing zeros of the fraction dropped. prev is the hash of the
// previous record, 64 zeros for seq 1. reason, caller_ref and grant are left out when empty. Hex is
// lower case. Strings are escaped as Go's encoding/json escapes them.
//
// The hash rule, all a verifier needs: for a line L (without its newline),
// which must end in `,"hash":"` + 64 hex digits + `"}`, the canonical record C
// is L with that suffix replaced by `}`; that is, the record encoded without
// its hash key. Then
//
//	hash = SHA-256(prev as 32 raw bytes || C)
//
// A trail starts at the genesis record, seq 1; Verify reports a trail that
// starts later as broken unless told the seq and prev it starts from
// (VerifyOptions.From), for older files removed on purpose. The log never
// removes a file itself.
//
// A verifier needs no JSON encoder: it cuts the suffix, hashes, and reads seq
// and prev from C. This package's verifier is stricter: C must also be
// exactly what this package would encode for the values it holds (no
// duplicate or unknown keys, no other spacing or number forms), so a hashed
// line has one meaning.
//
// # Free space
//
// The current file, PATH, may end with a run of NUL bytes after its last
// record: free space. When a batch does not fit in it, the log writes zero
// bytes after it (real writes, not fallocate: unwritten extents would
// change metadata again when written) up to the next 1 MiB boundary, or to
// MaxFileSize when that is nearer, and fsyncs the file in full once; the
// records of the next batches overwrite the zeros at the end of the last
// record, and each batch is made durable by an fdatasync. A record never
// holds a NUL byte (JSON escapes it), so the free space is told from the
// records by its first byte. When the zeros cannot be written (a disk with
// less than that free), they are cut and the batch is appended as without
// free space. Only SyncEach keeps free space: SyncWrite's fsync, once per
// SyncInterval, gains nothing from it.
//
// A batch over half of Open's window (512 KiB of records) is written and
// synced in pieces of whole lines no larger than that, so that the bytes
// not yet synced when the machine goes down, where blocks can be missing in
// any order, always lie within the window Open checks.
//
// Rules:
//   - At Open, the NULs that end PATH are free space, not a torn tail, and
//     are cut. What precedes them follows the torn-tail rules below; a
//     torn write into free space leaves a partial record and then NULs.
//   - A line that holds a NUL byte is damage; when the first damaged line
//     holds one, it is a batch written into free space whose blocks reached
//     the disk only in part, in any order, so the records after it are of
//     that same write, which no caller was told is durable: they are part
//     of the torn tail too (moved aside, not ErrCorrupt).
//   - A clean stop (Close) and rotation truncate PATH to its last record
//     and fsync it first: a rotated file, and PATH after a clean stop,
//     never end with NULs. A rotated file that holds a NUL is corrupt.
//   - After a failed write, the retry truncates PATH to its last durable
//     record (free space included) as before; the next batch extends it
//     again.
//   - Verify accepts free space at the end of the last file it is given
//     when that is not a rotated file's name, and only NULs there: a byte
//     that is not NUL after a NUL, or a NUL anywhere else, is a break.
//
// A reader that follows PATH while keywardd writes it must stop at the
// first NUL (and at a line without its newline): ReadLines does, and
// "keyward audit tail -f" follows the log with it across rotation. A
// plain "tail -f PATH" sees the free space.
//
// # Files
//
// The log is one file, PATH. After a batch leaves it at MaxFileSize or more
// it is renamed to PATH.<first seq>-<last seq>, both seqs as 20 zero-padded
// digits (so a shell glob lists the files in chain order), and a new PATH is
// started; its first record's prev is the last hash of the renamed file. The
// directory is fsynced after the rename and the create. Chain lists the files
// of a log in order.
//
// At Open, PATH is read and checked record by record, up to its free
// space. Bytes after the last good record that hold no complete record (a crash mid-write: no newline,
// or a damaged line) are a torn tail: they are moved to PATH.torn-<UTC time>,
// PATH is truncated to the last good record, and the move is logged at ERROR
// with the byte count and reported by (*Log).OpenReport. A last record that
// lacks only its newline is complete: it is kept and the newline added. If a
// complete, self-consistent record follows damaged bytes, this is no torn
// write (a torn write only ever damages the end of the last, unacknowledged
// batch) but corruption or tampering: Open fails with ErrCorrupt and leaves
// the file alone for a human ("keyward audit verify" names the record). When
// PATH is missing or empty, the chain continues from the newest rotated file
// (a crash between rename and create).
//
// Open checks only the end of a large PATH: it first finds where the free
// space starts, reading backwards from the end; when the bytes before it
// are over 1 MiB, Open reads its first record (whose seq names the file at rotation) and the
// records that start in its last 1 MiB, and applies the rules above to those
// (the whole file is read when that window holds no good record, e.g. a torn
// tail longer than it). A restart so costs the same however full the file is
// (checking a 64 MiB file whole takes over a second). The trade-off: damage
// before the window does not stop Open; the chain goes on from the last
// record. "keyward audit verify" (Verify), which checks every record of every
// file, is the full check and still reports such damage.
//
// # Failure and retry
//
// After a failed batch the log is failing: Appends fail fast with
// ErrUnavailable, without touching the disk, except that once every
// RetryInterval one Append is let through as the retry: the writer reopens
// PATH, truncates it to the last durable record, fsyncs, then writes that
// batch (and extends the file again). Its success ends the outage (logged at INFO with the number of
// Appends refused); a failure starts a new interval. Status reports the
// state and the last error for the daemon's status and logs.
package audit
