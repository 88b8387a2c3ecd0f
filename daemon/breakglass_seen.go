package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/internal/atomicfile"
	"github.com/keyward/keyward/internal/safepath"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/policy"
)

// The break-glass high-water mark: the newest generation of every grant
// this daemon has seen, and the ids it knows, kept in memory and in a
// root-only file (config breakglass_state), so that an older copy of the
// device's grant records put back (a file-backed PKCS#11 token such as
// SoftHSM2 restored from a copy: it has no rollback counter) is refused
// like a record that fails its MAC: a revocation or denial is never
// undone, while the daemon runs nor across its restarts. A grant's id
// missing from a read is tampering too, unless this daemon removed it, it
// had ended longer ago than the retention (another daemon on a shared
// device pruned it), or it was never seen active (a request withdrawn
// before approval is removed at once; its absence allows nothing).
//
// A request withdrawn before it was active, whoever removed it (this
// daemon, or another on a shared device), is kept until its request
// expiry plus the longest max_duration and grantPruneSkew: a rollback
// could bring back a copy approved elsewhere before the request expired,
// and past that no table honours it whatever it says. Withdrawals count toward the
// requester's quota while their ids are kept (maxWithdrawnPerRequester),
// so that the file stays bounded.

// grantPruneSkew is how much earlier than grantRetention another daemon
// may prune an ended grant, by a clock ahead of ours.
const grantPruneSkew = time.Hour

// maxSeenFile bounds the high-water file read back. An entry takes under
// 200 bytes, and new requests stop once maxSeenEntries are kept
// (checkQuota), so the file stays well under it: a larger one is refused
// without being read, and with it break-glass alone (errSeenTooBig), never
// the daemon.
const maxSeenFile = 16 << 20

// maxSeenEntries is how many grant ids (known, removed, withdrawn) the
// file may remember before new requests stop: 50,000 entries of under 200
// bytes each fit maxSeenFile with room to spare.
const maxSeenEntries = 50_000

// errSeenTooBig: the high-water file is larger than maxSeenFile; no grant
// is honoured and no request stored until it is removed, while the rest
// of keywardd serves.
var errSeenTooBig = errors.New("break-glass high-water file too large")

// seenGrant is what the daemon last saw of one grant id.
type seenGrant struct {
	Gen uint64 `json:"gen"`
	// End is the earliest the grant may have ended: its end when seen
	// ended, else when it was last seen pending or active.
	End time.Time `json:"end"`
	// Pending: never seen active (no activation recorded), so its records
	// may go at once when it is withdrawn (revoked or denied before
	// approval).
	Pending bool `json:"pending,omitempty"`
	// ReqExpires is a pending grant's request expiry: withdrawn, its id
	// is kept until no table could honour an approval of it (request
	// expiry plus the longest max_duration, plus grantPruneSkew).
	ReqExpires time.Time `json:"req_expires,omitzero"`
	// UID and Host are a pending grant's requester: a withdrawal counts
	// towards their quota whichever daemon removed the request.
	UID  uint32 `json:"uid,omitempty"`
	Host string `json:"host,omitempty"`
}

// withdrawnID is a request withdrawn before it was active: its id is kept
// until Until, and counted toward its requester's quota (UID on Host),
// whoever removed it.
type withdrawnID struct {
	Until time.Time `json:"until"`
	UID   uint32    `json:"uid,omitempty"`
	Host  string    `json:"host,omitempty"`
}

// seenFile is the high-water file's content (version 1).
type seenFile struct {
	V      int                  `json:"v"`
	Grants map[string]seenGrant `json:"grants"`
	// Gone: ids whose records this daemon removed or saw pruned, and when;
	// forgotten after grantRetention (their records allow nothing then).
	Gone map[string]time.Time `json:"gone"`
	// Withdrawn: ids of requests withdrawn before they were active, kept
	// until their request expiry plus the longest max_duration and
	// grantPruneSkew.
	Withdrawn map[string]withdrawnID `json:"withdrawn,omitempty"`
}

// highWater is the high-water mark of one daemon. path "" keeps it in
// memory only.
type highWater struct {
	path string

	mu      sync.Mutex
	loaded  bool
	seen    seenFile
	unsaved bool // changed since the last successful save
	failed  bool // the last save failed

	saveMu sync.Mutex // one save at a time, so an older mark never lands last
}

func newHighWater(path string) *highWater {
	return &highWater{path: path, seen: seenFile{V: 1, Grants: map[string]seenGrant{}, Gone: map[string]time.Time{}, Withdrawn: map[string]withdrawnID{}}}
}

// snapshot returns a copy of the mark to check a read against: a read
// that starts after a change was stored sees at least that change. The
// first call loads the file (a missing file is an empty mark).
func (h *highWater) snapshot() (seenFile, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.loaded {
		if err := h.load(); err != nil {
			return seenFile{}, err
		}
		h.loaded = true
	}
	return seenFile{V: 1, Grants: maps.Clone(h.seen.Grants), Gone: maps.Clone(h.seen.Gone), Withdrawn: maps.Clone(h.seen.Withdrawn)}, nil
}

// check refuses a read (the newest records of all grants, decoded) that
// shows an older generation than snap saw, an id snap saw removed, or a
// known id missing that nobody may have pruned by now.
func (snap seenFile) check(view []*grant, now time.Time) error {
	in := make(map[string]bool, len(view))
	for _, g := range view {
		in[g.id] = true
		_, gone := snap.Gone[g.id]
		if _, w := snap.Withdrawn[g.id]; gone || w {
			return fmt.Errorf("grant %s is back after its records were removed (an older copy of the device's grant records restored?): %w", g.id, keys.ErrIntegrity)
		}
		if s, ok := snap.Grants[g.id]; ok && g.gen < s.Gen {
			return fmt.Errorf("grant %s: generation %d read, but this daemon saw generation %d (an older copy of the device's grant records restored?): %w",
				g.id, g.gen, s.Gen, keys.ErrIntegrity)
		}
	}
	for id, s := range snap.Grants {
		if !in[id] && !s.Pending && now.Sub(s.End) <= grantRetention-grantPruneSkew {
			return fmt.Errorf("grant %s (generation %d) is missing, and was not ended long enough to be removed (its records deleted, or an older copy of the device's grant records restored?): %w",
				id, s.Gen, keys.ErrIntegrity)
		}
	}
	return nil
}

// observed takes a read that passed check against a snapshot: newer
// generations are kept, ids missing from it are gone. It reports whether
// the persistent part changed.
func (h *highWater) observed(snap seenFile, view []*grant, now time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	changed := false
	in := make(map[string]bool, len(view))
	for _, g := range view {
		in[g.id] = true
		_, gone := h.seen.Gone[g.id]
		if _, w := h.seen.Withdrawn[g.id]; gone || w {
			continue // removed by this daemon while the read ran
		}
		changed = h.note(g, now) || changed
	}
	for id := range snap.Grants {
		if cur, ok := h.seen.Grants[id]; ok && !in[id] && cur.Gen <= snap.Grants[id].Gen {
			// Another daemon removed it: it may have been active in a
			// generation this one never saw, so it is kept until no
			// table could honour that (honours: request expiry plus
			// max_duration).
			h.forget(id, cur, withdrawnID{Until: cur.ReqExpires.Add(policy.MaxGrantDuration + grantPruneSkew), UID: cur.UID, Host: cur.Host}, now)
			changed = true
		}
	}
	return h.expireGone(now) || changed
}

// forget moves id, last seen as s, from the grants known to the ids gone:
// a request never seen active to the withdrawn ids, kept as w says. Caller
// holds mu.
func (h *highWater) forget(id string, s seenGrant, w withdrawnID, now time.Time) {
	delete(h.seen.Grants, id)
	if s.Pending && !s.ReqExpires.IsZero() {
		h.seen.Withdrawn[id] = w
		return
	}
	h.seen.Gone[id] = now
}

// expireGone forgets the removed ids kept long enough. Caller holds mu.
func (h *highWater) expireGone(now time.Time) bool {
	changed := false
	for id, at := range h.seen.Gone {
		if now.Sub(at) > grantRetention {
			delete(h.seen.Gone, id)
			changed = true
		}
	}
	for id, w := range h.seen.Withdrawn {
		if now.After(w.Until) {
			delete(h.seen.Withdrawn, id)
			changed = true
		}
	}
	return changed
}

// withdrawnBy counts the requests of uid on host withdrawn (by any daemon
// this one saw them on) whose ids are still kept, and all ids kept.
func (h *highWater) withdrawnBy(uid uint32, host string) (mine, all int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, w := range h.seen.Withdrawn {
		if w.UID == uid && w.Host == host {
			mine++
		}
	}
	return mine, len(h.seen.Withdrawn) + len(h.seen.Gone) + len(h.seen.Grants)
}

// note records that g was seen at now. Caller holds mu. It reports whether
// the generation or the ended state changed (a live grant's End moves on
// every read and is saved with the next change).
func (h *highWater) note(g *grant, now time.Time) bool {
	s := seenGrant{Gen: g.gen, End: now, Pending: g.Activated.IsZero()}
	if s.Pending {
		s.ReqExpires, s.UID, s.Host = g.RequestExpires, g.Requester, g.Host
	}
	if st := g.state(now); st != grantPending && st != grantActive {
		s.End = g.endedAt()
	}
	cur, ok := h.seen.Grants[g.id]
	if ok && cur.Gen > s.Gen {
		return false
	}
	h.seen.Grants[g.id] = s
	return !ok || cur.Gen != s.Gen || !cur.End.Equal(s.End) && s.End.Before(now)
}

// stored records this daemon's own change (g as stored); removed its own
// deletion of g's records.
func (h *highWater) stored(g *grant, now time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.note(g, now)
}

func (h *highWater) removed(g *grant, now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := seenGrant{Pending: g.Activated.IsZero() && (g.State == grantRevoked || g.State == grantDenied), ReqExpires: g.RequestExpires}
	// Kept as long as when another daemon removes it: a rollback could
	// bring back a copy approved elsewhere before the request expired,
	// which a table honours for up to max_duration after.
	h.forget(g.id, s, withdrawnID{Until: g.RequestExpires.Add(policy.MaxGrantDuration + grantPruneSkew), UID: g.Requester, Host: g.Host}, now)
}

// persist saves the mark when changed, or when an earlier save failed.
func (h *highWater) persist(changed bool) error {
	h.mu.Lock()
	h.unsaved = h.unsaved || changed
	need := h.unsaved
	h.mu.Unlock()
	if !need {
		return nil
	}
	return h.save()
}

// dirty reports whether the last save failed (a change is not saved).
func (h *highWater) dirty() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.failed
}

// load reads the file. Caller holds mu.
func (h *highWater) load() error {
	if h.path == "" {
		return nil
	}
	f, err := os.OpenFile(h.path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // first start: nothing seen yet
	}
	if err != nil {
		return fmt.Errorf("break-glass high-water file (config breakglass_state): %w: %w", err, config.ErrConfig)
	}
	defer f.Close()
	size, err := checkSeenFile(f)
	if err != nil {
		return err
	}
	if size > maxSeenFile {
		return fmt.Errorf("break-glass high-water file %s holds %d bytes, more than %d: no grant is honoured until it is removed (remove it only if you trust the device's grant records): %w",
			h.path, size, maxSeenFile, errSeenTooBig)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxSeenFile+1))
	if err != nil {
		return fmt.Errorf("break-glass high-water file %s: %w", h.path, err)
	}
	var s seenFile
	if len(b) > maxSeenFile || json.Unmarshal(b, &s) != nil || s.V != 1 || s.Grants == nil || s.Gone == nil {
		return fmt.Errorf("break-glass high-water file %s is not one keywardd wrote (remove it only if you trust the device's grant records): %w", h.path, keys.ErrIntegrity)
	}
	if s.Withdrawn == nil {
		s.Withdrawn = map[string]withdrawnID{}
	}
	h.seen = s
	return nil
}

// checkSeenFile refuses a high-water file that is not a regular file of
// this process's user, or that others may read or write, and returns its
// size.
func checkSeenFile(f *os.File) (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return 0, fmt.Errorf("break-glass high-water file: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Uid != uint32(os.Geteuid()) || st.Mode&0o077 != 0 {
		return 0, fmt.Errorf("break-glass high-water file %s (config breakglass_state): not a regular file of uid %d with mode 0600 (mode %o, uid %d): %w: %w",
			f.Name(), os.Geteuid(), st.Mode&0o7777, st.Uid, safepath.ErrUnsafe, config.ErrConfig)
	}
	return st.Size, nil
}

// save writes the mark atomically and durably (0600, a fresh file renamed
// over the old one, both fsynced), in a directory only keywardd's user
// and root may write, created 0700 if missing.
func (h *highWater) save() error {
	if h.path == "" {
		return nil
	}
	h.saveMu.Lock()
	defer h.saveMu.Unlock()
	h.mu.Lock()
	b, err := json.Marshal(h.seen)
	h.unsaved = false
	h.mu.Unlock()
	if err != nil {
		return err
	}
	err = h.write(b)
	h.mu.Lock()
	h.unsaved = h.unsaved || err != nil
	h.failed = err != nil
	h.mu.Unlock()
	return err
}

// write puts b in the file. A directory keywardd may not use, or a file
// it may not write, is a configuration error (keywardd exits 3 if it is
// so at start rather than being restarted into the same failure).
func (h *highWater) write(b []byte) error {
	dir := filepath.Dir(h.path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("break-glass high-water file (breakglass_state): %w: %w", err, config.ErrConfig)
	}
	if _, err := safepath.CheckDir(dir, uint32(os.Geteuid())); err != nil {
		return fmt.Errorf("break-glass high-water file (breakglass_state): %w: %w", err, config.ErrConfig)
	}
	err := atomicfile.Write(h.path, "."+filepath.Base(h.path)+".tmp-*", b)
	if errors.Is(err, fs.ErrPermission) {
		err = fmt.Errorf("%w: %w", err, config.ErrConfig)
	}
	return err
}
