package hsm

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/keyward/keyward/internal/secretfile"
	"github.com/keyward/keyward/keys"
)

// Config selects a module, a token and the PIN source.
type Config struct {
	// Module is the path of the PKCS#11 shared library.
	Module string
	// TokenLabel selects the token by label; URI may be used instead.
	TokenLabel string
	// URI is an RFC 7512 URI selecting the token (pkcs11:token=keyward).
	URI string
	// PINFile holds the user PIN (mode 0600 or 0400). Empty means
	// $CREDENTIALS_DIRECTORY/pin (a systemd credential).
	PINFile string
	// Sessions bounds the session pool, which grows with demand and closes
	// idle sessions (sessions.go). 0 means the token's ulMaxSessionCount, at
	// most 256.
	Sessions int
	// MetadataMaxAge is how long data operations use a verified key record
	// before reading it from the token again. 0 means DefaultMetadataMaxAge;
	// a negative value reads it on every operation. Changes made through this
	// Token apply to it at once; changes made by another process on the same
	// token (a second daemon, the CLI) apply here within this time. Reading
	// the record costs one C_GetAttributeValue, which on SoftHSM2 is more than
	// the cryptographic operation itself (see docs/performance.md).
	MetadataMaxAge time.Duration
	// Logger receives operational events; never secrets. nil discards.
	Logger *slog.Logger
	// ReadOnly opens read-only sessions and changes nothing in the token
	// (not even the metadata key a first start creates): for inspection
	// (the doctor). Lifecycle operations fail with keys.ErrUnsupported.
	ReadOnly bool
}

// Validate reports a missing or contradictory setting.
func (c *Config) Validate() error {
	if c.Module == "" {
		return fmt.Errorf("module path is empty: %w", ErrConfig)
	}
	if (c.TokenLabel == "") == (c.URI == "") {
		return fmt.Errorf("set exactly one of token label and uri: %w", ErrConfig)
	}
	if c.URI != "" {
		if _, err := ParseURI(c.URI); err != nil {
			return err
		}
	}
	if c.Sessions < 0 || c.Sessions > 1024 {
		return fmt.Errorf("sessions = %d, want 0..1024: %w", c.Sessions, ErrConfig)
	}
	if c.MetadataMaxAge > time.Hour {
		return fmt.Errorf("metadata max age %v is over an hour: %w", c.MetadataMaxAge, ErrConfig)
	}
	return nil
}

// Token is a keys.Backend on one PKCS#11 token. Its data operations are
// the shared keys.Frontend over the token's primitives (data.go).
type Token struct {
	keys.Frontend

	cfg Config
	sel URI
	log *slog.Logger
	pin []byte
	mod *module
	age time.Duration // effective MetadataMaxAge; 0: read every time

	state     atomic.Pointer[tokenState] // valid while state.modGen == mod.gen
	refreshMu sync.Mutex                 // one refresh at a time
	lastTry   time.Time                  // last failed refresh (guarded by refreshMu)
	lastErr   error                      // (guarded by refreshMu)
	failedGen uint64                     // module generation of the last failed refresh

	pubs sync.Map // objRef.key() -> crypto.PublicKey; an object's public key never changes

	adminMu sync.Mutex // serialises admin operations in this process
	cross   *crossLock // and across processes, on SoftHSM2 (nil: not needed or not available)
	cacheMu sync.Mutex
	cache   map[string]*cachedMeta
	// claimsSeen: when this Token first saw another writer's claim (by the
	// claim's SHA-256), guarded by cacheMu; claimNonce names its own claims.
	claimsSeen map[[32]byte]time.Time
	claimNonce string

	closed    atomic.Bool
	stopSweep chan struct{} // closed by Close: ends sweeper

	recoveries, recoveryFailures atomic.Uint64

	test testHooks // set only by tests (export_test.go), before they use the Token
}

// testHooks let a test fail or pause this Token's record publications and
// move its claim clock, without touching other Tokens.
type testHooks struct {
	// publishFault fails storeMeta after the record's create took effect,
	// as a lost response would.
	publishFault func() error
	// claimHook runs at the moments another writer or a reader could act:
	// "claimed" (the claim made, not yet checked) and "checked" (the check
	// passed, the record not yet made).
	claimHook func(stage, name string)
	// now replaces time.Now for the claim rules.
	now func() time.Time
	// grantLimit, when positive, replaces keys.MaxGrants.
	grantLimit int
}

// Stats are counters for metrics: re-initialisations after faults and the
// session pool's state. No secrets.
type Stats struct {
	Recoveries       uint64 // the token was usable again after a module re-initialisation
	RecoveryFailures uint64 // attempts that found the token unusable
	SessionsOpen     int    // sessions open in the current pool
	SessionsIdle     int    // of which idle
	SessionsMax      int
	// OnWorkers: the module's operations run on worker threads now (its
	// calls wait long, as a network HSM's do; offload.go); Offloaded
	// counts those operations since the module was last initialised.
	OnWorkers bool
	Offloaded uint64
	// WorkersBatch and WorkersOther count the worker threads started (in
	// this process, for any token) under SCHED_BATCH, and under the
	// default policy because the system refused SCHED_BATCH (offload.c).
	WorkersBatch, WorkersOther int
}

// Stats returns the current counters.
func (t *Token) Stats() Stats {
	s := Stats{Recoveries: t.recoveries.Load(), RecoveryFailures: t.recoveryFailures.Load()}
	s.WorkersBatch, s.WorkersOther = workerThreads()
	if st := t.state.Load(); st != nil {
		st.openMu.Lock()
		s.SessionsOpen, s.SessionsMax = st.open, st.size
		st.openMu.Unlock()
		s.SessionsIdle = len(st.pool)
		if st.fns != nil {
			s.OnWorkers, s.Offloaded = st.fns.offload(), st.fns.pace.handed.Load()
		}
	}
	return s
}

// tokenState is what a Token knows about its token within one module
// generation: slot, logged-in sessions, mechanisms, object handles. A new
// module generation (after C_Finalize/C_Initialize) makes all of it stale:
// handles are reassigned then, and an old one may name another key.
type tokenState struct {
	modGen   uint64
	readOnly bool
	p        *pkcs11.Ctx
	fns      *functions // p's single-part calls
	slot     uint
	mechs    map[uint]bool
	metaKey  objRef
	pool     chan pkcs11.SessionHandle
	size     int // the pool's bound (sessionBound)
	openMu   sync.Mutex
	open     int      // sessions open, idle or lent out, and being opened
	opening  int      // of open, those whose C_OpenSession has not returned
	inUse    int      // sessions lent out (guarded by openMu, as is peak)
	peak     int      // most lent out at once since the last sweep
	handles  sync.Map // objRef.key() -> pkcs11.ObjectHandle
}

var _ keys.Backend = (*Token)(nil)
var _ keys.Adopter = (*Token)(nil)

// DefaultMetadataMaxAge is the MetadataMaxAge used when none is set.
const DefaultMetadataMaxAge = time.Second

// retryGap bounds how often a broken token is re-initialised.
const retryGap = 200 * time.Millisecond

// Open loads the module, finds the token, logs in, and makes sure the
// keyring's metadata MAC key exists.
func Open(ctx context.Context, cfg Config) (*Token, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	sel := URI{Token: cfg.TokenLabel}
	if cfg.URI != "" {
		sel, _ = ParseURI(cfg.URI)
	}
	pinPath, err := secretfile.Resolve(cfg.PINFile, "pin")
	if err != nil {
		return nil, err
	}
	pin, err := secretfile.Read(pinPath)
	if err != nil {
		return nil, fmt.Errorf("pin: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	mod, err := acquireModule(cfg.Module)
	if err != nil {
		secretfile.Zero(pin)
		return nil, err
	}
	age := cfg.MetadataMaxAge
	switch {
	case age == 0:
		age = DefaultMetadataMaxAge
	case age < 0:
		age = 0
	}
	t := &Token{cfg: cfg, sel: sel, log: log, pin: pin, mod: mod, age: age, cache: map[string]*cachedMeta{}, claimNonce: rand.Text()}
	t.Frontend = keys.NewFrontend((*tokenDevice)(t))
	mod.mu.RLock()
	st, err := t.newState()
	mod.mu.RUnlock()
	if err != nil {
		t.Close()
		return nil, err
	}
	t.state.Store(st)
	if mod.serialObjects && !cfg.ReadOnly { // a read-only token changes no key: no lock file either
		if ti, err := st.p.GetTokenInfo(st.slot); err == nil {
			if t.cross, err = openCrossLock(ti.SerialNumber); err != nil {
				log.Warn("key changes are not serialised with other processes using this SoftHSM2 token", "err", err.Error())
			}
		}
	}
	if st.fns != nil {
		if err := startWorkers(); err != nil {
			log.Warn("no worker threads for slow PKCS#11 calls: on a network HSM, calls waiting on it will delay every other call", "err", err.Error())
		}
	}
	t.stopSweep = make(chan struct{})
	go t.sweeper(t.stopSweep)
	log.Info("pkcs11 token ready", "token", t.tokenName(), "slot", st.slot, "sessions", st.size,
		// false: C_Encrypt, C_Decrypt and C_Sign ask for the output length first (single.go)
		"known_output_sizes", st.fns != nil)
	return t, nil
}

// newState finds the slot, logs in and finds the metadata key. The caller
// holds mod.mu for reading.
func (t *Token) newState() (*tokenState, error) {
	m := t.mod
	if m.p == nil {
		return nil, fmt.Errorf("module %s not initialised: %w", m.path, keys.ErrUnavailable)
	}
	st := &tokenState{modGen: m.gen, p: m.p, fns: m.fns, mechs: map[uint]bool{}, readOnly: t.cfg.ReadOnly}
	slot, err := t.findSlot(m.p)
	if err != nil {
		return nil, err
	}
	st.slot = slot
	ti, err := m.p.GetTokenInfo(slot)
	st.size = sessionBound(t.cfg.Sessions, ti, err)
	st.pool = make(chan pkcs11.SessionHandle, st.size)
	if ms, err := m.p.GetMechanismList(slot); err == nil {
		for _, mech := range ms {
			st.mechs[mech.Mechanism] = true
		}
	}
	sh, err := st.newSession()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, keys.ErrUnavailable)
	}
	pin := string(t.pin) // miekg takes a string
	err = m.p.Login(sh, pkcs11.CKU_USER, pin)
	if err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN)) {
		st.closeSessions(sh)
		if isPINError(err) {
			return nil, fmt.Errorf("token %q: %v: %w", t.tokenName(), err, ErrCredential)
		}
		return nil, fmt.Errorf("token %q login: %w: %w", t.tokenName(), err, keys.ErrUnavailable)
	}
	s := &sess{t: t, st: st, p: m.p, sh: sh}
	mk, err := s.ensureMetaKey()
	if err != nil {
		st.closeSessions(sh)
		return nil, err
	}
	st.metaKey = mk
	st.pool <- sh
	return st, nil
}

func (t *Token) tokenName() string {
	if t.cfg.URI != "" {
		return t.cfg.URI
	}
	return t.cfg.TokenLabel
}

func isPINError(err error) bool {
	var e pkcs11.Error
	if !errors.As(err, &e) {
		return false
	}
	switch e {
	case pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_INVALID, pkcs11.CKR_PIN_LEN_RANGE, pkcs11.CKR_PIN_LOCKED, pkcs11.CKR_PIN_EXPIRED:
		return true
	}
	return false
}

func (t *Token) findSlot(p *pkcs11.Ctx) (uint, error) {
	slots, err := p.GetSlotList(true)
	if err != nil {
		return 0, fmt.Errorf("C_GetSlotList: %w: %w", err, keys.ErrUnavailable)
	}
	var found []uint
	for _, s := range slots {
		if t.sel.SlotID != nil && *t.sel.SlotID != s {
			continue
		}
		ti, err := p.GetTokenInfo(s)
		if err != nil {
			continue
		}
		if t.sel.MatchesToken(ti.Label, ti.ManufacturerID, ti.SerialNumber, ti.Model) {
			found = append(found, s)
		}
	}
	switch len(found) {
	case 0:
		return 0, fmt.Errorf("token %q: %w; %s: %w", t.tokenName(), ErrTokenNotFound, t.tokensShown(p, slots), keys.ErrUnavailable)
	case 1:
		return found[0], nil
	}
	return 0, fmt.Errorf("token %q matches %d tokens; select by serial or URI: %w", t.tokenName(), len(found), ErrConfig)
}

// maxLabelsShown bounds the token labels a not-found error lists.
const maxLabelsShown = 16

// tokensShown says what the module shows instead of the wanted token: the
// labels of its initialised tokens (labels are not secret) and, for
// SoftHSM2, the configuration it found them through ($SOFTHSM2_CONF at
// C_Initialize: a daemon started with another environment than the shell
// that made the token sees other tokens, or none). Caller holds mod.mu.
func (t *Token) tokensShown(p *pkcs11.Ctx, slots []uint) string {
	var labels []string
	for _, s := range slots {
		ti, err := p.GetTokenInfo(s)
		if err != nil || ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 {
			continue
		}
		labels = append(labels, ti.Label)
	}
	return shownText(labels, t.mod.serialObjects, t.mod.conf)
}

// shownText words tokensShown's answer; conf is $SOFTHSM2_CONF, nil when unset.
func shownText(labels []string, softhsm bool, conf *string) string {
	q := make([]string, 0, min(len(labels), maxLabelsShown))
	for _, l := range labels[:min(len(labels), maxLabelsShown)] {
		q = append(q, strconv.Quote(l))
	}
	msg := "the module shows no initialised token"
	switch n := len(labels); {
	case n > maxLabelsShown:
		msg = fmt.Sprintf("the module shows the tokens %s and %d more", strings.Join(q, ", "), n-maxLabelsShown)
	case n > 0:
		msg = "the module shows the token(s) " + strings.Join(q, ", ")
	}
	switch {
	case !softhsm:
	case conf != nil:
		msg += fmt.Sprintf(" (SoftHSM2 finds its tokens through $SOFTHSM2_CONF, here %q)", *conf)
	default:
		msg += " (SoftHSM2 finds its tokens through $SOFTHSM2_CONF, which is unset here: it reads its default configuration file)"
	}
	return msg
}

// closeSessions closes the state's own sessions (never C_CloseAllSessions:
// other Tokens of the process may use the same slot).
func (st *tokenState) closeSessions(extra ...pkcs11.SessionHandle) {
	for _, sh := range extra {
		st.p.CloseSession(sh)
	}
	for {
		select {
		case sh := <-st.pool:
			st.p.CloseSession(sh)
		default:
			return
		}
	}
}

// Close closes this Token's sessions, releases the module (finalising it
// when no other Token uses it) and zeroes the PIN.
func (t *Token) Close() error {
	if t.closed.Swap(true) {
		return nil
	}
	if t.stopSweep != nil {
		close(t.stopSweep)
	}
	t.mod.mu.RLock()
	if st := t.state.Load(); st != nil && st.modGen == t.mod.gen && t.mod.p != nil {
		st.closeSessions()
	}
	t.mod.mu.RUnlock()
	t.mod.release()
	t.cross.close()
	secretfile.Zero(t.pin)
	return nil
}

// newSession opens one more session if fewer than the bound are open; the
// place is taken before C_OpenSession (a round trip on a network HSM), so
// that sessions open in parallel. A token that has no session to give while
// this pool holds some is a full pool: the caller waits for one of them.
// Caller holds mod.mu.
func (st *tokenState) newSession() (pkcs11.SessionHandle, error) {
	st.openMu.Lock()
	if st.open >= st.size {
		st.openMu.Unlock()
		return 0, errPoolFull
	}
	st.open++
	st.opening++
	st.openMu.Unlock()
	flags := uint(pkcs11.CKF_SERIAL_SESSION | pkcs11.CKF_RW_SESSION)
	if st.readOnly {
		flags = pkcs11.CKF_SERIAL_SESSION
	}
	sh, err := st.p.OpenSession(st.slot, flags)
	st.openMu.Lock()
	st.opening--
	if err == nil {
		st.openMu.Unlock()
		return sh, nil
	}
	st.open--
	opened := st.open - st.opening // sessions that exist: one comes back to the pool
	st.openMu.Unlock()
	if refusedSession(err) && opened > 0 {
		return 0, errPoolFull
	}
	return 0, fmt.Errorf("C_OpenSession: %w", err)
}

// recoverable reports PKCS#11 errors after which re-initialising the module
// and retrying may succeed: lost sessions, a removed or re-created token, a
// finalised module, handles that no longer exist.
func recoverable(err error) bool {
	var missing *missingError
	if errors.As(err, &missing) {
		return true
	}
	var e pkcs11.Error
	if !errors.As(err, &e) {
		return false
	}
	switch e {
	case pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED, pkcs11.CKR_DEVICE_REMOVED,
		pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_USER_NOT_LOGGED_IN, pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED,
		pkcs11.CKR_TOKEN_NOT_PRESENT, pkcs11.CKR_TOKEN_NOT_RECOGNIZED, pkcs11.CKR_SLOT_ID_INVALID,
		pkcs11.CKR_OBJECT_HANDLE_INVALID, pkcs11.CKR_KEY_HANDLE_INVALID,
		// CKR_GENERAL_ERROR: "the token is in an unrecoverable state" per the
		// standard; SoftHSM2 also says it for calls on a deleted token. (Its
		// use for GCM tag failures is mapped to ErrDecrypt before this.)
		pkcs11.CKR_GENERAL_ERROR:
		return true
	}
	return false
}

// missingError: a key object that a record lists is not in the token.
type missingError struct{ msg string }

func (e *missingError) Error() string { return e.msg }

// sessionBroken reports errors after which the session must not be reused.
func sessionBroken(err error) bool {
	if errors.Is(err, errOperationActive) {
		return true
	}
	var e pkcs11.Error
	if !errors.As(err, &e) {
		return false
	}
	switch e {
	case pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED, pkcs11.CKR_DEVICE_REMOVED,
		pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED, pkcs11.CKR_OPERATION_ACTIVE:
		return true
	}
	return false
}

// sess is what withSession lends: the module context and one session, valid
// only inside the callback.
type sess struct {
	t  *Token
	st *tokenState
	p  *pkcs11.Ctx
	sh pkcs11.SessionHandle
}

// withSession lends a logged-in session to fn under the module's read
// lock. If fn fails with a recoverable PKCS#11 error, the module is
// re-initialised (once for all goroutines that saw the same generation
// fail), objects are found anew, and fn runs once more. fn must look
// objects up through the sess it is given and never keep handles.
func (t *Token) withSession(ctx context.Context, fn func(s *sess) error) error {
	return t.withSessionMode(ctx, false, fn)
}

// withObjectChanges is withSession for fn that create or destroy token
// objects: on modules that need it (see module.objects) no other session
// runs meanwhile.
func (t *Token) withObjectChanges(ctx context.Context, fn func(s *sess) error) error {
	return t.withSessionMode(ctx, true, fn)
}

func (t *Token) withSessionMode(ctx context.Context, exclusive bool, fn func(s *sess) error) error {
	if exclusive {
		// Before the session and the module lock: waiting for another
		// process must not hold back this one's data operations.
		unlock, err := t.cross.lock(ctx)
		if err != nil {
			return fmt.Errorf("%w: %w", err, keys.ErrUnavailable)
		}
		defer unlock()
	}
	gen, err := t.attempt(ctx, exclusive, fn)
	if err == nil || !recoverable(err) {
		return err
	}
	t.log.Warn("pkcs11 call failed; re-initialising module", "err", err, "generation", gen)
	if err := t.mod.reinit(gen); err != nil {
		return fmt.Errorf("%w: %w", err, keys.ErrUnavailable)
	}
	_, err = t.attempt(ctx, exclusive, fn)
	if recoverable(err) {
		return fmt.Errorf("%w: %w", err, keys.ErrUnavailable)
	}
	return err
}

// attempt runs fn once with a pooled session of a current state, holding
// the module's object lock (exclusive: for writing) while fn runs. It
// returns the module generation it ran under.
func (t *Token) attempt(ctx context.Context, exclusive bool, fn func(s *sess) error) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if t.closed.Load() {
		return 0, fmt.Errorf("token closed: %w", keys.ErrUnavailable)
	}
	m := t.mod
	m.mu.RLock()
	defer m.mu.RUnlock()
	st := t.state.Load()
	if st == nil || st.modGen != m.gen || m.p == nil {
		var err error
		if st, err = t.refresh(); err != nil {
			return m.gen, err
		}
	}
	sh, err := st.getSession(ctx)
	if err != nil {
		return st.modGen, err
	}
	// Taken once a session is held, never while waiting for one: an
	// exclusive holder waiting for a session that a reader waiting for the
	// lock holds would deadlock.
	locked := m.lockObjects(exclusive)
	ferr := fn(&sess{t: t, st: st, p: st.p, sh: sh})
	m.unlockObjects(exclusive, locked)
	if recoverable(ferr) {
		st.handles.Clear() // found again on the retry, whether or not the module is re-initialised
	}
	st.putSession(sh, sessionBroken(ferr))
	return st.modGen, ferr
}

// refresh builds a state for the current module generation. A failure
// (token absent, module not initialised) is remembered so that concurrent
// and rapid retries do not hammer the module; after retryGap the next
// attempt re-initialises the module, because a token that reappeared
// (a restored or re-created token directory) is only seen after
// C_Finalize + C_Initialize. Caller holds mod.mu for reading.
func (t *Token) refresh() (*tokenState, error) {
	m := t.mod
	t.refreshMu.Lock()
	defer t.refreshMu.Unlock()
	if st := t.state.Load(); st != nil && st.modGen == m.gen && m.p != nil {
		return st, nil
	}
	if t.lastErr != nil && t.failedGen == m.gen {
		if time.Since(t.lastTry) < retryGap {
			return nil, fmt.Errorf("token %q unavailable: %w", t.tokenName(), t.lastErr)
		}
		// Ask for a new module generation; the caller retries under it.
		gen := m.gen
		t.lastTry = time.Now()
		go func() { m.reinit(gen) }() // needs the write lock: not from under our read lock
		return nil, fmt.Errorf("token %q unavailable, re-initialising: %w", t.tokenName(), keys.ErrUnavailable)
	}
	st, err := t.newState()
	if err != nil {
		t.recoveryFailures.Add(1)
		t.lastTry, t.lastErr, t.failedGen = time.Now(), err, m.gen
		t.log.Error("pkcs11 token not usable", "err", err)
		if errors.Is(err, keys.ErrUnavailable) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %w", err, keys.ErrUnavailable)
	}
	t.lastErr = nil
	t.state.Store(st)
	t.recoveries.Add(1)
	t.log.Info("pkcs11 token recovered", "token", t.tokenName(), "generation", st.modGen)
	return st, nil
}

// getSession takes an idle session, opens a new one while under the bound,
// or waits, and counts it lent out. The caller holds mod.mu for
// reading.
func (st *tokenState) getSession(ctx context.Context) (pkcs11.SessionHandle, error) {
	sh, err := st.takeSession(ctx)
	if err == nil {
		st.openMu.Lock()
		st.busy(1)
		st.openMu.Unlock()
	}
	return sh, err
}

func (st *tokenState) takeSession(ctx context.Context) (pkcs11.SessionHandle, error) {
	select {
	case sh := <-st.pool:
		return sh, nil
	default:
	}
	sh, err := st.newSession()
	if err == nil {
		return sh, nil
	}
	if !errors.Is(err, errPoolFull) {
		return 0, err
	}
	select {
	case sh := <-st.pool:
		return sh, nil
	case <-ctx.Done():
		return 0, fmt.Errorf("waiting for a pkcs11 session: %w", ctx.Err())
	}
}

// putSession takes back a session getSession lent: into the pool, or
// closed when broken.
func (st *tokenState) putSession(sh pkcs11.SessionHandle, broken bool) {
	st.openMu.Lock()
	st.busy(-1)
	if broken {
		st.open--
	}
	st.openMu.Unlock()
	if broken {
		st.p.CloseSession(sh)
		return
	}
	st.pool <- sh
}

// Health checks that the token is present and answers, and that the session
// is logged in. C_GetTokenInfo is what reaches the token: C_GetSessionInfo
// alone is answered from the library's memory, and SoftHSM2 kept passing it
// for a token whose directory had been removed (C_GetTokenInfo fails at once
// with CKR_GENERAL_ERROR there), so the watchdog would have kept a daemon
// without a token alive.
func (t *Token) Health(ctx context.Context) error {
	return t.withSession(ctx, func(s *sess) error {
		if _, err := s.p.GetTokenInfo(s.st.slot); err != nil {
			return err
		}
		info, err := s.p.GetSessionInfo(s.sh)
		if err != nil {
			return err
		}
		if info.State != pkcs11.CKS_RW_USER_FUNCTIONS && info.State != pkcs11.CKS_RO_USER_FUNCTIONS {
			return pkcs11.Error(pkcs11.CKR_USER_NOT_LOGGED_IN)
		}
		return nil
	})
}
