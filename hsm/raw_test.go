package hsm_test

import (
	"errors"
	"testing"

	"github.com/miekg/pkcs11"
)

// rawSession opens a logged-in session on the test token through miekg/pkcs11
// directly, beside the backend: the outside view a security team has. It
// never finalises the module (the backend in the same process shares it).
func rawSession(t testing.TB) (*pkcs11.Ctx, pkcs11.SessionHandle) {
	t.Helper()
	p := pkcs11.New(tok.Module)
	if p == nil {
		t.Fatal("load module")
	}
	if err := p.Initialize(); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		t.Fatalf("C_Initialize: %v", err)
	}
	slots, err := p.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range slots {
		ti, err := p.GetTokenInfo(s)
		if err != nil || ti.Label != tok.Label {
			continue
		}
		sh, err := p.OpenSession(s, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Login(sh, pkcs11.CKU_USER, tok.PIN); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN)) {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.CloseSession(sh) })
		return p, sh
	}
	t.Fatalf("token %q not found", tok.Label)
	return nil, 0
}

// rawFind returns every object matching the template.
func rawFind(t testing.TB, p *pkcs11.Ctx, sh pkcs11.SessionHandle, tmpl ...*pkcs11.Attribute) []pkcs11.ObjectHandle {
	t.Helper()
	if err := p.FindObjectsInit(sh, tmpl); err != nil {
		t.Fatal(err)
	}
	defer p.FindObjectsFinal(sh)
	var all []pkcs11.ObjectHandle
	for {
		hs, _, err := p.FindObjects(sh, 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(hs) == 0 {
			return all
		}
		all = append(all, hs...)
	}
}

func wantCKR(t testing.TB, what string, err error, codes ...uint) {
	t.Helper()
	var e pkcs11.Error
	if !errors.As(err, &e) {
		t.Errorf("%s: err = %v, want one of %x", what, err, codes)
		return
	}
	for _, c := range codes {
		if uint(e) == c {
			return
		}
	}
	t.Errorf("%s: err = %v, want one of %x", what, err, codes)
}
