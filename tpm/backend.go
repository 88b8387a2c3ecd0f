package tpm

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/keyward/keyward/internal/secretfile"
	"github.com/keyward/keyward/keys"
)

// Labels that separate the uses of TPM2_HMAC (each ends in a 0 byte).
const (
	labelWrap    = "keyward/v1/wrap\x00"
	labelMAC     = "keyward/v1/mac\x00"
	labelKeyring = "keyward/v1/keyring\x00"
	labelAuth    = "keyward/v1/tpm-auth\x00"
)

// MinAuthSecret is the shortest auth secret accepted. Key objects are NoDA
// (a crash cannot lock the daemon out), so the TPM does not slow down
// guessing: the secret itself must be unguessable.
const MinAuthSecret = 16

// Config opens a TPM backend.
type Config struct {
	// Device: "/dev/tpmrm0" (default), "swtpm:HOST:PORT", "swtpm+unix:PATH",
	// or "sim"/"sim:SEED" in builds with the tpmsim tag.
	Device string
	// StateDir holds the key blobs, the keyring records and the pinned
	// parent (created 0700 if missing).
	StateDir string
	// PINFile holds the auth secret (mode 0600/0400, at least MinAuthSecret
	// bytes). Empty means $CREDENTIALS_DIRECTORY/pin. Named as hsm.Config's
	// PINFile, the daemon's backend.pin_file and the CLI's --pin-file: one
	// name for "the secret that opens the device's keys" everywhere.
	PINFile string
	// Auth, when set, is used instead of PINFile (dev mode and tests); it is copied.
	Auth []byte
	// ParentHandle is a persistent storage key (0x81xxxxxx) to use as the
	// parent; 0 means the deterministic ECC storage primary under the owner
	// hierarchy, created at every start.
	ParentHandle uint32
	// ReadOnly opens without the state directory's lock and refuses every
	// change (keywardd doctor next to a running daemon). A state
	// directory that fails the rollback check still opens read-only: the
	// failure is in Doctor's report.
	ReadOnly bool
	// OwnerAuth, when set, is the owner hierarchy's authorisation, used only
	// to define the rollback counter (keywardd define-counter).
	OwnerAuth []byte
	// TrustCurrentState lets the first start with a counter take records
	// that a removed counter stamped (keywardd define-counter
	// --trust-current-state: an operator's decision).
	TrustCurrentState bool
	// NoRollbackCounter runs without the NV counter (see rollback.go): an
	// older copy of a record is then not detected. Only for TPMs on which
	// keyward cannot define one (owner authorisation set, NV full).
	NoRollbackCounter bool
	// MaxLoaded bounds cached key objects (default 2: with the parent that
	// fills the 3 transient slots of a TPM without a resource manager).
	MaxLoaded int
	Logger    *slog.Logger

	test openHooks // set only by tests (export_internal_test.go)
}

// openHooks let a test change how one backend opens.
type openHooks struct {
	// wireTap wraps every connection (to record the bytes that cross the
	// bus).
	wireTap func(Conn) Conn
	// noCounter opens without a rollback counter, as keyward did before it
	// had one.
	noCounter bool
	// closeWait replaces closeWait when set.
	closeWait time.Duration
}

// TPM is a keys.Backend on a TPM 2.0. Master keys are TPM objects
// (fixedTPM, fixedParent, sensitiveDataOrigin) whose encrypted blobs live in
// the state directory; only the TPM that made them can load them. Its data
// operations are the shared keys.Frontend over the TPM's primitives
// (keyops.go).
type TPM struct {
	keys.Frontend

	// slot serialises the device, the records and the store, taken in
	// turns between callers (fair.go). Waiting for it ends with the
	// caller's ctx (see lock).
	slot *fairLock
	// closeOnce releases the state directory once (Close, or Close cut
	// short by a hung command); stErr is its result.
	closeOnce sync.Once
	stErr     error
	closeWait time.Duration // how long Close waits for a command in flight
	// recMu guards the recs map for readers that do not hold the slot (key
	// listing, descriptions, public keys, verification: in memory, so they
	// never wait for the TPM). The map is written only while holding the
	// slot, so code holding the slot reads it without recMu. Records are
	// copy-on-write: a published one never changes.
	recMu    sync.RWMutex
	device   string
	dev      *device
	st       *store
	log      *slog.Logger
	readOnly bool
	recs     map[string]*record
	// grants are the grant records in use (grants.go), grantLeft the
	// SHA-256 of deleted grants' files whose removal waits for the
	// manifest. Both held with the slot.
	grants    map[string]*grantFile
	grantLeft map[string][32]byte
	ringKey   *blobPair
	// noCounter: no rollback counter (the in-process simulator, whose NV
	// does not outlive the process); ctr: the counter (held with the slot).
	noCounter  bool
	counterOff bool // noCounter by configuration
	trustState bool
	ownerAuth  []byte
	// rollbackErr: read-only, the rollback check failed (for Doctor).
	rollbackErr error
	// unsettled mirrors !ctr.settled() for Stats, which takes no slot.
	unsettled atomic.Bool
	ctr       counterState
	types     map[keys.Type]bool
	closed    bool

	// counterFaultHook, set only by tests, fails a step of a key change
	// ("record": after the record's rename; "manifest", "increment":
	// settle's) as a crash or an I/O error there would. Read with the slot.
	counterFaultHook func(step string) error
	// maxGrants, set only by tests, replaces keys.MaxGrants when positive.
	maxGrants int
}

var (
	_ keys.Backend = (*TPM)(nil)
)

// Open connects to the TPM, checks its capabilities, pins (first start) or
// checks the parent, and loads and verifies every keyring record.
func Open(ctx context.Context, cfg Config) (*TPM, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Device == "" {
		cfg.Device = "/dev/tpmrm0"
	}
	if cfg.MaxLoaded <= 0 {
		cfg.MaxLoaded = 2
	}
	if cfg.ParentHandle != 0 && cfg.ParentHandle>>24 != 0x81 {
		return nil, fmt.Errorf("parent handle 0x%08x is not a persistent handle (0x81xxxxxx): %w", cfg.ParentHandle, ErrConfig)
	}
	auth, err := objectAuth(cfg)
	if err != nil {
		return nil, err
	}
	st, err := openStore(cfg.StateDir, cfg.ReadOnly)
	if err != nil {
		clear(auth)
		return nil, err
	}
	b := &TPM{slot: newFairLock(), device: redactDevice(cfg.Device), st: st, log: log, readOnly: cfg.ReadOnly, recs: map[string]*record{},
		closeWait:  cmp.Or(cfg.test.closeWait, closeWait),
		noCounter:  cfg.Device == "sim" || strings.HasPrefix(cfg.Device, "sim:") || cfg.test.noCounter || cfg.NoRollbackCounter,
		counterOff: cfg.NoRollbackCounter, trustState: cfg.TrustCurrentState, ownerAuth: bytes.Clone(cfg.OwnerAuth)}
	b.Frontend = keys.NewFrontend((*tpmDevice)(b))
	b.dev = &device{
		dial: func() (Conn, error) {
			c, err := Dial(cfg.Device)
			if err == nil && cfg.test.wireTap != nil {
				c = cfg.test.wireTap(c)
			}
			return c, err
		},
		auth:      auth,
		persist:   tpm2.TPMHandle(cfg.ParentHandle),
		maxLoaded: cfg.MaxLoaded,
		log:       log,
	}
	err = b.open(ctx)
	for try := 1; err != nil && cfg.ReadOnly && errors.Is(err, ErrRollback) && try < 3; try++ {
		// keywardd may be changing a key while this reads the state
		// directory without its lock: records, manifest and counter can
		// be caught between two changes. Read again.
		time.Sleep(200 * time.Millisecond)
		b.recs = map[string]*record{}
		err = b.open(ctx)
	}
	if err != nil && cfg.ReadOnly && errors.Is(err, ErrRollback) {
		// Reported by Doctor, not refused: the point of reading is to look.
		b.ctr = counterState{status: "ROLLBACK: " + err.Error()}
		b.rollbackErr, err = err, nil
	}
	// Only the first start with a counter needs the owner's authorisation.
	clear(b.ownerAuth)
	b.ownerAuth = nil
	if err != nil {
		b.dev.close()
		clear(auth)
		st.close()
		return nil, err
	}
	b.unsettled.Store(!b.ctr.settled())
	log.Info("tpm backend open", "device", redactDevice(cfg.Device), "state_dir", cfg.StateDir, "keys", len(b.recs), "read_only", cfg.ReadOnly)
	return b, nil
}

// objectAuth derives the objects' 32-byte auth value from the secret:
// SHA-256(labelAuth || secret), re-hashed with a counter byte while it holds
// a zero byte. go-tpm v0.9.8 cuts an HMAC session's auth value at its first
// zero byte (it means to trim trailing zeros only; google/go-tpm#446), so a
// value with a zero byte anywhere would fail every session (1 secret in 8).
// The first round is kept as is, so state directories made with a zero-free
// value keep their auth.
func objectAuth(cfg Config) ([]byte, error) {
	secret := bytes.Clone(cfg.Auth)
	if secret == nil {
		path, err := secretfile.Resolve(cfg.PINFile, "pin")
		if err != nil {
			return nil, fmt.Errorf("tpm auth secret: %w", err)
		}
		if secret, err = secretfile.Read(path); err != nil {
			return nil, fmt.Errorf("tpm auth secret: %w", err)
		}
	}
	defer clear(secret)
	if len(secret) < MinAuthSecret {
		return nil, fmt.Errorf("tpm auth secret is %d bytes, at least %d needed (the key objects are NoDA: the secret itself must be unguessable): %w",
			len(secret), MinAuthSecret, ErrConfig)
	}
	return deriveAuth(secret), nil
}

func deriveAuth(secret []byte) []byte {
	for round := 0; ; round++ {
		h := sha256.New()
		h.Write([]byte(labelAuth))
		h.Write(secret)
		if round > 0 {
			h.Write([]byte{byte(round)})
		}
		v := h.Sum(nil)
		if bytes.IndexByte(v, 0) < 0 || round == 255 {
			return v // 256 rounds all with a zero byte: probability ~2^-780
		}
		clear(v)
	}
}

func (b *TPM) open(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	pinned, err := b.st.read(parentFile)
	first := errors.Is(err, fs.ErrNotExist)
	if err != nil && !first {
		return fmt.Errorf("pinned parent: %w", err)
	}
	files, err := b.st.recordFiles()
	if err != nil {
		return err
	}
	ring, rerr := b.st.read(keyringKeyDir)
	if first && (len(files) > 0 || rerr == nil) {
		return fmt.Errorf("state directory %s has keys but no pinned parent (%s): %w", b.st.dir, parentFile, keys.ErrIntegrity)
	}
	if first && b.readOnly {
		return fmt.Errorf("state directory %s is not initialised (no %s): %w", b.st.dir, parentFile, ErrConfig)
	}
	if !first {
		b.dev.pinned = pinned
	}
	if err := b.dev.reset(); err != nil {
		return classify(err)
	}
	if err := b.probe(); err != nil {
		return err
	}
	if first {
		// Pin the parent and make the keyring MAC key.
		if err := b.st.write(parentFile, b.dev.parentPubBytes); err != nil {
			return err
		}
		b.dev.pinned = bytes.Clone(b.dev.parentPubBytes)
		bp, err := b.dev.create(keyedHashTemplate())
		if err != nil {
			return classify(err)
		}
		data, err := json.Marshal(bp)
		if err != nil {
			return err
		}
		if err := b.st.write(keyringKeyDir, data); err != nil {
			return err
		}
		b.ringKey = bp
		b.log.Info("tpm state directory initialised: parent pinned, keyring key created", "state_dir", b.st.dir)
	} else {
		if rerr != nil {
			return fmt.Errorf("keyring key (%s): %v: %w", keyringKeyDir, rerr, keys.ErrIntegrity)
		}
		if b.ringKey, err = decodeRingKey(ring); err != nil {
			return err
		}
	}
	if err := b.dev.proveAuth(b.ringKey); err != nil {
		return err
	}
	for _, f := range files {
		data, err := b.st.read(f)
		if err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		rec, err := decodeRecord(f, data)
		if err != nil {
			return err
		}
		b.recs[rec.Name] = rec
	}
	if err := b.loadGrants(); err != nil {
		return err
	}
	// The records' MACs are checked there: one TPM2_HMAC per record, or
	// only the manifest's, which lists every record's SHA-256.
	return b.openCounter()
}

// verifyRecords checks the MAC of every key and grant record (start-up
// without a manifest to vouch for them).
func (b *TPM) verifyRecords() error {
	for _, name := range sortedKeys(b.recs) {
		if err := b.verifyRecord(b.recs[name]); err != nil {
			return fmt.Errorf("%s: %w", filepath.Join(keysDir, fileName(name)), err)
		}
	}
	for _, id := range sortedKeys(b.grants) {
		if err := b.verifyGrant(b.grants[id]); err != nil {
			return fmt.Errorf("%s: %w", grantPath(id), err)
		}
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// decodeRingKey parses keyring.key strictly and checks it is a keyring key.
func decodeRingKey(raw []byte) (*blobPair, error) {
	var bp blobPair
	if err := decodeStrict(keyringKeyDir, raw, &bp); err != nil || len(bp.Public) == 0 || len(bp.Private) == 0 {
		return nil, fmt.Errorf("keyring key (%s) is damaged: %w", keyringKeyDir, keys.ErrIntegrity)
	}
	if err := checkObject(&bp, keyedHashTemplate()); err != nil {
		return nil, fmt.Errorf("keyring key: %w", err)
	}
	return &bp, nil
}

// proveAuth checks that the auth value opens the keyring key: before
// anything else, a wrong secret is said as such.
func (d *device) proveAuth(ring *blobPair) error {
	if _, err := d.hmac(ring, []byte(labelKeyring)); err != nil {
		if errors.Is(err, tpm2.TPMRCAuthFail) || errors.Is(err, tpm2.TPMRCBadAuth) {
			return fmt.Errorf("the TPM refuses the auth secret for this state directory's keys: %w", ErrCredential)
		}
		return classify(err)
	}
	return nil
}

// probe checks that the TPM has what keyward needs, and which key types it
// can offer. A missing mandatory piece is a clear refusal at start.
func (b *TPM) probe() error {
	rsp, err := (tpm2.GetCapability{Capability: tpm2.TPMCapCommands, Property: tpmCCFirst, PropertyCount: 256}).Execute(b.dev.conn)
	if err != nil {
		return classify(fmt.Errorf("reading the TPM's command list: %w", err))
	}
	have := map[tpm2.TPMCC]bool{}
	cmds, err := rsp.CapabilityData.Data.Command()
	if err != nil {
		return fmt.Errorf("reading the TPM's command list: %w", err)
	}
	for _, a := range cmds.CommandAttributes {
		have[tpm2.TPMCC(a.CommandIndex)] = true
	}
	need := []struct {
		cc   tpm2.TPMCC
		name string
	}{
		{tpm2.TPMCCCreate, "TPM2_Create"}, {tpm2.TPMCCLoad, "TPM2_Load"}, {tpm2.TPMCCCreatePrimary, "TPM2_CreatePrimary"},
		{tpm2.TPMCCHMAC, "TPM2_HMAC"}, {tpm2.TPMCCSign, "TPM2_Sign"}, {tpm2.TPMCCStartAuthSession, "TPM2_StartAuthSession"},
		{tpm2.TPMCCFlushContext, "TPM2_FlushContext"}, {tpm2.TPMCCGetRandom, "TPM2_GetRandom"}, {tpm2.TPMCCReadPublic, "TPM2_ReadPublic"},
	}
	var missing []string
	for _, n := range need {
		if !have[n.cc] {
			missing = append(missing, n.name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("the TPM lacks commands keyward needs: %v: %w", missing, ErrCapability)
	}
	if !b.testParms(eccTemplate().Parameters, tpm2.TPMAlgECC) {
		return fmt.Errorf("the TPM does not support ECC P-256 (needed for the parent and sessions): %w", ErrCapability)
	}
	if !b.testParms(keyedHashTemplate().Parameters, tpm2.TPMAlgKeyedHash) {
		return fmt.Errorf("the TPM does not support HMAC-SHA256 keyed-hash objects: %w", ErrCapability)
	}
	b.types = map[keys.Type]bool{keys.AES256GCM: true, keys.HMACSHA256: true, keys.ECDSAP256: true}
	b.types[keys.RSA3072PSS] = b.testParms(rsaTemplate().Parameters, tpm2.TPMAlgRSA)
	return nil
}

func (b *TPM) testParms(p tpm2.TPMUPublicParms, alg tpm2.TPMAlgID) bool {
	_, err := (tpm2.TestParms{Parameters: tpm2.TPMTPublicParms{Type: alg, Parameters: p}}).Execute(b.dev.conn)
	return err == nil
}

// verifyRecord checks a record's MAC with the keyring key.
func (b *TPM) verifyRecord(r *record) error {
	return b.verifyMAC(r.macInput, r.MAC, fmt.Sprintf("record for key %q", r.Name))
}

// storeRecord MACs and writes a record, then makes it the current one and
// advances the rollback counter. A change left half done by an earlier
// failure is finished first. If this one's counter step fails, the change
// stands (its record is written and in use) and is reported done: an error
// would reach the caller only as "unavailable, retry", and a retried
// rotation or create would do more than asked. The step is retried before
// the next change, by Health (the watchdog's probe), and at start; until
// then a WARN line and keyward_tpm_rollback_counter_behind say that someone
// who can write the state directory could put the older record back.
func (b *TPM) storeRecord(d *device, r *record) error {
	if b.readOnly {
		return fmt.Errorf("tpm: %w", keys.ErrReadOnly)
	}
	if err := b.settle(d); err != nil {
		return fmt.Errorf("finishing the previous key change (rollback counter): %w", err)
	}
	err := b.writeRecord(r)
	if err == nil {
		err = b.counterFault("record") // as if the directory's fsync failed after the rename
	}
	if err != nil {
		b.supersede(d, r.Name)
		return err
	}
	b.recMu.Lock()
	b.recs[r.Name] = r
	b.recMu.Unlock()
	// A failure to advance is not retried here: do would run the whole
	// change again after a reset.
	b.advance(d, "key", r.Name)
	return nil
}

// writeRecord stamps r with the next counter value (0 without a counter),
// MACs it and writes its file.
func (b *TPM) writeRecord(r *record) error {
	sum, err := b.writeSealed(filepath.Join(keysDir, fileName(r.Name)), &r.Seq, &r.MAC, r.macInput, r)
	if err == nil {
		r.sum = sum
	}
	return err
}

// writeSealed stamps a state file with the next counter value (*seq; 0
// without a counter), MACs it by the keyring key (*mac, over macInput's
// bytes), writes v as its JSON to path and returns the SHA-256 of what
// was written.
func (b *TPM) writeSealed(path string, seq *uint64, mac *[]byte, macInput func() ([]byte, error), v any) ([32]byte, error) {
	*seq = 0
	if b.ctr.index != 0 {
		*seq = b.ctr.nv + 1
	}
	*mac = nil
	in, err := macInput()
	if err != nil {
		return [32]byte{}, err
	}
	if *mac, err = b.dev.hmac(b.ringKey, in); err != nil {
		return [32]byte{}, err
	}
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return [32]byte{}, err
	}
	data = append(data, '\n')
	if err := b.st.write(path, data); err != nil {
		return [32]byte{}, err
	}
	return sha256.Sum256(data), nil
}

// supersede follows a failed write of name's record: the file may have
// landed anyway (a rename whose directory fsync failed), and a copy of it,
// taken now, would pass at start as a newer change until the key changes
// again. So the current record is written again at the same counter value
// and made the one the manifest lists: the failed attempt then differs
// from what the manifest lists for that value, and is refused. Best effort:
// if the disk refuses this too, a warning says so. Not for a new key.
func (b *TPM) supersede(d *device, name string) {
	cur, ok := b.recs[name]
	if !ok || b.ctr.index == 0 {
		return
	}
	c := cur.clone()
	if err := b.writeRecord(c); err != nil {
		if needsReset(err) {
			d.ready = false
		}
		b.log.Warn("tpm: a failed write of a key record could not be superseded; had it reached the disk, a copy of it would pass as a newer change until the key changes again", "key", name, "err", err)
		return
	}
	b.recMu.Lock()
	b.recs[name] = c
	b.recMu.Unlock()
	b.ctr.pending = true
	if err := b.settle(d); err != nil {
		if needsReset(err) {
			d.ready = false
		}
		b.log.Warn("tpm: advancing the rollback counter failed; retried before the next change and by the health check", "key", name, "err", err)
	}
	b.unsettled.Store(!b.ctr.settled())
}

// do runs fn with the device ready, resetting it first when a previous call
// left it broken. If fn fails because the TPM lost its state, the device is
// reset and, for idempotent work, fn runs once more.
func (b *TPM) do(ctx context.Context, idempotent bool, fn func(d *device) error) error {
	if err := b.lock(ctx); err != nil {
		return err
	}
	defer b.unlock()
	if b.closed || b.dev.aborted.Load() {
		return fmt.Errorf("backend closed: %w", keys.ErrUnavailable)
	}
	d := b.dev
	if !d.ready {
		if time.Since(d.lastReset) < resetGap {
			return fmt.Errorf("TPM unavailable (reconnecting): %w", keys.ErrUnavailable)
		}
		if err := b.recover(); err != nil {
			return classify(err)
		}
	}
	err := fn(d)
	if err == nil || !needsReset(err) {
		return classify(err)
	}
	b.log.Warn("tpm lost its state, reconnecting", "err", err)
	d.ready = false
	if rerr := b.recover(); rerr != nil {
		return classify(rerr)
	}
	if !idempotent {
		return fmt.Errorf("TPM restarted during the operation: %w", keys.ErrUnavailable)
	}
	return classify(fn(d))
}

// lock takes the backend's slot in the caller's turn (keys.CallerOf), or
// gives up with ctx's error: a caller queued behind slow TPM commands (a
// real chip signs in tens to hundreds of milliseconds) stops waiting at its
// deadline instead of having its command run for nobody. A command under
// way is not interrupted: the TPM would be left mid-command and need a
// reset.
func (b *TPM) lock(ctx context.Context) error { return b.slot.lock(ctx, keys.CallerOf(ctx)) }

func (b *TPM) unlock() { b.slot.unlock() }

func (b *TPM) recover() error {
	if err := b.dev.reset(); err != nil {
		b.dev.recoveryFailures.Add(1)
		b.log.Warn("tpm reconnect failed", "err", err)
		return err
	}
	b.dev.recoveries.Add(1)
	b.log.Info("tpm reconnected", "resets", b.dev.resets)
	return nil
}

// Stats are the backend's counters, for metrics.
type Stats struct {
	Recoveries       uint64 // the TPM was usable again after a reconnect
	RecoveryFailures uint64 // reconnect attempts that failed
	// CounterBehind: the last key change's rollback counter step failed and
	// is not yet finished (retried before the next change and by Health).
	CounterBehind bool
	ObjectLoads   uint64 // TPM2_Load calls (misses of the loaded-object cache)
	ObjectsLoaded int    // key objects loaded now (at most Config.MaxLoaded)
}

// Stats returns the current counters without waiting for the TPM.
func (b *TPM) Stats() Stats {
	d := b.dev
	return Stats{Recoveries: d.recoveries.Load(), RecoveryFailures: d.recoveryFailures.Load(),
		ObjectLoads: d.loads.Load(), ObjectsLoaded: int(d.loadedNow.Load()), CounterBehind: b.unsettled.Load()}
}

// classify maps TPM and transport errors to the keys sentinels.
func classify(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, keys.ErrUnavailable), errors.Is(err, keys.ErrIntegrity):
		return err
	case needsReset(err), errors.Is(err, tpm2.TPMRCRetry), errors.Is(err, tpm2.TPMRCYielded), errors.Is(err, tpm2.TPMRCTesting):
		return fmt.Errorf("%w: %w", err, keys.ErrUnavailable)
	case errors.Is(err, ErrParentMismatch):
		return fmt.Errorf("%w: %w", err, keys.ErrIntegrity)
	case errors.Is(err, tpm2.TPMRCLockout):
		return fmt.Errorf("TPM in dictionary-attack lockout: %w: %w", err, keys.ErrUnavailable)
	}
	return err
}

// rec returns name's record (holding the slot or recMu).
func (b *TPM) rec(name string) (*record, error) {
	r, ok := b.recs[name]
	if !ok {
		return nil, fmt.Errorf("key %s: %w", name, keys.ErrKeyNotFound)
	}
	return r, nil
}

// Health runs a cheap command (reconnecting when needed), and finishes a
// key change whose rollback counter step failed.
func (b *TPM) Health(ctx context.Context) error {
	return b.do(ctx, true, func(d *device) error {
		_, err := (tpm2.GetCapability{Capability: tpm2.TPMCapTPMProperties, Property: uint32(tpm2.TPMPTManufacturer), PropertyCount: 1}).Execute(d.conn)
		if err == nil && !b.readOnly && !b.ctr.settled() {
			if serr := b.settle(d); serr != nil {
				b.log.Warn("tpm: advancing the rollback counter for the last key change failed again", "err", serr)
			} else {
				b.log.Info("tpm: rollback counter caught up with the last key change", "counter", b.ctr.nv)
			}
			b.unsettled.Store(!b.ctr.settled())
		}
		return err
	})
}

// Close flushes loaded objects and sessions, closes the connection and
// releases the state directory.
//
// A command that holds the TPM for closeWait (a hung TPM, or swtpm
// stopped) is not waited for: its connection is cut, nothing is flushed,
// and the state directory is released, so that a stop never hangs on it.
func (b *TPM) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), b.closeWait)
	defer cancel()
	if err := b.lock(ctx); err != nil {
		b.log.Error("tpm: a command has held the TPM for too long: closing without it (nothing flushed)", "waited", b.closeWait.String())
		b.dev.abort()
		b.closeOnce.Do(func() { b.stErr = b.st.close() })
		return fmt.Errorf("tpm: closed while a command held the TPM: %w", keys.ErrUnavailable)
	}
	defer b.unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	err := b.dev.close()
	clear(b.dev.auth)
	b.closeOnce.Do(func() { b.stErr = b.st.close() })
	if err == nil {
		err = b.stErr
	}
	return err
}

// closeWait bounds how long Close waits for a command in flight.
const closeWait = 10 * time.Second

// Resets reports how often the connection was re-established after the
// first start (tests and metrics).
func (b *TPM) Resets() uint64 {
	b.lock(context.Background())
	defer b.unlock()
	return b.dev.resets - 1
}

// ListKeys returns every key, sorted by name.
func (b *TPM) ListKeys(ctx context.Context) ([]keys.KeyInfo, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b.recMu.RLock()
	defer b.recMu.RUnlock()
	out := make([]keys.KeyInfo, 0, len(b.recs))
	for _, r := range b.recs {
		out = append(out, r.info())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// DescribeKey returns one key.
func (b *TPM) DescribeKey(ctx context.Context, name string) (keys.KeyInfo, error) {
	if err := keys.ValidateName(name); err != nil {
		return keys.KeyInfo{}, err
	}
	if err := ctx.Err(); err != nil {
		return keys.KeyInfo{}, err
	}
	b.recMu.RLock()
	defer b.recMu.RUnlock()
	r, err := b.rec(name)
	if err != nil {
		return keys.KeyInfo{}, err
	}
	return r.info(), nil
}

// tpmCCFirst is TPM_CC_FIRST, where the command list starts.
const tpmCCFirst = 0x0000011F

// HasSimulator reports whether this build includes the in-process TPM
// simulator (the tpmsim build tag): device "sim" works only then.
func HasSimulator() bool { return simDial != nil }
