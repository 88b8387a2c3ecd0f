package daemon_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"

	pb "github.com/keyward/keyward/api/keyward/v1"
)

// TestAdoptKeywardObjectRefused: a key admin who names the keyring's own
// metadata MAC key by its CKA_ID alone (no label to refuse) is answered
// INVALID_REQUEST, and no key is made that could MAC forged records.
func TestAdoptKeywardObjectRefused(t *testing.T) {
	r := start(t, testRules(), nil)
	c := dial(t, r.sock)
	ctx := context.Background()
	var uri strings.Builder
	uri.WriteString("pkcs11:id=")
	for _, b := range metaKeyID(t) {
		fmt.Fprintf(&uri, "%%%02x", b)
	}
	_, err := c.AdoptKey(ctx, &pb.AdoptKeyRequest{Key: "api/evil", KeyType: "hmac-sha256", Uri: uri.String()})
	if got := reason(err); got != "InvalidArgument INVALID_REQUEST" {
		t.Fatalf("adopt the metadata key by id: %s, want InvalidArgument INVALID_REQUEST", got)
	}
	if _, err := c.Mac(ctx, &pb.MacRequest{Key: "api/evil", Message: []byte("m")}); reason(err) != "NotFound KEY_NOT_FOUND" {
		t.Fatalf("mac with the refused key: %s, want NotFound KEY_NOT_FOUND", reason(err))
	}
}

// metaKeyID reads the CKA_ID of the test token's metadata MAC key, as a
// security team's tool would. The module is shared with the daemon in this
// process: never finalised here.
func metaKeyID(t *testing.T) []byte {
	t.Helper()
	p := pkcs11.New(tok.Module)
	if p == nil {
		t.Fatal("load module")
	}
	if err := p.Initialize(); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		t.Fatal(err)
	}
	slots, err := p.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range slots {
		if ti, err := p.GetTokenInfo(s); err != nil || ti.Label != tok.Label {
			continue
		}
		sh, err := p.OpenSession(s, pkcs11.CKF_SERIAL_SESSION)
		if err != nil {
			t.Fatal(err)
		}
		defer p.CloseSession(sh)
		if err := p.Login(sh, pkcs11.CKU_USER, tok.PIN); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN)) {
			t.Fatal(err)
		}
		if err := p.FindObjectsInit(sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, "keyward:meta-mac-key")}); err != nil {
			t.Fatal(err)
		}
		hs, _, err := p.FindObjects(sh, 2)
		p.FindObjectsFinal(sh)
		if err != nil || len(hs) != 1 {
			t.Fatalf("find the metadata key: %v, %d objects", err, len(hs))
		}
		a, err := p.GetAttributeValue(sh, hs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, nil)})
		if err != nil {
			t.Fatal(err)
		}
		return a[0].Value
	}
	t.Fatalf("token %q not found", tok.Label)
	return nil
}
