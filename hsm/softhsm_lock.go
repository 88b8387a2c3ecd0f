package hsm

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// crossLock serialises keyward's key changes across the processes of this
// host that share one SoftHSM2 token (two daemons, or a daemon and the
// CLI's offline commands).
//
// SoftHSM2 re-reads a token directory only when the token's generation file
// changed since the process last saw it, and a process that creates or
// deletes an object writes that file as "what is on disk + 1", taking any
// other process's change in between as its own (Generation::commit). After
// that, the process does not see the other's new objects until a third
// change. keyward detects concurrent record writers by searching for
// records after writing its own; with that blind spot, two daemons rotating
// one key could each publish a record of the same generation with a
// different new version, each wrap under its own, and the blobs of the
// writer whose record later lost would no longer unwrap. Holding this lock
// across a key change keeps writers apart, so a search never has to see a
// concurrent writer's record.
//
// The lock file is <tokendir>/.keyward-<serial>.lock, beside the token
// directories (SoftHSM2 takes only subdirectories of tokendir for tokens).
type crossLock struct {
	f *os.File
}

// openCrossLock opens the lock file of the SoftHSM2 token with this serial,
// using the tokendir of $SOFTHSM2_CONF (default /etc/softhsm/softhsm2.conf).
func openCrossLock(serial string) (*crossLock, error) {
	conf := os.Getenv("SOFTHSM2_CONF")
	if conf == "" {
		conf = "/etc/softhsm/softhsm2.conf"
	}
	dir, err := softhsmTokenDir(conf)
	if err != nil {
		return nil, err
	}
	name := ".keyward-" + lockFileSafe(serial) + ".lock"
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("cross-process lock: %w", err)
	}
	return &crossLock{f: f}, nil
}

// softhsmTokenDir reads directories.tokendir from a softhsm2.conf.
func softhsmTokenDir(conf string) (string, error) {
	f, err := os.Open(conf)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		if ok && strings.TrimSpace(key) == "directories.tokendir" {
			if dir := strings.TrimSpace(value); dir != "" {
				return dir, nil
			}
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", fmt.Errorf("%s: no directories.tokendir", conf)
}

// lockFileSafe keeps the characters of a token serial that are safe in a
// file name.
func lockFileSafe(serial string) string {
	var b strings.Builder
	for _, r := range strings.TrimSpace(serial) {
		if r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r == '-' || r == '_' {
			b.WriteRune(r)
		}
	}
	if b.Len() == 0 {
		return "token"
	}
	return b.String()
}

// lock takes the lock, waiting for another process's key change to end,
// until ctx is done; the returned function releases it.
func (c *crossLock) lock(ctx context.Context) (func(), error) {
	if c == nil {
		return func() {}, nil
	}
	for {
		err := syscall.Flock(int(c.f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { syscall.Flock(int(c.f.Fd()), syscall.LOCK_UN) }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			return nil, fmt.Errorf("cross-process lock: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for another process's key change: %w", ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
}

func (c *crossLock) close() {
	if c != nil {
		c.f.Close()
	}
}
