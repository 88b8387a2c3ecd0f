package envelope_test

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"os"
	"strings"
	"testing"

	"github.com/keyward/keyward/envelope"
	"github.com/keyward/keyward/keys"
)

var update = flag.Bool("update", false, "rewrite testdata/vectors.json from vectorInputs")

const vectorsFile = "testdata/vectors.json"

// Test-only keys: published in this file and in vectors.json, never used anywhere else.
const (
	testAESKey    = "keyward-envelope-test-key-000001" // alg 1: the token's AES-256 key
	testMasterKey = "keyward-envelope-test-master-001" // alg 2: the TPM's HMAC key
)

type vector struct {
	Comment      string            `json:"comment"`
	Alg          envelope.Alg      `json:"alg"`
	KeyHex       string            `json:"key_hex"`                // alg 1: AES-256 key; alg 2: HMAC-SHA256 master key
	WrapKeyHex   string            `json:"wrap_key_hex,omitempty"` // alg 2: the derived per-message key k
	Name         string            `json:"name"`
	Version      uint32            `json:"version"`
	NonceHex     string            `json:"nonce_hex"`
	Context      map[string]string `json:"context"`
	PlaintextHex string            `json:"plaintext_hex"`
	AADHex       string            `json:"aad_hex"`
	BlobHex      string            `json:"blob_hex"`
}

type vectorFileT struct {
	Comment string   `json:"comment"`
	Vectors []vector `json:"vectors"`
}

func seq(n int, start byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = start + byte(i)
	}
	return b
}

// vectorInputs are the inputs of the committed vectors; -update computes the
// rest (wrap key, AAD, blob).
func vectorInputs() []vector {
	aesKey, master := hex.EncodeToString([]byte(testAESKey)), hex.EncodeToString([]byte(testMasterKey))
	name128 := "team-a/" + strings.Repeat("x", keys.MaxNameLen-len("team-a/")-len("/db.key")) + "/db.key"
	return []vector{
		{Comment: "alg 1, empty plaintext (ciphertext is the tag alone), empty context", Alg: envelope.AlgPKCS11GCM, KeyHex: aesKey,
			Name: "payments/db", Version: 1, NonceHex: hex.EncodeToString(seq(12, 0x00)), Context: map[string]string{},
			PlaintextHex: ""},
		{Comment: "alg 1, one context pair", Alg: envelope.AlgPKCS11GCM, KeyHex: aesKey,
			Name: "payments/db", Version: 2, NonceHex: hex.EncodeToString(seq(12, 0x10)), Context: map[string]string{"tenant": "acme"},
			PlaintextHex: hex.EncodeToString([]byte("hello, keyward"))},
		{Comment: "alg 1, 128-byte name, three pairs (sorted in the AAD), 32-byte data key", Alg: envelope.AlgPKCS11GCM, KeyHex: aesKey,
			Name: name128, Version: 7, NonceHex: hex.EncodeToString(seq(12, 0x20)),
			Context:      map[string]string{"tenant": "acme", "purpose": "db-password", "region": "eu-west-1"},
			PlaintextHex: hex.EncodeToString(seq(32, 0x00))},
		{Comment: "alg 1, MaxVersion, empty and non-ASCII values, 100-byte plaintext", Alg: envelope.AlgPKCS11GCM, KeyHex: aesKey,
			Name: "k", Version: keys.MaxVersion, NonceHex: "ffffffffffffffffffffffff",
			Context:      map[string]string{"a": "bc", "b": "", "unicode": "\u00fc\u20ac"},
			PlaintextHex: hex.EncodeToString(seq(100, 0x80))},
		{Comment: "alg 2, one context pair", Alg: envelope.AlgTPMHMACGCM, KeyHex: master,
			Name: "tpm/disk", Version: 1, NonceHex: hex.EncodeToString(seq(32, 0x40)), Context: map[string]string{"host": "node-1"},
			PlaintextHex: hex.EncodeToString([]byte("swordfish"))},
		{Comment: "alg 2, empty context, 64-byte plaintext", Alg: envelope.AlgTPMHMACGCM, KeyHex: master,
			Name: "tpm/disk", Version: 42, NonceHex: hex.EncodeToString(seq(32, 0xc0)), Context: map[string]string{},
			PlaintextHex: hex.EncodeToString(seq(64, 0x00))},
	}
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("bad hex %q: %v", s, err)
	}
	return b
}

// sealKey returns the AES-256-GCM key and IV for v, per docs/envelope.md.
func sealKey(t *testing.T, v vector) (key, iv []byte) {
	t.Helper()
	key, nonce := mustHex(t, v.KeyHex), mustHex(t, v.NonceHex)
	switch v.Alg {
	case envelope.AlgPKCS11GCM:
		return key, nonce
	case envelope.AlgTPMHMACGCM:
		m := hmac.New(sha256.New, key)
		m.Write([]byte("keyward/v1/wrap\x00"))
		m.Write(nonce)
		return m.Sum(nil), make([]byte, 12)
	}
	t.Fatalf("vector alg %d", v.Alg)
	return nil, nil
}

func gcm(t *testing.T, key []byte) cipher.AEAD {
	t.Helper()
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	a, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func (v vector) header(t *testing.T) envelope.Header {
	return envelope.Header{Alg: v.Alg, Name: v.Name, Version: v.Version, Nonce: mustHex(t, v.NonceHex)}
}

// compute fills the derived fields of v.
func compute(t *testing.T, v vector) vector {
	t.Helper()
	key, iv := sealKey(t, v)
	if v.Alg == envelope.AlgTPMHMACGCM {
		v.WrapKeyHex = hex.EncodeToString(key)
	}
	aad, err := v.header(t).AAD(v.Context)
	if err != nil {
		t.Fatal(err)
	}
	ct := gcm(t, key).Seal(nil, iv, mustHex(t, v.PlaintextHex), aad)
	blob, err := envelope.Encode(v.header(t), ct)
	if err != nil {
		t.Fatal(err)
	}
	v.AADHex, v.BlobHex = hex.EncodeToString(aad), hex.EncodeToString(blob)
	return v
}

func TestVectors(t *testing.T) {
	if *update {
		f := vectorFileT{
			Comment: "keyward envelope v1 test vectors; keys are test-only. Regenerate: go test ./envelope -run TestVectors -update",
		}
		for _, v := range vectorInputs() {
			f.Vectors = append(f.Vectors, compute(t, v))
		}
		out, err := json.MarshalIndent(f, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(vectorsFile, append(out, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	data, err := os.ReadFile(vectorsFile)
	if err != nil {
		t.Fatal(err)
	}
	var f vectorFileT
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		t.Fatal(err)
	}
	counts := map[envelope.Alg]int{}
	for _, v := range f.Vectors {
		counts[v.Alg]++
	}
	if counts[envelope.AlgPKCS11GCM] < 4 || counts[envelope.AlgTPMHMACGCM] < 2 {
		t.Fatalf("vectors per alg = %v, want at least 4 for alg 1 and 2 for alg 2", counts)
	}

	for _, v := range f.Vectors {
		t.Run(v.Comment, func(t *testing.T) {
			got := compute(t, v)
			if got.WrapKeyHex != v.WrapKeyHex {
				t.Errorf("wrap key = %s, want %s", got.WrapKeyHex, v.WrapKeyHex)
			}
			if got.AADHex != v.AADHex {
				t.Errorf("AAD = %s, want %s", got.AADHex, v.AADHex)
			}
			if got.BlobHex != v.BlobHex {
				t.Fatalf("blob = %s, want %s", got.BlobHex, v.BlobHex)
			}

			blob := mustHex(t, v.BlobHex)
			h, ct, err := envelope.Decode(blob)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if h.Alg != v.Alg || h.Name != v.Name || h.Version != v.Version || hex.EncodeToString(h.Nonce) != v.NonceHex {
				t.Fatalf("Decode header = %+v", h)
			}
			key, iv := sealKey(t, v)
			aead := gcm(t, key)
			open := func(c keys.Context) ([]byte, error) {
				aad, err := h.AAD(c)
				if err != nil {
					t.Fatal(err)
				}
				return aead.Open(nil, iv, ct, aad)
			}
			pt, err := open(v.Context)
			if err != nil || !bytes.Equal(pt, mustHex(t, v.PlaintextHex)) {
				t.Fatalf("open = %x, %v", pt, err)
			}

			// Any change of context must fail to open.
			changed := []keys.Context{{"x": "y"}, withPair(v.Context, "tenant2", "acme")}
			for k, val := range v.Context {
				changed = append(changed, withPair(v.Context, k, val+"!"))
				c := withPair(v.Context, k, "")
				delete(c, k)
				changed = append(changed, c)
			}
			if len(v.Context) != 0 {
				changed = append(changed, nil)
			}
			for _, c := range changed {
				if _, err := open(c); err == nil {
					t.Errorf("opened under changed context %q", c)
				}
			}
			// So must a blob whose header says another version.
			h2 := h
			h2.Version = h.Version%keys.MaxVersion + 1
			aad, _ := h2.AAD(v.Context)
			if _, err := aead.Open(nil, iv, ct, aad); err == nil {
				t.Errorf("opened with version %d in the AAD", h2.Version)
			}
		})
	}
}

func withPair(c keys.Context, k, v string) keys.Context {
	out := keys.Context{}
	for a, b := range c {
		out[a] = b
	}
	out[k] = v
	return out
}
