package keystest

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/keyward/keyward/keys"
)

// testOpenSSL checks signatures with a second, independent implementation:
// what Go's crypto accepts, OpenSSL must accept too.
func testOpenSSL(t *testing.T, be keys.Backend) {
	bin, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl is not on PATH")
	}
	for _, tc := range []struct {
		typ keys.Type
		// input is what pkeyutl reads: ECDSA signs a SHA-256 digest, Ed25519
		// the raw message.
		input func(msg []byte) []byte
		args  []string
	}{
		{keys.ECDSAP256, func(msg []byte) []byte { d := sha256.Sum256(msg); return d[:] }, nil},
		{keys.Ed25519, func(msg []byte) []byte { return msg }, []string{"-rawin"}},
	} {
		t.Run(string(tc.typ), func(t *testing.T) {
			name := create(t, be, tc.typ).Name
			msg := []byte("verify me with openssl")
			sig, err := be.Sign(t.Context(), name, msg)
			must(t, err, "Sign")
			pub, _, err := be.PublicKey(t.Context(), name, sig.Version)
			must(t, err, "PublicKey")
			der, err := x509.MarshalPKIXPublicKey(pub)
			must(t, err, "x509.MarshalPKIXPublicKey")

			dir := t.TempDir()
			write := func(file string, b []byte) string {
				p := filepath.Join(dir, file)
				must(t, os.WriteFile(p, b, 0o600), "write %s", file)
				return p
			}
			pubPath := write("pub.pem", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
			sigPath := write("sig", sig.Bytes)
			verify := func(msg []byte) (bool, string) {
				in := write("in", tc.input(msg))
				args := append([]string{"pkeyutl", "-verify", "-pubin", "-inkey", pubPath}, tc.args...)
				args = append(args, "-in", in, "-sigfile", sigPath)
				out, err := exec.CommandContext(t.Context(), bin, args...).CombinedOutput()
				return err == nil && bytes.Contains(out, []byte("Signature Verified Successfully")), string(out)
			}

			if ok, out := verify(msg); !ok {
				t.Errorf("openssl does not verify the signature:\n%s", out)
			}
			if ok, out := verify(flip(msg, 0)); ok {
				t.Errorf("openssl verifies the signature over a changed message:\n%s", out)
			}
		})
	}
}
