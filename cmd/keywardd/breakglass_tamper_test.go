package main

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"
)

// flipBody changes one character of the base64 "body" in a grant record
// (a TPM grant file, a token object's value), keeping it valid base64 and
// the record valid JSON: only its MAC can tell.
func flipBody(b []byte) bool {
	i := bytes.Index(b, []byte(`"body":`))
	if i < 0 {
		return false
	}
	i += len(`"body":`)
	for i < len(b) && (b[i] == ' ' || b[i] == '\n' || b[i] == '\t') {
		i++
	}
	if i >= len(b) || b[i] != '"' {
		return false
	}
	for j := i + 8; j < len(b) && b[j] != '"'; j++ {
		switch c := b[j]; {
		case c >= 'a' && c <= 'z':
			b[j] = c - 'a' + 'A'
			return true
		case c >= 'A' && c <= 'Z':
			b[j] = c - 'A' + 'a'
			return true
		}
	}
	return false
}

// tamperFiles flips the body of every file under dir that names grant id
// (path or content), as someone with the state directory could.
func tamperFiles(t *testing.T, dir, id string) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || !e.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if (strings.Contains(p, id) || bytes.Contains(b, []byte(id))) && flipBody(b) {
			n++
			return os.WriteFile(p, b, 0o600)
		}
		return nil
	})
	if err != nil || n == 0 {
		t.Fatalf("no grant record of %s found under %s to tamper with (%v)", id, dir, err)
	}
}

// tamperToken replaces the token's data objects that name grant id with
// copies whose body is flipped, as someone with the token's PIN could (the
// objects are not modifiable: destroyed and made again). It returns a
// func that removes them, so that later tests on the shared token do not
// meet them.
func tamperToken(t *testing.T, id string) func() {
	t.Helper()
	p := pkcs11.New(tok.Module)
	if p == nil {
		t.Fatalf("load %s", tok.Module)
	}
	if err := p.Initialize(); err != nil {
		t.Fatal(err)
	}
	sh, err := p.OpenSession(findSlot(t, p, tok.Label), pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Login(sh, pkcs11.CKU_USER, tok.PIN); err != nil {
		t.Fatal(err)
	}
	var made []pkcs11.ObjectHandle
	for _, h := range findObjects(t, p, sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_DATA)}) {
		kinds := []uint{pkcs11.CKA_LABEL, pkcs11.CKA_APPLICATION, pkcs11.CKA_VALUE, pkcs11.CKA_PRIVATE, pkcs11.CKA_MODIFIABLE}
		tmpl := make([]*pkcs11.Attribute, len(kinds))
		for i, k := range kinds {
			tmpl[i] = pkcs11.NewAttribute(k, nil)
		}
		attrs, err := p.GetAttributeValue(sh, h, tmpl)
		if err != nil || !strings.Contains(string(attrs[0].Value)+string(attrs[2].Value), id) || !flipBody(attrs[2].Value) {
			continue
		}
		if err := p.DestroyObject(sh, h); err != nil {
			t.Fatal(err)
		}
		nh, err := p.CreateObject(sh, append(attrs, pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_DATA), pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true)))
		if err != nil {
			t.Fatal(err)
		}
		made = append(made, nh)
	}
	if len(made) == 0 {
		t.Fatalf("no token object of grant %s to tamper with", id)
	}
	return func() {
		for _, h := range made {
			p.DestroyObject(sh, h)
		}
		p.Logout(sh)
		p.CloseSession(sh)
		p.Finalize()
		p.Destroy()
	}
}

func findObjects(t *testing.T, p *pkcs11.Ctx, sh pkcs11.SessionHandle, tmpl []*pkcs11.Attribute) []pkcs11.ObjectHandle {
	t.Helper()
	if err := p.FindObjectsInit(sh, tmpl); err != nil {
		t.Fatal(err)
	}
	defer p.FindObjectsFinal(sh)
	var out []pkcs11.ObjectHandle
	for {
		hs, _, err := p.FindObjects(sh, 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(hs) == 0 {
			return out
		}
		out = append(out, hs...)
	}
}
