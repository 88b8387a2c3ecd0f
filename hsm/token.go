package hsm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
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
	// Sessions bounds the session pool. 0 means 2 x GOMAXPROCS, at least 4.
	Sessions int
	// MetadataMaxAge is how long a verified key record is used before it is
	// read from the token again. 0 (the default) reads it on every operation,
	// so a rotation or disable by another process applies at once.
	MetadataMaxAge time.Duration
	// Logger receives operational events; never secrets. nil discards.
	Logger *slog.Logger
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
	if c.MetadataMaxAge < 0 {
		return fmt.Errorf("metadata max age is negative: %w", ErrConfig)
	}
	return nil
}

// Token is a keys.Backend on one PKCS#11 token.
type Token struct {
	cfg  Config
	sel  URI
	log  *slog.Logger
	pin  []byte
	size int

	// mu: every PKCS#11 call holds it for reading; (re)initialising the
	// module holds it for writing.
	mu      sync.RWMutex
	p       *pkcs11.Ctx
	slot    uint
	ready   bool   // module initialised, logged in, metadata key found
	gen     uint64 // incremented at every (re)initialisation
	pool    chan pkcs11.SessionHandle
	open    int // sessions opened in this generation (guarded by poolMu)
	poolMu  sync.Mutex
	mechs   map[uint]bool
	metaKey objRef
	lastTry time.Time // last failed re-initialisation, to rate-limit retries
	lastErr error

	handles sync.Map // objKey -> pkcs11.ObjectHandle, valid for one generation
	pubs    sync.Map // hex CKA_ID -> crypto.PublicKey; an object's public key never changes

	adminMu sync.Mutex // serialises admin operations in this process
	cacheMu sync.Mutex
	cache   map[string]*cachedMeta

	closed bool
}

var _ keys.Backend = (*Token)(nil)
var _ keys.Adopter = (*Token)(nil)

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
		return nil, fmt.Errorf("pin: %w", err)
	}
	pin, err := secretfile.Read(pinPath)
	if err != nil {
		return nil, fmt.Errorf("pin: %w", err)
	}
	size := cfg.Sessions
	if size == 0 {
		size = max(4, 2*runtime.GOMAXPROCS(0))
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := &Token{cfg: cfg, sel: sel, log: log, pin: pin, size: size, cache: map[string]*cachedMeta{}}
	t.mu.Lock()
	err = t.initLocked()
	t.mu.Unlock()
	if err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

// initLocked (re)loads the module state: initialise, find the slot, log in,
// find the metadata key. The caller holds mu for writing.
func (t *Token) initLocked() error {
	t.teardownLocked()
	t.gen++
	t.handles.Clear()
	t.cacheMu.Lock()
	clear(t.cache)
	t.cacheMu.Unlock()

	p := pkcs11.New(t.cfg.Module)
	if p == nil {
		return fmt.Errorf("load %s: %w", t.cfg.Module, ErrModule)
	}
	if err := p.Initialize(); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		p.Destroy()
		return fmt.Errorf("C_Initialize %s: %w: %w", t.cfg.Module, err, ErrModule)
	}
	t.p = p
	slot, err := t.findSlot()
	if err != nil {
		return err
	}
	t.slot = slot
	t.mechs = map[uint]bool{}
	if ms, err := p.GetMechanismList(slot); err == nil {
		for _, m := range ms {
			t.mechs[m.Mechanism] = true
		}
	}
	t.pool = make(chan pkcs11.SessionHandle, t.size)
	t.poolMu.Lock()
	t.open = 0
	t.poolMu.Unlock()
	sh, err := t.newSession()
	if err != nil {
		return err
	}
	pin := string(t.pin) // miekg takes a string; it is freed with the call
	err = p.Login(sh, pkcs11.CKU_USER, pin)
	if err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN)) {
		p.CloseSession(sh)
		if isPINError(err) {
			return fmt.Errorf("token %q: %v: %w", t.tokenName(), err, ErrLogin)
		}
		return fmt.Errorf("token %q login: %w: %w", t.tokenName(), err, keys.ErrUnavailable)
	}
	t.pool <- sh
	mk, err := t.ensureMetaKey(sh)
	if err != nil {
		return err
	}
	t.metaKey = mk
	t.ready = true
	t.log.Info("pkcs11 token ready", "token", t.tokenName(), "slot", slot, "sessions", t.size, "generation", t.gen)
	return nil
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

func (t *Token) findSlot() (uint, error) {
	slots, err := t.p.GetSlotList(true)
	if err != nil {
		return 0, fmt.Errorf("C_GetSlotList: %w: %w", err, keys.ErrUnavailable)
	}
	var found []uint
	for _, s := range slots {
		if t.sel.SlotID != nil && *t.sel.SlotID != s {
			continue
		}
		ti, err := t.p.GetTokenInfo(s)
		if err != nil {
			continue
		}
		if t.sel.matchesToken(ti.Label, ti.ManufacturerID, ti.SerialNumber, ti.Model) {
			found = append(found, s)
		}
	}
	switch len(found) {
	case 0:
		return 0, fmt.Errorf("token %q: %w: %w", t.tokenName(), ErrTokenNotFound, keys.ErrUnavailable)
	case 1:
		return found[0], nil
	}
	return 0, fmt.Errorf("token %q matches %d tokens; select by serial or URI: %w", t.tokenName(), len(found), ErrConfig)
}

// teardownLocked closes sessions and finalises the module. The caller holds
// mu for writing, so no PKCS#11 call is in flight (C_Finalize during a call
// crashes SoftHSM2).
func (t *Token) teardownLocked() {
	t.ready = false
	if t.p == nil {
		return
	}
	t.p.CloseAllSessions(t.slot)
	t.p.Finalize()
	t.p.Destroy()
	t.p = nil
	t.pool = nil
}

// Close logs out, finalises the module and zeroes the PIN.
func (t *Token) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	t.teardownLocked()
	secretfile.Zero(t.pin)
	return nil
}

// newSession opens one more session if the pool is not full. Caller holds mu.
func (t *Token) newSession() (pkcs11.SessionHandle, error) {
	t.poolMu.Lock()
	defer t.poolMu.Unlock()
	if t.open >= t.size {
		return 0, errPoolFull
	}
	sh, err := t.p.OpenSession(t.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return 0, fmt.Errorf("C_OpenSession: %w", err)
	}
	t.open++
	return sh, nil
}

var errPoolFull = errors.New("session pool full")

// recoverable reports PKCS#11 errors after which re-initialising the module
// and retrying may succeed: lost sessions, a removed or re-created token, a
// finalised module, handles that no longer exist.
func recoverable(err error) bool {
	var e pkcs11.Error
	if !errors.As(err, &e) {
		return false
	}
	switch e {
	case pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED, pkcs11.CKR_DEVICE_REMOVED,
		pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_USER_NOT_LOGGED_IN, pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED,
		pkcs11.CKR_TOKEN_NOT_PRESENT, pkcs11.CKR_TOKEN_NOT_RECOGNIZED, pkcs11.CKR_SLOT_ID_INVALID,
		pkcs11.CKR_OBJECT_HANDLE_INVALID, pkcs11.CKR_KEY_HANDLE_INVALID:
		return true
	}
	return false
}

// sessionBroken reports errors after which the session must not be reused.
func sessionBroken(err error) bool {
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
	p  *pkcs11.Ctx
	sh pkcs11.SessionHandle
}

// withSession lends a session to fn under the read lock. If fn fails with a
// recoverable PKCS#11 error, the module is re-initialised (once for all
// goroutines that saw the same generation fail) and fn runs once more. fn
// must look objects up through the sess it is given, never keep handles.
func (t *Token) withSession(ctx context.Context, fn func(s *sess) error) error {
	gen, err := t.attempt(ctx, fn)
	if err == nil || !recoverable(err) {
		return err
	}
	t.log.Warn("pkcs11 call failed; re-initialising token", "err", err, "generation", gen)
	if rerr := t.reinit(gen); rerr != nil {
		return rerr
	}
	_, err = t.attempt(ctx, fn)
	if recoverable(err) {
		return fmt.Errorf("%w: %w", err, keys.ErrUnavailable)
	}
	return err
}

// attempt runs fn once with a pooled session.
func (t *Token) attempt(ctx context.Context, fn func(s *sess) error) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	t.mu.RLock()
	if !t.ready {
		gen := t.gen
		t.mu.RUnlock()
		if t.closed {
			return gen, fmt.Errorf("token closed: %w", keys.ErrUnavailable)
		}
		if err := t.reinit(gen); err != nil {
			return gen, err
		}
		t.mu.RLock()
		if !t.ready {
			gen := t.gen
			t.mu.RUnlock()
			return gen, fmt.Errorf("token %q not ready: %w", t.tokenName(), keys.ErrUnavailable)
		}
	}
	defer t.mu.RUnlock()
	gen := t.gen
	sh, err := t.getSession(ctx)
	if err != nil {
		return gen, err
	}
	s := &sess{t: t, p: t.p, sh: sh}
	ferr := fn(s)
	if sessionBroken(ferr) {
		t.p.CloseSession(sh)
		t.poolMu.Lock()
		t.open--
		t.poolMu.Unlock()
	} else {
		t.pool <- sh
	}
	return gen, ferr
}

// getSession takes an idle session, opens a new one while under the bound,
// or waits. The caller holds mu for reading.
func (t *Token) getSession(ctx context.Context) (pkcs11.SessionHandle, error) {
	select {
	case sh := <-t.pool:
		return sh, nil
	default:
	}
	sh, err := t.newSession()
	if err == nil {
		return sh, nil
	}
	if !errors.Is(err, errPoolFull) {
		return 0, err
	}
	select {
	case sh := <-t.pool:
		return sh, nil
	case <-ctx.Done():
		return 0, fmt.Errorf("waiting for a pkcs11 session: %w", ctx.Err())
	}
}

// reinit re-initialises the module if no other goroutine has done so since
// generation gen was observed. Failed attempts are rate-limited.
func (t *Token) reinit(gen uint64) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return fmt.Errorf("token closed: %w", keys.ErrUnavailable)
	}
	if t.gen != gen && t.ready {
		return nil // someone else recovered already
	}
	if !t.ready && time.Since(t.lastTry) < retryGap {
		return fmt.Errorf("token %q unavailable (%v): %w", t.tokenName(), t.lastErr, keys.ErrUnavailable)
	}
	start := time.Now()
	err := t.initLocked()
	if err != nil {
		t.lastTry, t.lastErr = time.Now(), err
		t.teardownLocked()
		t.log.Error("pkcs11 re-initialisation failed", "err", err)
		if errors.Is(err, keys.ErrUnavailable) {
			return err
		}
		return fmt.Errorf("%w: %w", err, keys.ErrUnavailable)
	}
	t.log.Info("pkcs11 token recovered", "generation", t.gen, "took", time.Since(start))
	return nil
}

// Health checks that the token answers and the session is logged in.
func (t *Token) Health(ctx context.Context) error {
	return t.withSession(ctx, func(s *sess) error {
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

// Random returns n bytes from the token's generator.
func (t *Token) Random(ctx context.Context, n int) ([]byte, error) {
	if n < 1 || n > keys.MaxRandom {
		return nil, fmt.Errorf("random: %d bytes, want 1..%d: %w", n, keys.MaxRandom, keys.ErrInvalidArgument)
	}
	var out []byte
	err := t.withSession(ctx, func(s *sess) error {
		b, err := s.p.GenerateRandom(s.sh, n)
		if err != nil {
			return err
		}
		if len(b) != n {
			return fmt.Errorf("C_GenerateRandom returned %d bytes, want %d", len(b), n)
		}
		out = b
		return nil
	})
	return out, err
}
