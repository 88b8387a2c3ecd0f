package hsm

import (
	"errors"
	"fmt"
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
	gen  uint64      // incremented at every successful C_Initialize
	last time.Time   // time of the last C_Initialize
	refs int         // guarded by modulesMu
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
	p := pkcs11.New(m.path)
	if p == nil {
		return fmt.Errorf("load %s: %w", m.path, ErrModule)
	}
	if err := p.Initialize(); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		p.Destroy()
		return fmt.Errorf("C_Initialize %s: %w: %w", m.path, err, ErrModule)
	}
	m.p = p
	m.gen++
	m.last = time.Now()
	return nil
}

func (m *module) finalizeLocked() {
	if m.p == nil {
		return
	}
	m.p.Finalize()
	m.p.Destroy()
	m.p = nil
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
