package tpm

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keyward/keyward/internal/atomicfile"
	"github.com/keyward/keyward/internal/safepath"
	"github.com/keyward/keyward/keys"
)

// State directory layout (all files 0600, the directory 0700):
//
//	lock            flock(2) target: one writing process per state directory
//	parent.pub      the pinned parent's public area (TPM2B_PUBLIC), written at first start
//	keyring.key     the keyring MAC key's blobs (JSON: public, private)
//	keys/NAME.json  one record per key (NAME = url.PathEscape(key name)), MAC'd
//	grants/ID.json  one break-glass grant record per id (keys.GrantStore), MAC'd (grants.go)
//	manifest.json   the rollback counter's value and each record's seq, MAC'd (rollback.go)
//
// Every write is temp file, fsync, rename, fsync of the directory, so a crash
// leaves either the old or the new file, never a torn one.
const (
	lockFile      = "lock"
	parentFile    = "parent.pub"
	keyringKeyDir = "keyring.key"
	keysDir       = "keys"
	grantsDir     = "grants"
	recordFormat  = 1
	// maxStateFile bounds what is read from the state directory (a record
	// holds at most a few hundred versions of a few hundred bytes each).
	maxStateFile = 16 << 20
)

// blobPair is a TPM object as stored: its public and private areas, each
// marshalled as the TPM returned them (TPM2B_PUBLIC, TPM2B_PRIVATE).
type blobPair struct {
	Public  []byte `json:"public"`
	Private []byte `json:"private"`
}

// record is one key's stored state. Everything but MAC is covered by the MAC.
type record struct {
	Format  int         `json:"format"`
	Name    string      `json:"name"`
	Type    keys.Type   `json:"type"`
	Created time.Time   `json:"created"`
	Min     uint32      `json:"min_decrypt_version,omitempty"`
	Vers    []recordVer `json:"versions"`
	// Period is the scheduled rotation's period in seconds (0: none);
	// omitted when 0, which keeps older records' MAC input unchanged.
	Period int64 `json:"rotation_period_s,omitempty"`
	// DisableAfter is the delay in seconds after which the scheduler
	// disables a superseded version (0: never); omitted when 0, which
	// keeps older records' MAC input unchanged.
	DisableAfter int64 `json:"disable_after_s,omitempty"`
	// Seq is the rollback counter's value at this record's change (see
	// rollback.go); 0 in records written before the counter existed, which
	// keeps their MAC input unchanged.
	Seq uint64 `json:"seq,omitempty"`
	MAC []byte `json:"mac,omitempty"`
	// sum is the SHA-256 of the record's file as read or written, which
	// manifest.json lists (not stored in the record).
	sum [32]byte
}

type recordVer struct {
	Version uint32     `json:"version"`
	State   keys.State `json:"state"`
	Created time.Time  `json:"created"`
	// Blob is empty once the version is destroyed.
	Blob *blobPair `json:"blob,omitempty"`
}

func (r *record) info() keys.KeyInfo {
	ki := keys.KeyInfo{Name: r.Name, Type: r.Type, Created: r.Created, MinDecryptVersion: r.Min,
		Versions: make([]keys.VersionInfo, len(r.Vers)), RotationPeriod: time.Duration(r.Period) * time.Second,
		DisableAfter: time.Duration(r.DisableAfter) * time.Second}
	for i, v := range r.Vers {
		ki.Versions[i] = keys.VersionInfo{Version: v.Version, State: v.State, Created: v.Created}
	}
	return ki
}

func (r *record) clone() *record {
	c := *r
	c.Vers = append([]recordVer(nil), r.Vers...)
	c.MAC = nil
	return &c
}

// macInput is what the keyring MAC key signs for a record: a label, then the
// SHA-256 of the record's JSON without its MAC (TPM2_HMAC takes at most
// 1024 bytes in one command; a digest keeps it to one command per record).
func (r *record) macInput() ([]byte, error) {
	c := *r
	c.MAC = nil
	return labelledDigest(labelKeyring, &c)
}

// labelledDigest is label || SHA-256(JSON of v): what the keyring key MACs
// (one TPM2_HMAC command of fixed size, however large v is).
func labelledDigest(label string, v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	d := sha256.Sum256(b)
	return append([]byte(label), d[:]...), nil
}

// check validates a decoded record's shape (the MAC is checked by the caller).
func (r *record) check(file string) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%s: %s: %w", file, fmt.Sprintf(format, args...), keys.ErrIntegrity)
	}
	if r.Format != recordFormat {
		return bad("format %d, want %d", r.Format, recordFormat)
	}
	if err := keys.ValidateName(r.Name); err != nil {
		return bad("%v", err)
	}
	if fileName(r.Name) != filepath.Base(file) {
		return bad("holds key %q, which belongs in another file", r.Name)
	}
	if !r.Type.Valid() {
		return bad("key type %q", r.Type)
	}
	if len(r.Vers) == 0 || len(r.Vers) > keys.MaxVersion {
		return bad("%d versions", len(r.Vers))
	}
	if _, err := keys.PeriodFromSeconds(r.Period); err != nil {
		return bad("rotation period %ds out of range", r.Period)
	}
	if _, err := keys.DisableAfterFromSeconds(r.DisableAfter); err != nil {
		return bad("disable-after %ds out of range", r.DisableAfter)
	}
	if int(r.Min) > len(r.Vers) {
		return bad("minimum decrypt version %d beyond %d versions", r.Min, len(r.Vers))
	}
	for i, v := range r.Vers {
		if v.Version != uint32(i+1) {
			return bad("version %d listed as %d", i+1, v.Version)
		}
		switch v.State {
		case keys.Enabled, keys.Disabled:
			if v.Blob == nil || len(v.Blob.Public) == 0 || len(v.Blob.Private) == 0 {
				return bad("v%d has no blob", v.Version)
			}
		case keys.Destroyed:
			if v.Blob != nil {
				return bad("destroyed v%d still has a blob", v.Version)
			}
		default:
			return bad("v%d state %q", v.Version, v.State)
		}
	}
	return nil
}

// fileName is the record file of a key: names are [a-z0-9._/-], so escaping
// turns only '/' into %2F and the mapping is one to one.
func fileName(name string) string { return url.PathEscape(name) + ".json" }

// maxFileName is NAME_MAX: a key whose fileName is longer cannot be stored.
const maxFileName = 255

// store is the state directory.
type store struct {
	dir  string
	lock *os.File // nil when opened read-only
}

// openStore creates the directory if needed, refuses one that is a
// symlink, that others can write, or, unless readOnly, that a user other
// than root and this process's owns or could move (internal/safepath), and
// takes the lock unless readOnly. Doctor's read-only look may be taken by
// root at the daemon's directory.
func openStore(dir string, readOnly bool) (*store, error) {
	if dir == "" {
		return nil, fmt.Errorf("state directory not set: %w", ErrConfig)
	}
	if !readOnly {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("state directory: %w", err)
		}
	}
	if err := checkStateDir(dir, readOnly); err != nil {
		return nil, err
	}
	if !readOnly {
		if _, err := safepath.CheckDir(dir, uint32(os.Geteuid())); err != nil {
			return nil, fmt.Errorf("state directory %s: %w: %w", dir, ErrConfig, err)
		}
	}
	for _, sub := range []string{keysDir, grantsDir} {
		path := filepath.Join(dir, sub)
		if !readOnly {
			if err := os.Mkdir(path, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return nil, fmt.Errorf("state directory: %w", err)
			}
		}
		if _, err := os.Lstat(path); sub == grantsDir && readOnly && errors.Is(err, fs.ErrNotExist) {
			continue // a state directory from before grant records: none to read
		}
		if err := checkStateDir(path, readOnly); err != nil {
			return nil, err
		}
	}
	s := &store{dir: dir}
	if readOnly {
		return s, nil
	}
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state directory lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("state directory %s is in use by another process: %w", dir, ErrLocked)
		}
		return nil, fmt.Errorf("state directory lock: %w", err)
	}
	s.lock = f
	s.removeTemps()
	return s, nil
}

// checkStateDir refuses d unless it is a directory itself (not a symlink),
// not writable by group or others, and, unless readOnly, owned by root or
// this process's user.
func checkStateDir(d string, readOnly bool) error {
	st, err := os.Lstat(d)
	if errors.Is(err, fs.ErrNotExist) && readOnly {
		return fmt.Errorf("state directory %s is not initialised (%v): %w", d, err, ErrConfig)
	}
	if err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	switch {
	case st.Mode()&fs.ModeSymlink != 0:
		return fmt.Errorf("state directory %s is a symlink: name the directory itself: %w", d, ErrConfig)
	case !st.IsDir():
		return fmt.Errorf("state directory %s is not a directory: %w", d, ErrConfig)
	case st.Mode().Perm()&0o022 != 0:
		return fmt.Errorf("state directory %s is writable by group or others (mode %o): %w", d, st.Mode().Perm(), ErrConfig)
	}
	if uid := st.Sys().(*syscall.Stat_t).Uid; !readOnly && uid != 0 && int(uid) != os.Geteuid() {
		return fmt.Errorf("state directory %s is owned by uid %d, neither root nor this process's uid %d: %w", d, uid, os.Geteuid(), ErrConfig)
	}
	return nil
}

// removeTemps deletes temporary files a crash left behind mid-write (the
// rename never happened, so they hold nothing the state depends on).
func (s *store) removeTemps() {
	for _, d := range []string{s.dir, filepath.Join(s.dir, keysDir), filepath.Join(s.dir, grantsDir)} {
		ents, err := os.ReadDir(d)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), ".tmp-") {
				os.Remove(filepath.Join(d, e.Name()))
			}
		}
	}
}

func (s *store) close() error {
	if s.lock == nil {
		return nil
	}
	err := s.lock.Close() // releases the flock
	s.lock = nil
	return err
}

// read reads a state file, bounded; a missing file is fs.ErrNotExist. A
// FIFO or a device in its place is refused without blocking (O_NONBLOCK):
// an open that waits for a writer would hang the start for ever, holding
// the state directory's lock and the TPM's only connection.
func (s *store) read(rel string) ([]byte, error) {
	f, err := os.OpenFile(filepath.Join(s.dir, rel), os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil {
		return nil, err
	} else if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file: %w", rel, keys.ErrIntegrity)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxStateFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxStateFile {
		return nil, fmt.Errorf("%s is over %d bytes: %w", rel, maxStateFile, keys.ErrIntegrity)
	}
	return b, nil
}

// write replaces rel atomically and durably, through a temporary file
// named .tmp-* (which the listings skip).
func (s *store) write(rel string, data []byte) error {
	if s.lock == nil {
		return fmt.Errorf("state directory: %w", keys.ErrReadOnly)
	}
	return atomicfile.Write(filepath.Join(s.dir, rel), ".tmp-*", data)
}

// recordFiles lists the record files (sorted), ignoring temp files left by a crash.
func (s *store) recordFiles() ([]string, error) { return s.jsonFiles(keysDir) }

// jsonFiles lists the .json files of subdirectory sub (sorted), ignoring
// temp files left by a crash.
func (s *store) jsonFiles(sub string) ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(s.dir, sub))
	if err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	var out []string
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, ".tmp-") || !strings.HasSuffix(n, ".json") {
			continue
		}
		out = append(out, filepath.Join(sub, n))
	}
	sort.Strings(out)
	return out, nil
}

// remove deletes a state file durably; a missing one is no error.
func (s *store) remove(rel string) error {
	if s.lock == nil {
		return fmt.Errorf("state directory: %w", keys.ErrReadOnly)
	}
	path := filepath.Join(s.dir, rel)
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", rel, err)
	}
	return atomicfile.SyncDir(filepath.Dir(path))
}

// decodeStrict decodes one JSON value of a state file into v: no unknown
// field, nothing after it; errors name the file and wrap ErrIntegrity.
func decodeStrict(rel string, b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%s: %v: %w", rel, err, keys.ErrIntegrity)
	}
	if dec.More() {
		return fmt.Errorf("%s: trailing data: %w", rel, keys.ErrIntegrity)
	}
	return nil
}

// decodeRecord parses a record file strictly.
func decodeRecord(rel string, b []byte) (*record, error) {
	var r record
	if err := decodeStrict(rel, b, &r); err != nil {
		return nil, err
	}
	if err := r.check(rel); err != nil {
		return nil, err
	}
	r.sum = sha256.Sum256(b)
	return &r, nil
}
