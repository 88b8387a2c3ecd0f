package tpm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/keyward/keyward/keys"
)

// Grant records (keys.GrantStore) are files grants/ID.json in the state
// directory, 0600, MAC'd by the keyring key as key records are, under a
// label of their own (so a key record never verifies as a grant record nor
// the reverse) and over the id and generation (so one grant's file never
// passes as another's). They change as key records do: the file at the
// counter's value + 1, then manifest.json (which lists every grant's seq
// and SHA-256), then the NV counter. So a grant file put back from an older
// copy (a grant from before its revocation) is refused at start with
// ErrRollback; and Grants compares every file with what this process last
// wrote, so one edited or put back while the daemon runs is
// keys.ErrIntegrity at once. The manifest decides which grants exist: a
// file it does not list and no half-done change explains (a deleted
// grant's, put back, or left by a crash during its deletion) is removed at
// start.
const (
	labelGrant  = "keyward/v1/grant\x00"
	grantFormat = 1
)

var _ keys.GrantStore = (*TPM)(nil)

// grantFile is one grant's stored record. Everything but MAC is covered by
// the MAC.
type grantFile struct {
	Format int    `json:"format"`
	ID     string `json:"id"`
	Gen    uint64 `json:"gen"`
	Body   []byte `json:"body"`
	// Seq is the rollback counter's value at this record's change (0
	// without a counter), as in key records.
	Seq uint64 `json:"seq,omitempty"`
	MAC []byte `json:"mac,omitempty"`
	sum [32]byte
}

func grantPath(id string) string { return filepath.Join(grantsDir, id+".json") }

func (g *grantFile) macInput() ([]byte, error) {
	c := *g
	c.MAC = nil
	return labelledDigest(labelGrant, &c)
}

// decodeGrant parses a grant file strictly and checks its shape (the MAC
// is checked by the caller).
func decodeGrant(rel string, b []byte) (*grantFile, error) {
	var g grantFile
	if err := decodeStrict(rel, b, &g); err != nil {
		return nil, err
	}
	if g.Format != grantFormat || keys.ValidGrantID(g.ID) != nil || grantPath(g.ID) != rel || g.Gen == 0 ||
		len(g.Body) > keys.MaxGrantBody || len(g.MAC) == 0 {
		return nil, fmt.Errorf("%s: format, id, generation, size or MAC wrong: %w", rel, keys.ErrIntegrity)
	}
	g.sum = sha256.Sum256(b)
	return &g, nil
}

// loadGrants reads every grant file (at open); a state directory without
// grants/ (read-only, from before grant records) has none.
func (b *TPM) loadGrants() error {
	b.grants, b.grantLeft = map[string]*grantFile{}, map[string][32]byte{}
	files, err := b.st.jsonFiles(grantsDir)
	if err != nil {
		if _, serr := os.Lstat(filepath.Join(b.st.dir, grantsDir)); b.readOnly && errors.Is(serr, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	for _, f := range files {
		data, err := b.st.read(f)
		if err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		g, err := decodeGrant(f, data)
		if err != nil {
			return err
		}
		b.grants[g.ID] = g
	}
	return nil
}

func (b *TPM) verifyGrant(g *grantFile) error {
	return b.verifyMAC(g.macInput, g.MAC, fmt.Sprintf("record of grant %q", g.ID))
}

// checkGrants checks the grant files against the manifest (as checkRecords
// does key records) and returns the ids of those newer than it lists (a
// half-done change). Files of grants the manifest does not list, older
// than a half-done change, are dropped (see the top of this file).
func (b *TPM) checkGrants(mf *manifest, nv uint64) ([]string, error) {
	for id := range mf.Grants {
		if _, ok := b.grants[id]; !ok {
			return nil, fmt.Errorf("grant %s is in %s but its record is missing: %w", id, manifestFile, ErrRollback)
		}
	}
	var ahead []string
	for _, id := range sortedKeys(b.grants) {
		g := b.grants[id]
		e, listed := mf.Grants[id]
		if listed && e.SHA256 == fmt.Sprintf("%x", g.sum) {
			continue
		}
		if err := b.verifyGrant(g); err != nil {
			return nil, fmt.Errorf("%s: %w", grantPath(id), err)
		}
		switch {
		case listed && g.Seq < e.Seq:
			return nil, fmt.Errorf("the record of grant %s is from change %d, older than change %d that %s lists: it was rolled back (replaced by an older copy): %w", id, g.Seq, e.Seq, manifestFile, ErrRollback)
		case listed && g.Seq == e.Seq:
			return nil, fmt.Errorf("the record of grant %s is not the one %s lists for change %d (a copy of one that change replaced): %w", id, manifestFile, g.Seq, ErrRollback)
		case g.Seq > mf.Counter+1, g.Seq == mf.Counter+1 && mf.Counter != nv:
			return nil, fmt.Errorf("the record of grant %s is from change %d, which no half-done change explains (%s at %d, the TPM's counter at %d): %w", id, g.Seq, manifestFile, mf.Counter, nv, ErrRollback)
		case !listed && g.Seq <= mf.Counter:
			b.dropGrantFile(id)
			continue
		}
		ahead = append(ahead, "grant "+id)
	}
	return ahead, nil
}

// dropGrantFile forgets, and unless read-only removes, the file of a grant
// the manifest says does not exist.
func (b *TPM) dropGrantFile(id string) {
	delete(b.grants, id)
	if b.readOnly {
		return
	}
	b.log.Warn("tpm: removing the file of a grant that manifest.json does not list (deleted, and put back or left by a crash during its deletion)", "grant", id)
	if err := b.st.remove(grantPath(id)); err != nil {
		b.log.Warn("tpm: removing a deleted grant's file failed", "grant", id, "err", err)
	}
}

// grantLimit is keys.MaxGrants, unless a test lowered it.
func (b *TPM) grantLimit() int {
	if b.maxGrants > 0 {
		return b.maxGrants
	}
	return keys.MaxGrants
}

// PutGrant implements keys.GrantStore: it stores body as generation gen of
// grant id if the newest stored generation is gen-1, as a key change is
// stored (record, manifest, counter).
func (b *TPM) PutGrant(ctx context.Context, id string, gen uint64, body []byte) error {
	if err := keys.CheckGrantPut(id, gen, body); err != nil {
		return err
	}
	if err := b.writable(); err != nil {
		return err
	}
	ran := false
	return b.do(ctx, true, func(d *device) error {
		again := ran // run again after a reset: the write may have taken effect
		ran = true
		var have uint64
		if cur, ok := b.grants[id]; ok {
			have = cur.Gen
			if again && have == gen && bytes.Equal(cur.Body, body) {
				return nil
			}
		}
		if have != gen-1 {
			return fmt.Errorf("grant %s: generation %d stored, %d asked: %w", id, have, gen, keys.ErrGrantConflict)
		}
		if have == 0 && len(b.grants) >= b.grantLimit() {
			return fmt.Errorf("the state directory holds %d grant records, at most %d: %w", len(b.grants), b.grantLimit(), keys.ErrInvalidArgument)
		}
		g := &grantFile{Format: grantFormat, ID: id, Gen: gen, Body: bytes.Clone(body)}
		if g.Body == nil {
			g.Body = []byte{}
		}
		return b.storeGrant(d, g)
	})
}

// storeGrant writes g at the counter's value + 1 and advances the counter,
// as storeRecord does a key record.
func (b *TPM) storeGrant(d *device, g *grantFile) error {
	if err := b.settle(d); err != nil {
		return fmt.Errorf("finishing the previous change (rollback counter): %w", err)
	}
	err := b.writeGrant(g)
	if err == nil {
		err = b.counterFault("record")
	}
	if err != nil {
		b.supersedeGrant(d, g.ID)
		return err
	}
	b.grants[g.ID] = g
	delete(b.grantLeft, g.ID)
	b.advance(d, "grant", g.ID)
	return nil
}

// writeGrant stamps g with the next counter value (0 without a counter),
// MACs it and writes its file.
func (b *TPM) writeGrant(g *grantFile) error {
	sum, err := b.writeSealed(grantPath(g.ID), &g.Seq, &g.MAC, g.macInput, g)
	if err == nil {
		g.sum = sum
	}
	return err
}

// supersedeGrant follows a failed write of id's file, which may have
// landed anyway: the current record is written again (at the next counter
// value, so the failed attempt is not what the manifest lists), or for a
// new grant the file is removed. Best effort, as supersede.
func (b *TPM) supersedeGrant(d *device, id string) {
	cur, ok := b.grants[id]
	if !ok {
		if err := b.st.remove(grantPath(id)); err != nil {
			b.log.Warn("tpm: a failed write of a new grant's record could not be undone", "grant", id, "err", err)
		}
		return
	}
	c := *cur
	if err := b.writeGrant(&c); err != nil {
		if needsReset(err) {
			d.ready = false
		}
		b.log.Warn("tpm: a failed write of a grant record could not be superseded", "grant", id, "err", err)
		return
	}
	b.grants[id] = &c
	b.advance(d, "grant", id)
}

// advance finishes a change whose record is written and in use: the
// manifest, then the counter. A failure there leaves the change standing
// and is retried before the next change and by Health (see storeRecord).
func (b *TPM) advance(d *device, kind, name string) {
	if b.ctr.index == 0 {
		return
	}
	b.ctr.pending = true
	err := b.settle(d)
	b.unsettled.Store(!b.ctr.settled())
	if err != nil {
		if needsReset(err) {
			d.ready = false
		}
		b.log.Warn("tpm: "+kind+" changed, but advancing the rollback counter failed; until it is retried (before the next change, by the health check) an older copy of the record would go unnoticed", kind, name, "err", err)
	}
}

// DeleteGrant implements keys.GrantStore. The grant leaves the manifest
// (manifest, counter), then its file is removed: a crash in between leaves
// a file the next start removes. A file of id that no record in use
// explains (planted, or edited: Grants refuses it) is removed too.
func (b *TPM) DeleteGrant(ctx context.Context, id string) error {
	if err := keys.ValidGrantID(id); err != nil {
		return err
	}
	if err := b.writable(); err != nil {
		return err
	}
	return b.do(ctx, true, func(d *device) error {
		// First: a file left by an earlier delete goes only once the
		// manifest that still lists it has been written without it.
		if err := b.settle(d); err != nil {
			return fmt.Errorf("finishing the previous change (rollback counter): %w", err)
		}
		cur, ok := b.grants[id]
		if !ok {
			delete(b.grantLeft, id)
			return b.st.remove(grantPath(id))
		}
		delete(b.grants, id)
		b.grantLeft[id] = cur.sum
		b.advance(d, "grant", id)
		if !b.ctr.settled() {
			return nil // the file stays until the manifest no longer lists it
		}
		if err := b.st.remove(grantPath(id)); err != nil {
			b.log.Warn("tpm: a deleted grant's file could not be removed; the next start removes it", "grant", id, "err", err)
			return nil
		}
		delete(b.grantLeft, id)
		return nil
	})
}

// Grants implements keys.GrantStore: every grant, sorted by id, after
// checking that the grant files on disk are exactly those this process
// wrote or verified at start (same set, same SHA-256): a file edited,
// added or put back since is keys.ErrIntegrity for the whole call. A
// read-only backend (doctor beside the daemon) returns the grants as
// verified when it opened.
func (b *TPM) Grants(ctx context.Context) ([]keys.GrantRecord, error) {
	if err := b.lock(ctx); err != nil {
		return nil, err
	}
	defer b.unlock()
	if b.closed {
		return nil, fmt.Errorf("backend closed: %w", keys.ErrUnavailable)
	}
	if !b.readOnly {
		if err := b.checkGrantFiles(); err != nil {
			return nil, fmt.Errorf("grant records: %w", err)
		}
	}
	out := make([]keys.GrantRecord, 0, len(b.grants))
	for _, id := range sortedKeys(b.grants) {
		g := b.grants[id]
		out = append(out, keys.GrantRecord{ID: id, Gen: g.Gen, Body: bytes.Clone(g.Body)})
	}
	return out, nil
}

// checkGrantFiles compares grants/ with b.grants (holding the slot).
func (b *TPM) checkGrantFiles() error {
	files, err := b.st.jsonFiles(grantsDir)
	if err != nil {
		return err
	}
	seen := 0
	for _, f := range files {
		id := strings.TrimSuffix(filepath.Base(f), ".json")
		data, err := b.st.read(f)
		if err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		sum := sha256.Sum256(data)
		g, ok := b.grants[id]
		switch {
		case ok && g.sum == sum:
			seen++
		case ok:
			return fmt.Errorf("%s changed outside keyward (edited, or put back from an older copy): %w", f, keys.ErrIntegrity)
		case b.grantLeft[id] == sum:
			// a deleted grant's file whose removal waits
		default:
			return fmt.Errorf("%s is no grant this process wrote or verified (planted, or put back after its deletion): %w", f, keys.ErrIntegrity)
		}
	}
	if seen != len(b.grants) {
		return fmt.Errorf("%d of %d grant records are missing from %s: %w", len(b.grants)-seen, len(b.grants), grantsDir, keys.ErrIntegrity)
	}
	return nil
}
