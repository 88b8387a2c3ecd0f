package tpm

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"strconv"

	"github.com/google/go-tpm/tpm2"

	"github.com/keyward/keyward/internal/atomicfile"
	"github.com/keyward/keyward/keys"
)

// Rollback protection. A record's MAC proves keyward wrote it, not that it is
// the latest: an older copy of a record file (a disabled version enabled
// again, a destroyed one back) would still verify. So every key change also
// advances a monotonic counter inside the TPM (an NV counter index, which
// nothing can decrease, and which only the holder of the auth secret can
// increment), and manifest.json, MAC'd like the records, lists the counter
// value of the last change and, for every key, the counter value its current
// record was written at (the record's "seq", also under its MAC) and the
// SHA-256 of its file. At start the manifest must be at the TPM's counter
// value, and every record the one the manifest lists for its key: an older
// manifest or record is refused. A record the manifest lists needs no MAC
// check of its own, so start-up runs one TPM2_HMAC, not one per key.
//
// A change at counter value N+1 writes, in order: the record (seq N+1), the
// manifest (counter N+1), then increments the counter. A crash in between
// leaves a state start-up finishes: a record at N+1 the manifest does not
// have yet (the manifest is written and the counter incremented), or a
// manifest at N+1 with the counter at N (the counter is incremented). Only
// one change is ever half done, because the next one first finishes it. A
// record whose write failed may still have reached the disk (a rename
// whose directory fsync failed): it is newer than the manifest's, never
// older, and start-up takes it, as it takes a half-done change's.
const (
	manifestFile   = "manifest.json"
	manifestFormat = 1
	labelManifest  = "keyward/v1/manifest\x00"
	labelCounter   = "keyward/v1/counter\x00"
	// nvOwnerFirst and nvOwnerMask: the owner's range of NV indices,
	// 0x01000000..0x013FFFFF in the TCG handle registry.
	nvOwnerFirst = 0x01000000
	nvOwnerMask  = 0x003FFFFF
)

type manifest struct {
	Format  int                    `json:"format"`
	Index   string                 `json:"nv_index"` // "0x01xxxxxx", as tpm2-tools print it
	Counter uint64                 `json:"counter"`
	Keys    map[string]manifestKey `json:"keys"`
	// Grants are the grant records (grants.go), by id; omitted when there
	// are none, which keeps older manifests' MAC input unchanged.
	Grants map[string]manifestKey `json:"grants,omitempty"`
	MAC    []byte                 `json:"mac,omitempty"`
}

// manifestKey is a key's current record: its seq and its file's SHA-256.
type manifestKey struct {
	Seq    uint64 `json:"seq"`
	SHA256 string `json:"sha256"`
}

// macInput is a label and the SHA-256 of the manifest's JSON without its MAC
// (encoding/json writes map keys sorted, so the encoding is canonical).
func (m *manifest) macInput() ([]byte, error) {
	c := *m
	c.MAC = nil
	return labelledDigest(labelManifest, &c)
}

// counterIndex is the NV index of a state directory's counter, derived from
// its keyring key: each state directory on a TPM has its own, and a
// manifest removed from the state directory cannot be passed off as a state
// directory that never had one (its index still exists).
func counterIndex(ring *blobPair) tpm2.TPMHandle {
	h := sha256.Sum256(append([]byte(labelCounter), ring.Public...))
	return tpm2.TPMHandle(nvOwnerFirst | binary.BigEndian.Uint32(h[:4])&nvOwnerMask)
}

func hexHandle(h tpm2.TPMHandle) string { return fmt.Sprintf("0x%08x", uint32(h)) }

// counterAttrs are the index's attributes: a counter that only the auth
// value increments (owner authorisation does not), that the owner may read
// (tpm2_nvread -C o), outside dictionary-attack protection like the keys.
func counterAttrs() tpm2.TPMANV {
	return tpm2.TPMANV{NT: tpm2.TPMNTCounter, AuthWrite: true, AuthRead: true, OwnerRead: true, NoDA: true}
}

// nvPublic reads the index's public area and name; errNoIndex if undefined.
func (d *device) nvPublic(idx tpm2.TPMHandle) (*tpm2.TPMSNVPublic, tpm2.TPM2BName, error) {
	rsp, err := (tpm2.NVReadPublic{NVIndex: idx}).Execute(d.conn)
	if err != nil {
		if errors.Is(err, tpm2.TPMRCHandle) {
			return nil, tpm2.TPM2BName{}, errNoIndex
		}
		return nil, tpm2.TPM2BName{}, fmt.Errorf("TPM2_NV_ReadPublic %s: %w", hexHandle(idx), err)
	}
	pub, err := rsp.NVPublic.Contents()
	if err != nil {
		return nil, tpm2.TPM2BName{}, fmt.Errorf("TPM2_NV_ReadPublic %s: %w", hexHandle(idx), err)
	}
	return pub, rsp.NVName, nil
}

// checkCounterPublic refuses an index at our handle that is not a counter
// made by keyward (another program's index, or one redefined differently).
func checkCounterPublic(idx tpm2.TPMHandle, pub *tpm2.TPMSNVPublic) error {
	a := pub.Attributes
	a.Written = false
	if a != counterAttrs() || pub.NameAlg != tpm2.TPMAlgSHA256 || pub.DataSize != 8 || len(pub.AuthPolicy.Buffer) != 0 {
		return fmt.Errorf("NV index %s is not keyward's rollback counter (attributes %s): %w", hexHandle(idx), describeNV(pub), ErrRollback)
	}
	return nil
}

func describeNV(pub *tpm2.TPMSNVPublic) string {
	return fmt.Sprintf("type %d, nameAlg 0x%04x, size %d, policy %d bytes, bits 0x%08x",
		pub.Attributes.NT, uint16(pub.NameAlg), pub.DataSize, len(pub.AuthPolicy.Buffer), binary.BigEndian.Uint32(tpm2.Marshal(pub.Attributes)))
}

// nvDefineCounter defines the counter index under the owner hierarchy with
// its authorisation (nil: empty, as for the default parent). The index's
// auth value travels encrypted (the session encrypts the command's first
// parameter); the owner's is never sent (an HMAC session).
func (d *device) nvDefineCounter(idx tpm2.TPMHandle, ownerAuth []byte) error {
	d.dropOwnerSession()
	_, err := (tpm2.NVDefineSpace{
		AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner,
			Auth: tpm2.HMAC(tpm2.TPMAlgSHA256, 16, tpm2.Auth(ownerAuth), tpm2.Salted(d.parent, d.parentPub), tpm2.AESEncryption(128, tpm2.EncryptIn))},
		Auth: tpm2.TPM2BAuth{Buffer: d.auth},
		PublicInfo: tpm2.New2B(tpm2.TPMSNVPublic{NVIndex: idx, NameAlg: tpm2.TPMAlgSHA256,
			Attributes: counterAttrs(), DataSize: 8}),
	}).Execute(d.conn)
	if err != nil {
		return fmt.Errorf("TPM2_NV_DefineSpace %s: %w", hexHandle(idx), err)
	}
	return nil
}

// ownerAuthSet reports the TPM's TPMA_PERMANENT.ownerAuthSet.
func (d *device) ownerAuthSet() (bool, error) {
	rsp, err := (tpm2.GetCapability{Capability: tpm2.TPMCapTPMProperties, Property: uint32(tpm2.TPMPTPermanent), PropertyCount: 1}).Execute(d.conn)
	if err != nil {
		return false, fmt.Errorf("TPM2_GetCapability(TPM_PT_PERMANENT): %w", err)
	}
	props, err := rsp.CapabilityData.Data.TPMProperties()
	if err != nil || len(props.TPMProperty) == 0 || props.TPMProperty[0].Property != tpm2.TPMPTPermanent {
		return false, fmt.Errorf("TPM2_GetCapability(TPM_PT_PERMANENT): no answer (%v)", err)
	}
	return props.TPMProperty[0].Value&1 != 0, nil // bit 0: ownerAuthSet
}

// nvIndexAuth authorises a command on the index with its auth value, over a
// salted HMAC session (the value never crosses the bus).
func (d *device) nvIndexAuth(idx tpm2.TPMHandle, name tpm2.TPM2BName) tpm2.AuthHandle {
	return tpm2.AuthHandle{Handle: idx, Name: name,
		Auth: tpm2.HMAC(tpm2.TPMAlgSHA256, 16, tpm2.Auth(d.auth), tpm2.Salted(d.parent, d.parentPub))}
}

// nvIncrement adds one to the counter.
func (d *device) nvIncrement(idx tpm2.TPMHandle) error {
	_, name, err := d.nvPublic(idx)
	if err != nil {
		return err
	}
	if _, err := (tpm2.NVIncrement{AuthHandle: d.nvIndexAuth(idx, name), NVIndex: tpm2.NamedHandle{Handle: idx, Name: name}}).Execute(d.conn); err != nil {
		return fmt.Errorf("TPM2_NV_Increment %s: %w", hexHandle(idx), err)
	}
	return nil
}

// nvRead reads the counter (which must have been incremented once).
func (d *device) nvRead(idx tpm2.TPMHandle) (uint64, error) {
	_, name, err := d.nvPublic(idx)
	if err != nil {
		return 0, err
	}
	rsp, err := (tpm2.NVRead{AuthHandle: d.nvIndexAuth(idx, name), NVIndex: tpm2.NamedHandle{Handle: idx, Name: name}, Size: 8}).Execute(d.conn)
	if err != nil {
		return 0, fmt.Errorf("TPM2_NV_Read %s: %w", hexHandle(idx), err)
	}
	if len(rsp.Data.Buffer) != 8 {
		return 0, fmt.Errorf("TPM2_NV_Read %s returned %d bytes", hexHandle(idx), len(rsp.Data.Buffer))
	}
	return binary.BigEndian.Uint64(rsp.Data.Buffer), nil
}

// counterState is the backend's view of the counter. Settled: mf == nv and
// no record is at nv+1.
type counterState struct {
	index   tpm2.TPMHandle // 0: no counter (the in-process simulator)
	nv      uint64         // the TPM counter's value, as last read or incremented
	mf      uint64         // the counter value of manifest.json on disk
	pending bool           // a record at nv+1 may be newer than the manifest
	status  string         // how start-up found it, for Doctor
}

func (c *counterState) settled() bool { return c.index == 0 || c.mf == c.nv && !c.pending }

// openCounter checks the loaded records against the manifest and the TPM's
// counter, finishes a half-done change (unless read-only), and on the first
// start with this state directory defines the counter and writes the
// manifest for the records present. Holding the slot (called from open).
func (b *TPM) openCounter() error {
	if b.noCounter {
		b.ctr = counterState{status: "no rollback counter: the in-process simulator's NV does not outlive the process"}
		if b.counterOff {
			b.ctr.status = "rollback counter off (backend.rollback_counter = false): an older copy of a record is not detected"
			if _, err := b.st.read(manifestFile); err == nil {
				b.log.Warn("tpm rollback counter off: manifest.json is ignored, and goes stale with the next key change; an older copy of a record is not detected", "state_dir", b.st.dir)
			}
		}
		return b.verifyRecords()
	}
	d := b.dev
	idx := counterIndex(b.ringKey)
	b.ctr = counterState{index: idx}
	raw, merr := b.st.read(manifestFile)
	if merr != nil && !errors.Is(merr, fs.ErrNotExist) {
		return fmt.Errorf("%s: %w", manifestFile, merr)
	}
	pub, _, perr := d.nvPublic(idx)
	if perr != nil && !errors.Is(perr, errNoIndex) {
		return classify(perr)
	}
	if b.trustState {
		// The operator accepts the records as they are: whatever the
		// manifest says, start the history again from them.
		if err := b.verifyRecords(); err != nil {
			return err
		}
		if perr != nil {
			pub = nil
		}
		return b.initCounter(idx, pub)
	}
	if merr != nil {
		return b.noManifest(idx, pub, perr)
	}
	mf, nv, err := b.checkManifest(raw, idx, pub, perr)
	if err != nil {
		return err
	}
	b.ctr.nv, b.ctr.mf = nv, mf.Counter
	ahead, err := b.checkRecords(mf, nv)
	if err != nil {
		return err
	}
	aheadGrants, err := b.checkGrants(mf, nv)
	if err != nil {
		return err
	}
	ahead = append(ahead, aheadGrants...)
	b.ctr.pending = len(ahead) > 0
	switch {
	case b.ctr.settled():
		b.ctr.status = fmt.Sprintf("NV index %s at %d, %s at %d: consistent", hexHandle(idx), nv, manifestFile, mf.Counter)
		return nil
	case b.readOnly:
		b.ctr.status = fmt.Sprintf("NV index %s at %d, %s at %d: a key change is half done (keywardd finishes it at its next start)", hexHandle(idx), nv, manifestFile, mf.Counter)
		return nil
	}
	return b.finishHalfDone(idx, ahead)
}

// noManifest: a state directory without manifest.json, as at its first
// start with a counter.
func (b *TPM) noManifest(idx tpm2.TPMHandle, pub *tpm2.TPMSNVPublic, perr error) error {
	if perr == nil && pub.Attributes.Written {
		return fmt.Errorf("%s is missing, but this state directory's rollback counter (NV index %s) exists on the TPM: the state directory was tampered with or restored without it (or keywardd crashed during its very first start with a counter): %w",
			manifestFile, hexHandle(idx), ErrHistoryLost)
	}
	if err := b.verifyRecords(); err != nil {
		return err
	}
	if err := b.unstamped(idx); err != nil {
		return err
	}
	if b.readOnly {
		b.ctr.index = 0
		b.ctr.status = "no rollback counter yet (keywardd defines it at its next start)"
		return nil
	}
	return b.initCounter(idx, pub)
}

// checkManifest checks manifest.json's MAC and its counter value against
// the TPM's counter, and returns it with the counter's value.
func (b *TPM) checkManifest(raw []byte, idx tpm2.TPMHandle, pub *tpm2.TPMSNVPublic, perr error) (*manifest, uint64, error) {
	mf, err := decodeManifest(raw)
	if err != nil {
		return nil, 0, err
	}
	if err := b.verifyMAC(mf.macInput, mf.MAC, manifestFile); err != nil {
		return nil, 0, err
	}
	if mf.Index != hexHandle(idx) {
		return nil, 0, fmt.Errorf("%s names NV index %s, but this state directory's counter is %s: %w", manifestFile, mf.Index, hexHandle(idx), ErrRollback)
	}
	if perr != nil {
		return nil, 0, fmt.Errorf("the rollback counter (NV index %s) that %s relies on is gone from the TPM: the owner hierarchy was cleared or the index removed: %w",
			hexHandle(idx), manifestFile, ErrHistoryLost)
	}
	if err := checkCounterPublic(idx, pub); err != nil {
		return nil, 0, err
	}
	if !pub.Attributes.Written {
		return nil, 0, fmt.Errorf("the rollback counter (NV index %s) was never incremented but %s is at %d: the index was redefined: %w", hexHandle(idx), manifestFile, mf.Counter, ErrRollback)
	}
	nv, err := b.dev.nvRead(idx)
	if err != nil {
		if errors.Is(err, tpm2.TPMRCAuthFail) || errors.Is(err, tpm2.TPMRCBadAuth) {
			return nil, 0, fmt.Errorf("the rollback counter (NV index %s) refuses this state directory's auth: it was redefined by someone else: %w", hexHandle(idx), ErrRollback)
		}
		return nil, 0, classify(err)
	}
	switch {
	case mf.Counter < nv:
		return nil, 0, fmt.Errorf("%s is at change %d but the TPM's counter is at %d: the state directory was rolled back (restored from an older copy?): %w", manifestFile, mf.Counter, nv, ErrRollback)
	case mf.Counter > nv+1:
		return nil, 0, fmt.Errorf("%s is at change %d but the TPM's counter only at %d: %w", manifestFile, mf.Counter, nv, ErrRollback)
	}
	return mf, nv, nil
}

// checkRecords checks every record against the manifest and returns the
// keys whose records are newer than it lists (a half-done change).
func (b *TPM) checkRecords(mf *manifest, nv uint64) ([]string, error) {
	// Every key of the manifest has its record, as listed (the manifest's MAC
	// vouches for it), or one of a later change the manifest does not have
	// yet (its own MAC checked): an interrupted change's at mf.Counter+1,
	// whose counter step is missing, or a failed write's at an older value.
	for name := range mf.Keys {
		if _, ok := b.recs[name]; !ok {
			return nil, fmt.Errorf("key %s is in %s but its record is missing: %w", name, manifestFile, ErrRollback)
		}
	}
	var ahead []string
	for _, name := range sortedKeys(b.recs) {
		r := b.recs[name]
		e, listed := mf.Keys[name]
		if listed && e.SHA256 == hex.EncodeToString(r.sum[:]) {
			continue
		}
		if err := b.verifyRecord(r); err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Join(keysDir, fileName(name)), err)
		}
		switch {
		case listed && r.Seq < e.Seq:
			return nil, fmt.Errorf("the record of key %s is from change %d, older than change %d that %s lists: it was rolled back (replaced by an older copy): %w", name, r.Seq, e.Seq, manifestFile, ErrRollback)
		case listed && r.Seq == e.Seq:
			return nil, fmt.Errorf("the record of key %s is not the one %s lists for change %d (a copy of one that change replaced): %w", name, manifestFile, r.Seq, ErrRollback)
		case r.Seq > mf.Counter+1, r.Seq == mf.Counter+1 && mf.Counter != nv:
			return nil, fmt.Errorf("the record of key %s is from change %d, which no half-done change explains (%s at %d, the TPM's counter at %d): %w", name, r.Seq, manifestFile, mf.Counter, nv, ErrRollback)
		}
		ahead = append(ahead, name)
	}
	return ahead, nil
}

// finishHalfDone finishes a key change a crash interrupted: the records of
// ahead are newer than the manifest.
func (b *TPM) finishHalfDone(idx tpm2.TPMHandle, ahead []string) error {
	d := b.dev
	// The newer records were renamed into place, but their directory's
	// fsync may have failed: make them durable before a manifest names them.
	for _, sub := range []string{keysDir, grantsDir} {
		if err := atomicfile.SyncDir(filepath.Join(b.st.dir, sub)); err != nil {
			return err
		}
	}
	if b.ctr.pending && b.ctr.mf == b.ctr.nv+1 {
		// First the counter step of the change whose manifest is written,
		// then a manifest that lists the newer records too.
		b.ctr.pending = false
		if err := b.settle(d); err != nil {
			return fmt.Errorf("finishing a key change interrupted by a crash: %w", err)
		}
		b.ctr.pending = true
	}
	if err := b.settle(d); err != nil {
		return fmt.Errorf("finishing a key change interrupted by a crash: %w", err)
	}
	b.log.Warn("tpm: finished a key change interrupted by a crash", "counter", b.ctr.nv, "keys", ahead)
	b.ctr.status = fmt.Sprintf("NV index %s at %d, %s at %d: consistent (a half-done change was finished)", hexHandle(idx), b.ctr.nv, manifestFile, b.ctr.mf)
	return nil
}

// initCounter defines the counter (unless a crash left it defined and never
// incremented), increments it once (a counter is readable only then), and
// writes the first manifest at its value for the records present: those are
// trusted as they are, once.
func (b *TPM) initCounter(idx tpm2.TPMHandle, pub *tpm2.TPMSNVPublic) error {
	d := b.dev
	if !b.trustState {
		if err := b.unstamped(idx); err != nil {
			return err
		}
	}
	if pub == nil {
		// Not tried when the owner's authorisation is set and not given:
		// each try would be a failed authorisation, at every start.
		if set, err := d.ownerAuthSet(); err != nil {
			return classify(err)
		} else if set && len(b.ownerAuth) == 0 {
			return fmt.Errorf("NV index %s: the owner hierarchy's authorisation is set on this TPM: %w", hexHandle(idx), ErrOwnerAuth)
		}
		if err := d.nvDefineCounter(idx, b.ownerAuth); err != nil {
			if errors.Is(err, tpm2.TPMRCAuthFail) || errors.Is(err, tpm2.TPMRCBadAuth) {
				return fmt.Errorf("the TPM refuses the owner authorisation: %w", ErrCredential)
			}
			return classify(err)
		}
	} else if err := checkCounterPublic(idx, pub); err != nil {
		return err
	}
	if err := d.nvIncrement(idx); err != nil {
		return classify(err)
	}
	nv, err := d.nvRead(idx)
	if err != nil {
		return classify(err)
	}
	b.ctr.nv = nv
	if err := b.writeManifest(nv); err != nil {
		return err
	}
	b.ctr.mf = nv
	b.ctr.status = fmt.Sprintf("NV index %s at %d, %s at %d: consistent (defined at this start)", hexHandle(idx), nv, manifestFile, nv)
	if len(b.recs) > 0 {
		b.log.Warn("tpm rollback counter defined for an existing state directory: its records are trusted as they are now", "nv_index", hexHandle(idx), "keys", len(b.recs))
	} else {
		b.log.Info("tpm rollback counter defined", "nv_index", hexHandle(idx), "counter", nv)
	}
	return nil
}

// unstamped refuses records stamped by a counter when neither the manifest
// nor the counter is left: both were removed (with an empty owner
// authorisation, anyone who can open the TPM can remove an index), and
// starting afresh would take whatever older records were put back.
func (b *TPM) unstamped(idx tpm2.TPMHandle) error {
	var stamped uint64
	for _, r := range b.recs {
		stamped = max(stamped, r.Seq)
	}
	for _, g := range b.grants {
		stamped = max(stamped, g.Seq)
	}
	if stamped == 0 {
		return nil
	}
	return fmt.Errorf("records carry rollback counter values (up to %d) but neither %s nor the counter (NV index %s) is there: both were removed: %w",
		stamped, manifestFile, hexHandle(idx), ErrHistoryLost)
}

// settle finishes a half-done change: the manifest at nv+1 if a record is
// there, then the counter. After a failed increment the TPM may or may not
// have counted (a lost response), so it reads the counter before adding.
func (b *TPM) settle(d *device) error {
	c := &b.ctr
	if c.settled() {
		return nil
	}
	if c.mf == c.nv {
		if err := b.counterFault("manifest"); err != nil {
			return err
		}
		if err := b.writeManifest(c.nv + 1); err != nil {
			return err
		}
		c.mf = c.nv + 1
	}
	nv, err := d.nvRead(c.index)
	if errors.Is(err, errNoIndex) {
		// Removed while keywardd runs (the owner hierarchy cleared, or the
		// index undefined): retrying cannot help, as at start.
		return fmt.Errorf("the rollback counter (NV index %s) that %s relies on is gone from the TPM: the owner hierarchy was cleared or the index removed: %w",
			hexHandle(c.index), manifestFile, ErrHistoryLost)
	}
	if err != nil {
		return err
	}
	switch nv {
	case c.mf - 1:
		if err := b.counterFault("increment"); err != nil {
			return err
		}
		if err := d.nvIncrement(c.index); err != nil {
			return err
		}
	case c.mf:
	default:
		return fmt.Errorf("the TPM's counter is at %d, %s at %d: %w", nv, manifestFile, c.mf, ErrRollback)
	}
	c.nv, c.pending = c.mf, false
	return nil
}

// writeManifest MACs and writes the manifest at counter value n, listing
// every current record.
func (b *TPM) writeManifest(n uint64) error {
	m := &manifest{Format: manifestFormat, Index: hexHandle(b.ctr.index), Counter: n, Keys: make(map[string]manifestKey, len(b.recs))}
	for name, r := range b.recs {
		m.Keys[name] = manifestKey{Seq: r.Seq, SHA256: hex.EncodeToString(r.sum[:])}
	}
	if len(b.grants) > 0 {
		m.Grants = make(map[string]manifestKey, len(b.grants))
	}
	for id, g := range b.grants {
		m.Grants[id] = manifestKey{Seq: g.Seq, SHA256: hex.EncodeToString(g.sum[:])}
	}
	in, err := m.macInput()
	if err != nil {
		return err
	}
	if m.MAC, err = b.dev.hmac(b.ringKey, in); err != nil {
		return err
	}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return b.st.write(manifestFile, append(data, '\n'))
}

// verifyMAC checks a MAC made with the keyring key over input().
func (b *TPM) verifyMAC(input func() ([]byte, error), got []byte, what string) error {
	in, err := input()
	if err != nil {
		return err
	}
	mac, err := b.dev.hmac(b.ringKey, in)
	if err != nil {
		return classify(err)
	}
	if len(got) != len(mac) || !hmacEqual(mac, got) {
		return fmt.Errorf("%s fails its MAC (edited outside keyward, or from another state directory): %w", what, keys.ErrIntegrity)
	}
	return nil
}

// decodeManifest parses manifest.json strictly.
func decodeManifest(b []byte) (*manifest, error) {
	var m manifest
	if err := decodeStrict(manifestFile, b, &m); err != nil {
		return nil, err
	}
	if m.Format != manifestFormat {
		return nil, fmt.Errorf("%s: format %d, want %d: %w", manifestFile, m.Format, manifestFormat, keys.ErrIntegrity)
	}
	if _, err := strconv.ParseUint(m.Index, 0, 32); err != nil || len(m.Index) != 10 {
		return nil, fmt.Errorf("%s: nv_index %q: %w", manifestFile, m.Index, keys.ErrIntegrity)
	}
	for name, e := range m.Keys {
		if err := checkManifestEntry(m.Counter, e, keys.ValidateName(name)); err != nil {
			return nil, fmt.Errorf("%s: key %q: %w", manifestFile, name, err)
		}
	}
	for id, e := range m.Grants {
		if err := checkManifestEntry(m.Counter, e, keys.ValidGrantID(id)); err != nil {
			return nil, fmt.Errorf("%s: grant %q: %w", manifestFile, id, err)
		}
	}
	return &m, nil
}

// checkManifestEntry checks one entry of the manifest at counter (nameErr:
// its name's check).
func checkManifestEntry(counter uint64, e manifestKey, nameErr error) error {
	if nameErr != nil || e.Seq > counter {
		return fmt.Errorf("at change %d (manifest at %d): %w", e.Seq, counter, keys.ErrIntegrity)
	}
	if sum, err := hex.DecodeString(e.SHA256); err != nil || len(sum) != sha256.Size {
		return fmt.Errorf("sha256 %q: %w", e.SHA256, keys.ErrIntegrity)
	}
	return nil
}

// counterFault runs the test hook at a step of a key change.
func (b *TPM) counterFault(step string) error {
	if b.counterFaultHook == nil {
		return nil
	}
	return b.counterFaultHook(step)
}

// RollbackStatus says how Open found the rollback counter: the NV index,
// its value and the manifest's, or why there is none.
func (b *TPM) RollbackStatus() string {
	b.lock(context.Background())
	defer b.unlock()
	return b.ctr.status
}

// DefineCounter defines the rollback counter of a state directory keywardd
// has initialised (parent pinned, keyring key made), with the owner
// hierarchy's authorisation ownerAuth: for TPMs whose owner authorisation
// is set, where keywardd cannot define it and refuses to start. It proves
// the auth secret on the keyring key first (the index gets the value
// derived from it), writes nothing in the state directory and takes no
// lock; keywardd's next start takes the counter into use. It returns the
// index ("0x01xxxxxx"), with ErrCounterDefined if it existed already.
func DefineCounter(ctx context.Context, cfg Config, ownerAuth []byte) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if cfg.Device == "" {
		cfg.Device = "/dev/tpmrm0"
	}
	auth, err := objectAuth(cfg)
	if err != nil {
		return "", err
	}
	defer clear(auth)
	st, err := openStore(cfg.StateDir, true)
	if err != nil {
		return "", err
	}
	pinned, err := st.read(parentFile)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("state directory %s is not initialised (no %s): start keywardd once first (it stops at the counter): %w", cfg.StateDir, parentFile, ErrConfig)
	}
	if err != nil {
		return "", fmt.Errorf("pinned parent: %w", err)
	}
	raw, err := st.read(keyringKeyDir)
	if err != nil {
		return "", fmt.Errorf("keyring key (%s): %w", keyringKeyDir, err)
	}
	ring, err := decodeRingKey(raw)
	if err != nil {
		return "", err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &device{dial: func() (Conn, error) { return Dial(cfg.Device) }, auth: auth, persist: tpm2.TPMHandle(cfg.ParentHandle),
		maxLoaded: 1, log: log, pinned: pinned}
	defer d.close()
	if err := d.reset(); err != nil {
		return "", classify(err)
	}
	if err := d.proveAuth(ring); err != nil {
		return "", err
	}
	idx := counterIndex(ring)
	pub, _, err := d.nvPublic(idx)
	switch {
	case err == nil:
		if err := checkCounterPublic(idx, pub); err != nil {
			return "", err
		}
		return hexHandle(idx), ErrCounterDefined
	case !errors.Is(err, errNoIndex):
		return "", classify(err)
	}
	if err := d.nvDefineCounter(idx, ownerAuth); err != nil {
		if errors.Is(err, tpm2.TPMRCAuthFail) || errors.Is(err, tpm2.TPMRCBadAuth) {
			return "", fmt.Errorf("the TPM refuses the owner authorisation: %w", ErrCredential)
		}
		return "", classify(err)
	}
	return hexHandle(idx), nil
}
