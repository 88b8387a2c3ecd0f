package hsm_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"

	"github.com/keyward/keyward/hsm"
	"github.com/keyward/keyward/keys"
)

// TestNonExportable proves, from outside the backend, that every key type's
// objects cannot leave the token: CKA_VALUE is refused, C_WrapKey is
// refused, the token vouches they were never extractable and always
// sensitive, and none of the protecting attributes can be changed.
func TestNonExportable(t *testing.T) {
	b := open(t, nil)
	ctx := context.Background()
	p, sh := rawSession(t)
	// A wrapping key an attacker with the PIN could make.
	wrapper, err := p.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32), pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, true), pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
	})
	if err != nil {
		t.Fatal(err)
	}
	wrapMech := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}
	// Control: the same C_WrapKey on an extractable key works, so a refusal
	// below is the token protecting keyward's keys, not a bad mechanism.
	control, err := p.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32), pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.WrapKey(sh, wrapMech, wrapper, control); err != nil {
		t.Fatalf("control C_WrapKey of an extractable key: %v", err)
	}
	for _, ty := range keys.Types {
		t.Run(string(ty), func(t *testing.T) {
			name := "protect/" + strings.ReplaceAll(string(ty), "-", "")
			if _, err := b.CreateKey(ctx, name, ty); err != nil {
				t.Fatal(err)
			}
			class := uint(pkcs11.CKO_SECRET_KEY)
			if ty.Asymmetric() {
				class = pkcs11.CKO_PRIVATE_KEY
			}
			hs := rawFind(t, p, sh, pkcs11.NewAttribute(pkcs11.CKA_CLASS, class), pkcs11.NewAttribute(pkcs11.CKA_LABEL, "keyward:"+name+":v1"))
			if len(hs) != 1 {
				t.Fatalf("found %d objects for %s v1", len(hs), name)
			}
			h := hs[0]
			valueAttr := uint(pkcs11.CKA_VALUE)
			if ty == keys.RSA3072PSS {
				valueAttr = pkcs11.CKA_PRIVATE_EXPONENT
			}
			_, err := p.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(valueAttr, nil)})
			wantCKR(t, "read key value", err, pkcs11.CKR_ATTRIBUTE_SENSITIVE)

			_, err = p.WrapKey(sh, wrapMech, wrapper, h)
			wantCKR(t, "C_WrapKey", err, pkcs11.CKR_KEY_UNEXTRACTABLE, pkcs11.CKR_KEY_NOT_WRAPPABLE)

			got, err := p.GetAttributeValue(sh, h, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_NEVER_EXTRACTABLE, nil), pkcs11.NewAttribute(pkcs11.CKA_ALWAYS_SENSITIVE, nil),
				pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil), pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
				pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, nil), pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, nil),
				pkcs11.NewAttribute(pkcs11.CKA_TOKEN, nil), pkcs11.NewAttribute(pkcs11.CKA_LOCAL, nil),
			})
			if err != nil {
				t.Fatal(err)
			}
			want := map[uint]bool{pkcs11.CKA_NEVER_EXTRACTABLE: true, pkcs11.CKA_ALWAYS_SENSITIVE: true, pkcs11.CKA_EXTRACTABLE: false,
				pkcs11.CKA_SENSITIVE: true, pkcs11.CKA_PRIVATE: true, pkcs11.CKA_MODIFIABLE: false, pkcs11.CKA_TOKEN: true, pkcs11.CKA_LOCAL: true}
			for _, a := range got {
				if v := len(a.Value) > 0 && a.Value[0] != 0; v != want[a.Type] {
					t.Errorf("attribute 0x%x = %v, want %v", a.Type, v, want[a.Type])
				}
			}
			for _, change := range []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
				pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false),
				pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
				pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
				pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, "stolen"),
			} {
				err := p.SetAttributeValue(sh, h, []*pkcs11.Attribute{change})
				if err == nil {
					t.Errorf("changing attribute 0x%x succeeded", change.Type)
				}
			}
			// The key still works after all of that.
			if ty == keys.AES256GCM {
				blob, err := b.Wrap(ctx, name, []byte("x"), nil)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := b.Unwrap(ctx, blob, nil); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
	rep, err := b.Doctor(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range rep.Findings {
		if strings.HasPrefix(f.Key, "protect/") {
			t.Errorf("doctor finding on a generated key: %+v", f)
		}
	}
}

// pkcs11Tool runs OpenSC's pkcs11-tool against the test token; the PIN goes
// through the environment, not argv.
func pkcs11Tool(t *testing.T, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("pkcs11-tool"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("pkcs11-tool (opensc) is not installed: make test installs it")
		}
		t.Skip("pkcs11-tool (opensc) is not installed: run make test")
	}
	cmd := exec.Command("pkcs11-tool", append([]string{"--module", tok.Module, "--token-label", tok.Label, "--login", "--pin", "env:KW_TEST_PIN"}, args...)...)
	cmd.Env = append(os.Environ(), "KW_TEST_PIN="+tok.PIN)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("pkcs11-tool %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// TestAdopt: a key a security team made with pkcs11-tool is adopted only
// when the token protects it.
func TestAdopt(t *testing.T) {
	b := open(t, nil)
	ctx := context.Background()
	pkcs11Tool(t, "--keygen", "--key-type", "AES:32", "--label", "team-public-aes", "--sensitive", "--id", "a1")
	pkcs11Tool(t, "--keygen", "--key-type", "AES:32", "--label", "team-private-aes", "--sensitive", "--private", "--id", "a2")
	pkcs11Tool(t, "--keygen", "--key-type", "AES:16", "--label", "team-short-aes", "--sensitive", "--private", "--id", "a3")
	pkcs11Tool(t, "--keygen", "--key-type", "AES:32", "--label", "team-extractable", "--private", "--extractable", "--id", "a4")
	pkcs11Tool(t, "--keypairgen", "--key-type", "EC:prime256v1", "--label", "team-ec", "--private", "--sensitive", "--id", "a5", "--usage-sign")

	tests := []struct {
		name, key, ref string
		ty             keys.Type
		wantErr        error
	}{
		{name: "not private", key: "team/a", ref: "team-public-aes", ty: keys.AES256GCM, wantErr: keys.ErrWeakKey},
		{name: "extractable", key: "team/b", ref: "pkcs11:object=team-extractable", ty: keys.AES256GCM, wantErr: keys.ErrWeakKey},
		{name: "wrong size", key: "team/c", ref: "team-short-aes", ty: keys.AES256GCM, wantErr: keys.ErrInvalidArgument},
		{name: "wrong type", key: "team/d", ref: "team-private-aes", ty: keys.HMACSHA256, wantErr: keys.ErrInvalidArgument},
		{name: "missing", key: "team/e", ref: "pkcs11:object=nope", ty: keys.AES256GCM, wantErr: keys.ErrKeyNotFound},
		{name: "keyward object", key: "team/f", ref: "keyward:meta-mac-key", ty: keys.HMACSHA256, wantErr: keys.ErrInvalidArgument},
		{name: "private sensitive aes", key: "team/aes", ref: "pkcs11:object=team-private-aes;id=%a2;type=secret-key", ty: keys.AES256GCM},
		{name: "private sensitive ec", key: "team/ec", ref: "team-ec", ty: keys.ECDSAP256},
		{name: "twice", key: "team/aes", ref: "team-private-aes", ty: keys.AES256GCM, wantErr: keys.ErrKeyExists},
		{name: "one object under a second name", key: "team/aes2", ref: "team-private-aes", ty: keys.AES256GCM, wantErr: keys.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			info, err := b.AdoptKey(ctx, tt.key, tt.ty, tt.ref)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !info.Adopted || len(info.Versions) != 1 {
				t.Fatalf("info = %+v", info)
			}
		})
	}
	// Usages beyond the type's, which pkcs11-tool sets, are turned off.
	p, sh := rawSession(t)
	for _, o := range []struct {
		class uint
		label string
	}{{pkcs11.CKO_SECRET_KEY, "team-private-aes"}, {pkcs11.CKO_PRIVATE_KEY, "team-ec"}} {
		hs := rawFind(t, p, sh, pkcs11.NewAttribute(pkcs11.CKA_CLASS, o.class), pkcs11.NewAttribute(pkcs11.CKA_LABEL, o.label))
		if len(hs) != 1 {
			t.Fatalf("%d objects labelled %s", len(hs), o.label)
		}
		for _, u := range []uint{pkcs11.CKA_WRAP, pkcs11.CKA_UNWRAP, pkcs11.CKA_DERIVE} {
			a, err := p.GetAttributeValue(sh, hs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(u, nil)})
			if err == nil && len(a[0].Value) > 0 && a[0].Value[0] != 0 {
				t.Errorf("adopted %s keeps usage 0x%x", o.label, u)
			}
		}
	}
	blob, err := b.Wrap(ctx, "team/aes", []byte("adopted"), keys.Context{"a": "b"})
	if err != nil {
		t.Fatal(err)
	}
	if u, err := b.Unwrap(ctx, blob, keys.Context{"a": "b"}); err != nil || string(u.Plaintext) != "adopted" {
		t.Fatalf("unwrap with adopted key: %v", err)
	}
	sig, err := b.Sign(ctx, "team/ec", []byte("m"))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Verify(ctx, "team/ec", sig.Version, []byte("m"), sig.Bytes); err != nil {
		t.Fatal(err)
	}
	// Rotation generates a keyward version beside the adopted one.
	if info, err := b.RotateKey(ctx, "team/aes"); err != nil || len(info.Versions) != 2 {
		t.Fatalf("rotate adopted: %+v %v", info, err)
	}
	if _, err := b.Unwrap(ctx, blob, keys.Context{"a": "b"}); err != nil {
		t.Fatal(err)
	}
	// pkcs11-tool keys are modifiable (adopt turned their extra usages
	// off, above, but cannot change that): the doctor says so, and only that.
	rep, err := b.Doctor(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var problems []string
	for _, f := range rep.Findings {
		if f.Key == "team/aes" && f.Version == 1 {
			problems = append(problems, f.Problem)
		}
	}
	if joined := strings.Join(problems, "; "); len(problems) != 1 || !strings.Contains(joined, "modifiable") {
		t.Errorf("doctor on adopted pkcs11-tool key: %q, want its being modifiable only", joined)
	}
	if rep.Weak() == 0 {
		t.Error("report not weak")
	}
}

// TestDoctorFindsPlantedObjects: an object carrying keyward's label prefix
// that no record references, and a weak one, are reported.
func TestDoctorFindsPlantedObjects(t *testing.T) {
	b := open(t, nil)
	ctx := context.Background()
	p, sh := rawSession(t)
	_, err := p.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32), pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, "keyward:planted:v1"), pkcs11.NewAttribute(pkcs11.CKA_ID, []byte{9}),
	})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := b.Doctor(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, f := range rep.Findings {
		if f.Label == "keyward:planted:v1" {
			got = append(got, fmt.Sprintf("%v %s", f.Weak, f.Problem))
		}
	}
	joined := strings.Join(got, "\n")
	for _, want := range []string{"no key record references", "true extractable", "true not private"} {
		if !strings.Contains(joined, want) {
			t.Errorf("findings for planted object:\n%s\nlack %q", joined, want)
		}
	}
}

// TestRecordIntegrity: a record edited, or copied from another key, is
// refused; nobody without the token's metadata key can forge one.
func TestRecordIntegrity(t *testing.T) {
	// Records read on every operation, so the data path sees the edit at once
	// (with a max age it would within that age; DescribeKey always reads).
	b := open(t, func(c *hsm.Config) { c.MetadataMaxAge = -1 })
	ctx := context.Background()
	for _, n := range []string{"integrity/a", "integrity/b"} {
		if _, err := b.CreateKey(ctx, n, keys.AES256GCM); err != nil {
			t.Fatal(err)
		}
	}
	blob, err := b.Wrap(ctx, "integrity/b", []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	p, sh := rawSession(t)
	record := func(name string) (pkcs11.ObjectHandle, []byte) {
		hs := rawFind(t, p, sh, pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_DATA), pkcs11.NewAttribute(pkcs11.CKA_LABEL, "keyward:meta:"+name))
		if len(hs) != 1 {
			t.Fatalf("%d records for %s", len(hs), name)
		}
		a, err := p.GetAttributeValue(sh, hs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
		if err != nil {
			t.Fatal(err)
		}
		return hs[0], a[0].Value
	}
	replace := func(name string, value []byte) {
		h, _ := record(name)
		if err := p.DestroyObject(sh, h); err != nil {
			t.Fatal(err)
		}
		if _, err := p.CreateObject(sh, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_DATA), pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true), pkcs11.NewAttribute(pkcs11.CKA_LABEL, "keyward:meta:"+name),
			pkcs11.NewAttribute(pkcs11.CKA_APPLICATION, "keyward"), pkcs11.NewAttribute(pkcs11.CKA_VALUE, value),
		}); err != nil {
			t.Fatal(err)
		}
	}
	_, rawB := record("integrity/b")
	_, rawA := record("integrity/a")

	// Edit b's record: set the version's state by hand (JSON is after magic+MAC).
	edited := []byte(strings.Replace(string(rawB), `"state":"enabled"`, `"state":"disabled"`, 1))
	replace("integrity/b", edited)
	if _, err := b.DescribeKey(ctx, "integrity/b"); !errors.Is(err, keys.ErrIntegrity) {
		t.Fatalf("edited record: err = %v, want ErrIntegrity", err)
	}
	if _, err := b.Unwrap(ctx, blob, nil); !errors.Is(err, keys.ErrIntegrity) {
		t.Fatalf("unwrap under edited record: err = %v, want ErrIntegrity", err)
	}
	if _, err := b.ListKeys(ctx); !errors.Is(err, keys.ErrIntegrity) {
		t.Fatalf("list with an edited record: err = %v, want ErrIntegrity", err)
	}
	// a's genuine record copied onto b: MAC verifies, name does not.
	replace("integrity/b", rawA)
	if _, err := b.DescribeKey(ctx, "integrity/b"); !errors.Is(err, keys.ErrIntegrity) {
		t.Fatalf("copied record: err = %v, want ErrIntegrity", err)
	}
	// Restoring the genuine record restores service.
	replace("integrity/b", rawB)
	if _, err := b.Unwrap(ctx, blob, nil); err != nil {
		t.Fatalf("after restoring the record: %v", err)
	}
	rep, err := b.Doctor(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range rep.Findings {
		if f.Key == "integrity/b" {
			t.Errorf("finding after restore: %+v", f)
		}
	}
}

// TestOpenErrors: the PIN file must be private, a wrong PIN and an absent
// token each fail with their own error.
func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := dir + "/" + name
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
		return p
	}
	tests := []struct {
		name    string
		cfg     hsm.Config
		wantErr error
	}{
		{name: "world-readable pin", cfg: hsm.Config{Module: tok.Module, TokenLabel: tok.Label, PINFile: write("open", tok.PIN, 0o644)}, wantErr: errAny},
		{name: "wrong pin", cfg: hsm.Config{Module: tok.Module, TokenLabel: tok.Label, PINFile: write("wrong", "not-the-pin", 0o600)}, wantErr: hsm.ErrCredential},
		{name: "no token", cfg: hsm.Config{Module: tok.Module, TokenLabel: "absent", PINFile: tok.PINFile}, wantErr: hsm.ErrTokenNotFound},
		{name: "no module", cfg: hsm.Config{Module: "/nonexistent/lib.so", TokenLabel: tok.Label, PINFile: tok.PINFile}, wantErr: hsm.ErrModule},
		{name: "label and uri", cfg: hsm.Config{Module: tok.Module, TokenLabel: tok.Label, URI: "pkcs11:token=x", PINFile: tok.PINFile}, wantErr: hsm.ErrConfig},
		{name: "uri with pin", cfg: hsm.Config{Module: tok.Module, URI: "pkcs11:token=x?pin-value=1", PINFile: tok.PINFile}, wantErr: hsm.ErrConfig},
		{name: "by uri", cfg: hsm.Config{Module: tok.Module, URI: "pkcs11:token=" + tok.Label, PINFile: tok.PINFile}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := hsm.Open(context.Background(), tt.cfg)
			if b != nil {
				defer b.Close()
			}
			switch {
			case tt.wantErr == errAny:
				if err == nil {
					t.Fatal("want an error")
				}
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
			case err != nil:
				t.Fatal(err)
			}
			if err != nil && strings.Contains(err.Error(), tok.PIN) {
				t.Fatal("error text contains the PIN")
			}
		})
	}
}

var errAny = errors.New("any error")

// TestReadOnly: a read-only Token serves data operations and refuses every
// change with ErrUnsupported.
func TestReadOnly(t *testing.T) {
	rw := open(t, nil)
	ctx := context.Background()
	if _, err := rw.CreateKey(ctx, "readonly/k", keys.AES256GCM); err != nil {
		t.Fatal(err)
	}
	ro := open(t, func(c *hsm.Config) { c.ReadOnly = true })
	blob, err := ro.Wrap(ctx, "readonly/k", []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ro.Unwrap(ctx, blob, nil); err != nil {
		t.Fatal(err)
	}
	changes := map[string]func() error{
		"create":  func() error { _, err := ro.CreateKey(ctx, "readonly/new", keys.AES256GCM); return err },
		"rotate":  func() error { _, err := ro.RotateKey(ctx, "readonly/k"); return err },
		"disable": func() error { _, err := ro.SetVersionState(ctx, "readonly/k", 1, keys.Disabled); return err },
		"destroy": func() error { _, err := ro.DestroyVersion(ctx, "readonly/k", 1); return err },
		"min":     func() error { _, err := ro.SetMinDecryptVersion(ctx, "readonly/k", 1); return err },
		"adopt":   func() error { _, err := ro.AdoptKey(ctx, "readonly/a", keys.AES256GCM, "x"); return err },
	}
	for name, f := range changes {
		if err := f(); !errors.Is(err, keys.ErrUnsupported) {
			t.Errorf("%s through a read-only token: err = %v, want ErrUnsupported", name, err)
		}
	}
	if info, err := rw.DescribeKey(ctx, "readonly/k"); err != nil || len(info.Versions) != 1 || info.Versions[0].State != keys.Enabled {
		t.Fatalf("key changed: %+v %v", info, err)
	}
}

// TestAdoptedKeysSharingAnID: two key pairs made with the same CKA_ID (as
// `pkcs11-tool --id 01` twice makes) and adopted as two keys each answer
// with their own public key: a signature of one does not verify as the
// other's.
func TestAdoptedKeysSharingAnID(t *testing.T) {
	b := open(t, nil)
	ctx := context.Background()
	for _, l := range []string{"shared-id-a", "shared-id-b"} {
		pkcs11Tool(t, "--keypairgen", "--key-type", "EC:prime256v1", "--label", l, "--private", "--sensitive", "--id", "b7", "--usage-sign")
	}
	for _, k := range []struct{ name, ref string }{{"shared/a", "pkcs11:object=shared-id-a;id=%b7"}, {"shared/b", "pkcs11:object=shared-id-b;id=%b7"}} {
		if _, err := b.AdoptKey(ctx, k.name, keys.ECDSAP256, k.ref); err != nil {
			t.Fatalf("adopt %s: %v", k.name, err)
		}
	}
	pa, _, err := b.PublicKey(ctx, "shared/a", 0)
	if err != nil {
		t.Fatal(err)
	}
	pb, _, err := b.PublicKey(ctx, "shared/b", 0)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(pa) == fmt.Sprint(pb) {
		t.Fatal("both keys answer with the same public key")
	}
	sig, err := b.Sign(ctx, "shared/a", []byte("m"))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Verify(ctx, "shared/a", sig.Version, []byte("m"), sig.Bytes); err != nil {
		t.Fatalf("verify as a: %v", err)
	}
	if err := b.Verify(ctx, "shared/b", sig.Version, []byte("m"), sig.Bytes); err == nil {
		t.Fatal("a's signature verifies as b's")
	}
}

// TestAdoptLostRecordResponse: an adoption whose record create took effect
// but failed is reported done (the rerun finds it), not as KEY_EXISTS.
func TestAdoptLostRecordResponse(t *testing.T) {
	b := open(t, nil)
	ctx := context.Background()
	pkcs11Tool(t, "--keygen", "--key-type", "AES:32", "--label", "lost-adopt", "--sensitive", "--private", "--id", "c1")
	b.LoseRecordResponse(t, 1)
	ki, err := b.AdoptKey(ctx, "team/lost", keys.AES256GCM, "lost-adopt")
	if err != nil || len(ki.Versions) != 1 {
		t.Fatalf("AdoptKey with its record's response lost = %+v, %v", ki, err)
	}
	blob, err := b.Wrap(ctx, "team/lost", []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Unwrap(ctx, blob, nil); err != nil {
		t.Fatal(err)
	}
}

// TestDoctorObjectOfTwoKeys: doctor flags, as weak, an object two key
// records name (adopting one object twice, before that was refused), and
// destroying one key's version keeps the object the other still names.
func TestDoctorObjectOfTwoKeys(t *testing.T) {
	b := open(t, nil)
	ctx := context.Background()
	pkcs11Tool(t, "--keygen", "--key-type", "AES:32", "--label", "twice-named", "--sensitive", "--private", "--id", "d1")
	if _, err := b.AdoptKey(ctx, "twice/a", keys.AES256GCM, "twice-named"); err != nil {
		t.Fatal(err)
	}
	if err := b.CopyRecordAs(ctx, "twice/a", "twice/b"); err != nil {
		t.Fatal(err)
	}
	rep, err := b.Doctor(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, f := range rep.Findings {
		if f.Label == "twice-named" && f.Weak && strings.Contains(f.Problem, "the object is also key") {
			found = true
		}
	}
	if !found {
		t.Fatalf("doctor does not flag the object of two keys: %+v", rep.Findings)
	}
	// Destroying one key's version leaves the object the other names.
	if _, err := b.DestroyVersion(ctx, "twice/b", 1); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Wrap(ctx, "twice/a", []byte("x"), nil); err != nil {
		t.Fatalf("wrap with twice/a after destroying twice/b v1: %v", err)
	}
}

// objectID returns the CKA_ID of the one key object with this label, read
// from outside the backend.
func objectID(t *testing.T, class uint, label string) []byte {
	t.Helper()
	p, sh := rawSession(t)
	hs := rawFind(t, p, sh, pkcs11.NewAttribute(pkcs11.CKA_CLASS, class), pkcs11.NewAttribute(pkcs11.CKA_LABEL, label))
	if len(hs) != 1 {
		t.Fatalf("%d objects labelled %q", len(hs), label)
	}
	a, err := p.GetAttributeValue(sh, hs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, nil)})
	if err != nil {
		t.Fatal(err)
	}
	return a[0].Value
}

// pctID percent-encodes every byte of id, as an RFC 7512 id attribute.
func pctID(id []byte) string {
	var s strings.Builder
	for _, c := range id {
		fmt.Fprintf(&s, "%%%02x", c)
	}
	return s.String()
}

// TestAdoptRefusesKeywardObjects: whatever attributes the URI names, an
// object keyward uses itself (its metadata MAC key, a version it generated)
// or one another key's record names is never adopted: adopting the MAC key
// would let a key admin MAC forged records, and destroying it would make
// every key of the token unusable.
func TestAdoptRefusesKeywardObjects(t *testing.T) {
	b := open(t, nil)
	ctx := context.Background()
	if _, err := b.CreateKey(ctx, "reserved/managed", keys.HMACSHA256); err != nil {
		t.Fatal(err)
	}
	if _, err := b.CreateKey(ctx, "reserved/ec", keys.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	pkcs11Tool(t, "--keygen", "--key-type", "GENERIC:32", "--label", "reserved-team-mac", "--sensitive", "--private", "--id", "e1")
	pkcs11Tool(t, "--keygen", "--key-type", "GENERIC:32", "--label", "reserved-team-mac2", "--sensitive", "--private", "--id", "e2")
	if _, err := b.AdoptKey(ctx, "reserved/adopted", keys.HMACSHA256, "pkcs11:id=%e1"); err != nil {
		t.Fatal(err)
	}
	metaID := pctID(objectID(t, pkcs11.CKO_SECRET_KEY, "keyward:meta-mac-key"))
	versionID := pctID(objectID(t, pkcs11.CKO_SECRET_KEY, "keyward:reserved/managed:v1"))
	ecID := pctID(objectID(t, pkcs11.CKO_PRIVATE_KEY, "keyward:reserved/ec:v1"))
	serial := ""
	if p, sh := rawSession(t); p != nil {
		si, err := p.GetSessionInfo(sh)
		if err != nil {
			t.Fatal(err)
		}
		ti, err := p.GetTokenInfo(si.SlotID)
		if err != nil {
			t.Fatal(err)
		}
		serial = ti.SerialNumber
	}
	tests := []struct {
		name, key, ref string
		ty             keys.Type
		wantErr        error
	}{
		{name: "metadata key by id", key: "api/evil", ref: "pkcs11:id=" + metaID, ty: keys.HMACSHA256, wantErr: hsm.ErrReservedObject},
		{name: "metadata key by label", key: "api/evil", ref: "keyward:meta-mac-key", ty: keys.HMACSHA256, wantErr: hsm.ErrReservedObject},
		{name: "metadata key by object=", key: "api/evil", ref: "pkcs11:object=keyward:meta-mac-key", ty: keys.HMACSHA256, wantErr: hsm.ErrReservedObject},
		{name: "metadata key by serial and id", key: "api/evil", ref: "pkcs11:serial=" + serial + ";id=" + metaID + ";type=secret-key", ty: keys.HMACSHA256, wantErr: hsm.ErrReservedObject},
		{name: "metadata key by token and id", key: "api/evil", ref: "pkcs11:token=" + tok.Label + ";id=" + metaID, ty: keys.HMACSHA256, wantErr: hsm.ErrReservedObject},
		{name: "managed version by id", key: "api/evil", ref: "pkcs11:id=" + versionID, ty: keys.HMACSHA256, wantErr: hsm.ErrReservedObject},
		{name: "managed key pair by id", key: "api/evil", ref: "pkcs11:id=" + ecID, ty: keys.ECDSAP256, wantErr: hsm.ErrReservedObject},
		{name: "adopted object by id", key: "api/evil", ref: "pkcs11:id=%e1", ty: keys.HMACSHA256, wantErr: hsm.ErrReservedObject},
		{name: "adopted object by label", key: "api/evil", ref: "reserved-team-mac", ty: keys.HMACSHA256, wantErr: hsm.ErrReservedObject},
		{name: "object of another token's serial", key: "api/evil", ref: "pkcs11:serial=0000;id=%e2", ty: keys.HMACSHA256, wantErr: keys.ErrInvalidArgument},
		{name: "legitimate by id", key: "api/team", ref: "pkcs11:id=%e2", ty: keys.HMACSHA256},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			info, err := b.AdoptKey(ctx, tt.key, tt.ty, tt.ref)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				// The daemon answers INVALID_REQUEST for it.
				if !errors.Is(err, keys.ErrInvalidArgument) {
					t.Fatalf("err = %v does not wrap keys.ErrInvalidArgument", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !info.Adopted || len(info.Versions) != 1 {
				t.Fatalf("info = %+v", info)
			}
		})
	}
	if _, err := b.DescribeKey(ctx, "api/evil"); !errors.Is(err, keys.ErrKeyNotFound) {
		t.Fatalf("a refused adoption left a key: %v", err)
	}
	if _, err := b.MAC(ctx, "api/team", []byte("m")); err != nil {
		t.Fatal(err)
	}
}

// TestDoctorRecordNamingKeywardObjects: a key record that names an object
// keyward uses itself (the metadata MAC key, another key's version), as an
// adoption before they were refused could leave, is a weak finding; the
// data path refuses the metadata key, and destroying the version leaves the
// keyring's own object alone.
func TestDoctorRecordNamingKeywardObjects(t *testing.T) {
	b := open(t, nil)
	ctx := context.Background()
	if _, err := b.CreateKey(ctx, "planted/victim", keys.HMACSHA256); err != nil {
		t.Fatal(err)
	}
	metaID := objectID(t, pkcs11.CKO_SECRET_KEY, "keyward:meta-mac-key")
	victimID := objectID(t, pkcs11.CKO_SECRET_KEY, "keyward:planted/victim:v1")
	if err := b.PlantAdoptedRecord(ctx, "planted/meta", keys.HMACSHA256, "keyward:meta-mac-key", metaID); err != nil {
		t.Fatal(err)
	}
	if err := b.PlantAdoptedRecord(ctx, "planted/other", keys.HMACSHA256, "keyward:planted/victim:v1", victimID); err != nil {
		t.Fatal(err)
	}
	rep, err := b.Doctor(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"planted/meta", "planted/other"} {
		found := false
		for _, f := range rep.Findings {
			if f.Key == key && f.Version == 1 && f.Weak && strings.Contains(f.Problem, "keyward uses itself") {
				found = true
			}
		}
		if !found {
			t.Errorf("doctor does not flag %s, whose record names a keyward object: %+v", key, rep.Findings)
		}
	}
	if _, err := b.MAC(ctx, "planted/meta", []byte("m")); !errors.Is(err, keys.ErrIntegrity) {
		t.Fatalf("MAC with the metadata key through a planted record: err = %v, want ErrIntegrity", err)
	}
	if _, err := b.DestroyVersion(ctx, "planted/meta", 1); err != nil {
		t.Fatal(err)
	}
	if _, err := b.DestroyVersion(ctx, "planted/other", 1); err != nil {
		t.Fatal(err)
	}
	// The metadata key and the victim's version survive: records still verify.
	b.Close()
	b2 := open(t, nil)
	if _, err := b2.MAC(ctx, "planted/victim", []byte("m")); err != nil {
		t.Fatalf("after destroying the planted versions: %v", err)
	}
	if _, err := b2.ListKeys(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestTokenNotFoundNamesTokens: a token the module does not show is
// reported with the labels of the tokens it does show and, for SoftHSM2,
// the $SOFTHSM2_CONF it found them through.
func TestTokenNotFoundNamesTokens(t *testing.T) {
	open(t, nil)
	conf := os.Getenv("SOFTHSM2_CONF")
	if conf == "" {
		t.Fatal("the test token's SOFTHSM2_CONF is not set")
	}
	for _, cfg := range []hsm.Config{
		{Module: tok.Module, TokenLabel: "absent", PINFile: tok.PINFile},
		{Module: tok.Module, URI: "pkcs11:token=" + tok.Label + ";serial=0000", PINFile: tok.PINFile},
	} {
		_, err := hsm.Open(context.Background(), cfg)
		if !errors.Is(err, hsm.ErrTokenNotFound) {
			t.Fatalf("err = %v, want ErrTokenNotFound", err)
		}
		for _, w := range []string{"shows the token(s) ", strconv.Quote(tok.Label), "$SOFTHSM2_CONF, here " + strconv.Quote(conf)} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("err = %q, lacks %q", err, w)
			}
		}
		if strings.Contains(err.Error(), tok.PIN) {
			t.Fatal("error text contains the PIN")
		}
	}
}
