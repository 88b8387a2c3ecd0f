package hsm

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/miekg/pkcs11"
)

// InitToken initialises a token on the module's first uninitialised slot
// with label and sets its user PIN, entirely through PKCS#11 (C_InitToken,
// C_InitPIN), so no PIN ever appears on a command line. SoftHSM2 always
// offers one empty slot; hardware HSMs usually want their vendor tool.
// It must run before any Token of this process opens the module.
func InitToken(module, label string, soPIN, userPIN []byte) error {
	if label == "" || len(label) > 32 {
		return fmt.Errorf("token label must be 1..32 bytes: %w", ErrConfig)
	}
	if len(soPIN) == 0 || len(userPIN) == 0 {
		return fmt.Errorf("empty PIN: %w", ErrConfig)
	}
	m, err := acquireModule(module)
	if err != nil {
		return err
	}
	defer m.release()
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.p
	slots, err := p.GetSlotList(false)
	if err != nil {
		return fmt.Errorf("C_GetSlotList: %w", err)
	}
	free := -1
	for _, s := range slots {
		ti, err := p.GetTokenInfo(s)
		if err != nil {
			continue
		}
		if ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 {
			if free < 0 {
				free = int(s)
			}
			continue
		}
		if strings.TrimSpace(ti.Label) == label {
			return fmt.Errorf("a token labelled %q exists already: %w", label, ErrConfig)
		}
	}
	if free < 0 {
		return fmt.Errorf("no uninitialised slot in %s: %w", module, ErrTokenNotFound)
	}
	if err := p.InitToken(uint(free), string(soPIN), label); err != nil {
		return fmt.Errorf("C_InitToken: %w", err)
	}
	// SoftHSM2 moves an initialised token to a new slot: look it up again
	// after re-initialising the module.
	m.finalizeLocked()
	if err := m.initLocked(); err != nil {
		return err
	}
	p = m.p
	if slots, err = p.GetSlotList(true); err != nil {
		return fmt.Errorf("C_GetSlotList: %w", err)
	}
	for _, s := range slots {
		ti, err := p.GetTokenInfo(s)
		if err != nil || strings.TrimSpace(ti.Label) != label {
			continue
		}
		sh, err := p.OpenSession(s, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		if err != nil {
			return fmt.Errorf("C_OpenSession: %w", err)
		}
		defer p.CloseSession(sh)
		if err := p.Login(sh, pkcs11.CKU_SO, string(soPIN)); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN)) {
			return fmt.Errorf("SO login: %w", err)
		}
		defer p.Logout(sh)
		if err := p.InitPIN(sh, string(userPIN)); err != nil {
			return fmt.Errorf("C_InitPIN: %w", err)
		}
		return nil
	}
	return fmt.Errorf("token %q not found after initialisation: %w", label, ErrTokenNotFound)
}

// SoftHSMModules lists where Debian and others install SoftHSM2's module.
var SoftHSMModules = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
}

// SoftHSMModule returns $KEYWARD_PKCS11_MODULE if set, else the first
// SoftHSM2 module that exists (for dev mode and tests).
func SoftHSMModule() (string, error) {
	if m := os.Getenv("KEYWARD_PKCS11_MODULE"); m != "" {
		return m, nil
	}
	for _, m := range SoftHSMModules {
		if _, err := os.Stat(m); err == nil {
			return m, nil
		}
	}
	return "", fmt.Errorf("SoftHSM2 is not installed (apt-get install softhsm2): %w", ErrModule)
}
