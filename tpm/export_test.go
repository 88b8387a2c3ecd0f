package tpm_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/tpm"
	"github.com/keyward/keyward/tpm/swtpmtest"
)

// TestNonExportable: outside tools see a keyward object as bound to this TPM
// and this parent. The test loads a keyward blob with plain go-tpm, makes it
// persistent so tpm2-tools can address it, asks tpm2_readpublic for its
// attributes, and tries TPM2_Duplicate (the only way a TPM object leaves
// its TPM), which the TPM must refuse. It refuses twice over: a keyward
// object has no authPolicy, so no policy session can take the DUP role
// (TPM_RC_POLICY_FAIL, what swtpm answers first), and fixedParent forbids
// duplication whatever the policy (TPM_RC_ATTRIBUTES).
func TestNonExportable(t *testing.T) {
	if _, err := exec.LookPath("tpm2_readpublic"); err != nil {
		t.Fatalf("tpm2-tools not installed: run make deps (%v)", err)
	}
	sw := swtpmtest.Start(t)
	dir := t.TempDir()
	be := open(t, sw.Device(), dir)
	for _, ty := range []keys.Type{keys.AES256GCM, keys.ECDSAP256} {
		mustCreate(t, be, "export/"+string(ty), ty)
	}
	be.Close() // swtpm serves one client at a time

	for i, ty := range []keys.Type{keys.AES256GCM, keys.ECDSAP256} {
		t.Run(string(ty), func(t *testing.T) {
			persistent := tpm2.TPMHandle(0x81000100 + uint32(i))
			var rec struct {
				Versions []struct {
					Blob struct{ Public, Private []byte }
				}
			}
			data, err := os.ReadFile(filepath.Join(dir, "keys", "export%2F"+string(ty)+".json"))
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(data, &rec); err != nil {
				t.Fatal(err)
			}
			conn, err := tpm.Dial(sw.Device())
			if err != nil {
				t.Fatal(err)
			}
			srk, err := (tpm2.CreatePrimary{
				PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
				InPublic:      tpm2.New2B(tpm2.ECCSRKTemplate),
			}).Execute(conn)
			if err != nil {
				t.Fatal(err)
			}
			pub, _ := tpm2.Unmarshal[tpm2.TPM2BPublic](rec.Versions[0].Blob.Public)
			priv, _ := tpm2.Unmarshal[tpm2.TPM2BPrivate](rec.Versions[0].Blob.Private)
			obj, err := (tpm2.Load{
				ParentHandle: tpm2.AuthHandle{Handle: srk.ObjectHandle, Name: srk.Name, Auth: tpm2.PasswordAuth(nil)},
				InPrivate:    *priv, InPublic: *pub,
			}).Execute(conn)
			if err != nil {
				t.Fatalf("loading a keyward blob with go-tpm: %v", err)
			}
			// Duplicate needs a policy session naming TPM2_Duplicate.
			sess, closeSess, err := tpm2.PolicySession(conn, tpm2.TPMAlgSHA256, 16)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := (tpm2.PolicyCommandCode{PolicySession: sess.Handle(), Code: tpm2.TPMCCDuplicate}).Execute(conn); err != nil {
				t.Fatal(err)
			}
			_, err = (tpm2.Duplicate{
				ObjectHandle:    tpm2.AuthHandle{Handle: obj.ObjectHandle, Name: obj.Name, Auth: sess},
				NewParentHandle: tpm2.TPMRHNull,
				Symmetric:       tpm2.TPMTSymDef{Algorithm: tpm2.TPMAlgNull},
			}).Execute(conn)
			closeSess()
			if err == nil {
				t.Fatal("TPM2_Duplicate of a keyward object succeeded")
			}
			if !errors.Is(err, tpm2.TPMRCAttributes) && !errors.Is(err, tpm2.TPMRCPolicyFail) {
				t.Fatalf("TPM2_Duplicate: %v, want TPM_RC_ATTRIBUTES or TPM_RC_POLICY_FAIL", err)
			}
			t.Logf("TPM2_Duplicate refused: %v", err)
			if _, err := (tpm2.EvictControl{
				Auth:             tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
				ObjectHandle:     &tpm2.NamedHandle{Handle: obj.ObjectHandle, Name: obj.Name},
				PersistentHandle: persistent,
			}).Execute(conn); err != nil {
				t.Fatalf("EvictControl: %v", err)
			}
			(tpm2.FlushContext{FlushHandle: obj.ObjectHandle}).Execute(conn)
			(tpm2.FlushContext{FlushHandle: srk.ObjectHandle}).Execute(conn)
			conn.Close()

			cmd := exec.Command("tpm2_readpublic", "-c", fmt.Sprintf("0x%08x", uint32(persistent)))
			cmd.Env = sw.ToolsEnv()
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("tpm2_readpublic: %v\n%s", err, out)
			}
			var attrs string
			lines := strings.Split(string(out), "\n")
			for j, l := range lines {
				if strings.HasPrefix(l, "attributes:") && j+1 < len(lines) {
					attrs = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(lines[j+1]), "value:"))
				}
			}
			t.Logf("tpm2_readpublic attributes: %s", attrs)
			for _, want := range []string{"fixedtpm", "fixedparent", "sensitivedataorigin", "userwithauth", "noda"} {
				if !strings.Contains("|"+attrs+"|", "|"+want+"|") {
					t.Errorf("tpm2_readpublic attributes %q lack %s:\n%s", attrs, want, out)
				}
			}
		})
	}
}
