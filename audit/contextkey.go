package audit

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/keyward/keyward/internal/secretfile"
)

// ContextKeyName is the file, in the log's directory, that holds the key of
// the context digests: 64 lower-case hex digits and a newline, mode 0600.
// Open creates it the first time; it is never written again. It is not part
// of the chain and must not travel with the log files: whoever holds it can
// test guesses of a context against the digests.
const ContextKeyName = "context.key"

// ContextHMACPrefix starts a context_digest that is an HMAC-SHA256 under the
// context key. A context_digest without it (64 hex digits alone) is a plain
// SHA-256, as records written before keyed digests hold; 64 zeros (either
// form) is a record without a context.
const ContextHMACPrefix = "hmac-sha256:"

// ContextDigest is the keyed digest of a request's context: HMAC-SHA256
// under key of canonical, the context's canonical encoding
// (envelope.CanonicalContext). Equal contexts give equal digests under one
// key, so records can be matched; without the key, a digest tells nothing
// about the values, however few they may be (a plain hash of a context of a
// few likely values can be reversed by trying them).
func ContextDigest(key, canonical []byte) [32]byte {
	m := hmac.New(sha256.New, key)
	m.Write(canonical)
	var out [32]byte
	m.Sum(out[:0])
	return out
}

// ContextDigest is the package's ContextDigest under the log's context key.
// A record carrying it sets ContextKeyed.
func (l *Log) ContextDigest(canonical []byte) [32]byte {
	l.keyMu.RLock()
	defer l.keyMu.RUnlock()
	return ContextDigest(l.ctxKey[:], canonical)
}

// ReadContextKey reads a context key file (DIR/context.key, or a copy of
// it) for computing digests outside the daemon. The file must be a regular
// file (not a symlink) that neither group nor others may read. The caller
// zeroes the key when done.
func ReadContextKey(path string) ([]byte, error) {
	text, err := secretfile.Read(path)
	if err != nil {
		return nil, fmt.Errorf("audit context key: %w", err)
	}
	defer secretfile.Zero(text)
	key := make([]byte, 32)
	if err := decodeHex(key, text); err != nil {
		return nil, fmt.Errorf("audit context key %s: not 64 lower-case hex digits: %w", path, ErrCorrupt)
	}
	return key, nil
}

// loadContextKey reads the directory's context key, or creates it: written
// to a temporary name, fsynced, then renamed to ContextKeyName unless
// another log of the directory did so first (then that key is read).
func (l *Log) loadContextKey() error {
	err := l.readContextKey()
	if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	var key [32]byte
	defer clear(key[:])
	if _, err := rand.Read(key[:]); err != nil {
		return fmt.Errorf("audit context key: %w", err)
	}
	var tmpName [8]byte
	rand.Read(tmpName[:])
	tmp := ".context.key.tmp-" + hex.EncodeToString(tmpName[:])
	f, err := l.openAt(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("audit context key: %w", err)
	}
	text := hex.AppendEncode(make([]byte, 0, 65), key[:])
	text = append(text, '\n')
	_, err = f.Write(text)
	clear(text)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = renameAt(l.dir, tmp, ContextKeyName)
	}
	if err != nil {
		removeAt(l.dir, tmp)
		if errors.Is(err, fs.ErrExist) {
			return l.readContextKey()
		}
		return fmt.Errorf("audit context key: %w", err)
	}
	if err := l.syncDir(); err != nil {
		return fmt.Errorf("audit context key: %w", err)
	}
	l.keyMu.Lock()
	l.ctxKey = key
	l.keyMu.Unlock()
	l.log.Info("audit context key created: keep it with the host, not with the shipped log files",
		"path", filepath.Join(filepath.Dir(l.path), ContextKeyName))
	return nil
}

// readContextKey reads ContextKeyName through the directory: a regular
// file owned by this process's user that neither group nor others may read.
func (l *Log) readContextKey() error {
	f, err := l.openAt(ContextKeyName, os.O_RDONLY, 0)
	if err != nil {
		return fmt.Errorf("audit context key: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("audit context key: %w", err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("audit context key %s has mode %04o: group or others may read it (want 0600): %w", f.Name(), perm, ErrUnsafe)
	}
	buf := make([]byte, 66)
	defer clear(buf)
	n, err := io.ReadFull(f, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("audit context key %s: %w", f.Name(), err)
	}
	text := bytes.TrimSuffix(buf[:n], []byte("\n"))
	var key [32]byte
	if err := decodeHex(key[:], text); err != nil {
		return fmt.Errorf("audit context key %s: not 64 lower-case hex digits and a newline: %w", f.Name(), ErrCorrupt)
	}
	l.keyMu.Lock()
	l.ctxKey = key
	l.keyMu.Unlock()
	clear(key[:])
	return nil
}
