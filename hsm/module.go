package hsm

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/miekg/pkcs11"
)

// module is one loaded PKCS#11 library, shared by every Token of the
// process that names the same path: C_Initialize and C_Finalize act on the
// whole process, so the lock that keeps C_Finalize away from in-flight calls
// must be per module, not per Token. Every PKCS#11 call holds mu for
// reading; finalising holds it for writing.
type module struct {
	path string
	mu   sync.RWMutex
	p    *pkcs11.Ctx // nil after a failed re-initialisation
	fns  *functions  // p's single-part calls (single.go); nil: the binding's
	gen  uint64      // incremented at every successful C_Initialize
	last time.Time   // time of the last C_Initialize
	refs int         // guarded by modulesMu

	// objects is held for writing while a session creates or destroys
	// token objects and for reading around every other use of a session,
	// when serialObjects is set: SoftHSM2's file object store is not safe
	// for that mix within one process. C_FindObjectsInit re-reads every
	// token object from its file, and one read while another session
	// writes a new object's file (it rewrites the file once per attribute
	// during C_GenerateKey or C_CreateObject) drops the new object's
	// attributes: C_GenerateKey then fails with CKR_TEMPLATE_INCONSISTENT
	// or CKR_GENERAL_ERROR and leaves an orphan object behind (reproduced:
	// about 1 generate in 300 with one concurrent finder; none with this
	// lock in 15,000). File locks do not help: they are per process.
	objects       sync.RWMutex
	serialObjects bool // set from C_GetInfo at load: the module is SoftHSM

	// conf is $SOFTHSM2_CONF at the last C_Initialize (nil: unset), where
	// SoftHSM2 found its tokens; for error messages.
	conf *string
}

var (
	modulesMu sync.Mutex
	modules   = map[string]*module{}
)

// acquireModule loads path (once per process) and counts a user.
func acquireModule(path string) (*module, error) {
	modulesMu.Lock()
	defer modulesMu.Unlock()
	if m, ok := modules[path]; ok {
		m.refs++
		return m, nil
	}
	m := &module{path: path}
	m.mu.Lock()
	err := m.initLocked()
	m.mu.Unlock()
	if err != nil {
		return nil, err
	}
	m.refs = 1
	modules[path] = m
	return m, nil
}

// release drops a user; the last one finalises and unloads the module.
func (m *module) release() {
	modulesMu.Lock()
	defer modulesMu.Unlock()
	m.refs--
	if m.refs > 0 {
		return
	}
	delete(modules, m.path)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.finalizeLocked()
}

func (m *module) initLocked() error {
	m.conf = nil
	if c, ok := os.LookupEnv("SOFTHSM2_CONF"); ok {
		m.conf = &c
	}
	p := pkcs11.New(m.path)
	if p == nil {
		return fmt.Errorf("load %s: %w", m.path, ErrModule)
	}
	if noFunctionList(p, m.path) {
		p.Destroy()
		return fmt.Errorf("load %s: its C_GetFunctionList failed: %w", m.path, ErrModule)
	}
	if err := p.Initialize(); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		p.Destroy()
		return fmt.Errorf("C_Initialize %s: %w: %w", m.path, err, ErrModule)
	}
	m.p, m.fns = p, loadFunctions(p, m.path)
	m.gen++
	m.last = time.Now()
	if info, err := p.GetInfo(); err == nil {
		m.serialObjects = needsObjectLock(info.ManufacturerID)
	}
	return nil
}

// needsObjectLock: modules whose object store needs object creation kept
// apart from every other session (see module.objects). Hardware modules
// serialise inside the device; holding every call back for the length of
// an RSA key generation there would only cost latency.
func needsObjectLock(manufacturer string) bool { return isSoftHSM(manufacturer) }

// isSoftHSM reports whether a module's manufacturer ID is SoftHSM's.
func isSoftHSM(manufacturer string) bool {
	return strings.HasPrefix(strings.TrimSpace(manufacturer), "SoftHSM")
}

// lockObjects takes module.objects (for writing if exclusive) when the
// module needs it, and reports whether it did; unlockObjects undoes it.
// (No closure: this is on every call's path.)
func (m *module) lockObjects(exclusive bool) bool {
	switch {
	case !m.serialObjects:
		return false
	case exclusive:
		m.objects.Lock()
	default:
		m.objects.RLock()
	}
	return true
}

func (m *module) unlockObjects(exclusive, locked bool) {
	switch {
	case !locked:
	case exclusive:
		m.objects.Unlock()
	default:
		m.objects.RUnlock()
	}
}

func (m *module) finalizeLocked() {
	if m.p == nil {
		return
	}
	m.p.Finalize()
	m.p.Destroy()
	m.p, m.fns = nil, nil
}

// reinit finalises and initialises the module again, unless another
// goroutine already did so since generation gen was observed. Sessions and
// object handles of every Token on this module become invalid; each Token
// notices the new generation and opens, logs in and finds anew.
func (m *module) reinit(gen uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.gen != gen && m.p != nil {
		return nil
	}
	// A fault that persists (an object deleted outside keyward) must not
	// finalise the module for every request: at most once per retryGap.
	if m.p != nil && time.Since(m.last) < retryGap {
		return nil
	}
	m.finalizeLocked()
	return m.initLocked()
}
