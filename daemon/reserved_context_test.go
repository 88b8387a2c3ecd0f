package daemon_test

import (
	"context"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	pb "github.com/keyward/keyward/api/keyward/v1"
	kwclient "github.com/keyward/keyward/client"
	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/policy"
)

// snoopUID may wrap and unwrap with every key, under any context.
const snoopUID = 12005

// TestReservedContextKMS: a caller granted wrap and unwrap on kms_key
// (through "**") can neither open a Kubernetes ciphertext through the main
// API, under the reserved context or the one KMS blobs had before, nor
// make a ciphertext the KMS Decrypt accepts; every main-API operation that
// takes a context refuses a reserved key, batch items included.
func TestReservedContextKMS(t *testing.T) {
	rules := append(testRules(),
		policy.Rule{Name: "kube-apiserver", UIDs: []uint32{0}, Keys: []string{"res/kms"}, Operations: []string{"kms.encrypt", "kms.decrypt"}},
		policy.Rule{Name: "snoop", UIDs: []uint32{snoopUID}, Keys: []string{"**"}, Operations: []string{"wrap", "unwrap"}})
	var kmsSock string
	r := start(t, rules, func(c *config.Config) {
		kmsSock = filepath.Join(filepath.Dir(c.Socket), "kms.sock")
		c.KMSSocket, c.KMSKey = kmsSock, "res/kms"
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	root := dial(t, r.sock)
	if _, err := root.CreateKey(ctx, &pb.CreateKeyRequest{Key: "res/kms", KeyType: "aes-256-gcm"}); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("unix://"+kmsSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	kc := kmsapi.NewKeyManagementServiceClient(conn)
	const seed = "seed-5f0c2a9e7b41d836"
	enc, err := kc.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: []byte(seed), Uid: "u1"})
	if err != nil {
		t.Fatal(err)
	}
	snoop := as(t, r.sock, snoopUID)
	blob := hex.EncodeToString(enc.Ciphertext)
	for _, c := range []string{"keyward.internal/purpose=kubernetes-kms-v2", "kubernetes.io/kms=v2"} {
		if got := snoop.do("unwrap " + blob + " " + c); strings.Contains(got, seed) || strings.HasPrefix(got, "OK") {
			t.Errorf("unwrap of a KMS ciphertext with %s through the API: %q", c, got)
		}
	}
	if got := snoop.do("unwrap " + blob + " keyward.internal/purpose=kubernetes-kms-v2"); got != "InvalidArgument INVALID_REQUEST" {
		t.Errorf("unwrap with a reserved context key = %q, want InvalidArgument INVALID_REQUEST", got)
	}
	for _, c := range []string{"keyward.internal/purpose=kubernetes-kms-v2", "kubernetes.io/kms=v2"} {
		got := snoop.do("wrap res/kms " + c)
		code, forged, _ := strings.Cut(got, " ")
		if code != "OK" {
			continue // refused: nothing to forge with
		}
		b, _ := hex.DecodeString(forged)
		if dec, err := kc.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: b, KeyId: enc.KeyId, Uid: "u2"}); err == nil {
			t.Errorf("KMS Decrypt accepted a blob wrapped through the API with %s: %q", c, dec.Plaintext)
		}
	}
	if got := snoop.do("wrap res/kms keyward.internal/purpose=kubernetes-kms-v2"); got != "InvalidArgument INVALID_REQUEST" {
		t.Errorf("wrap with a reserved context key = %q", got)
	}
	rc := map[string]string{"keyward.internal/purpose": "kubernetes-kms-v2", "app": "web"}
	calls := map[string]func() error{
		"wrap": func() error {
			_, err := root.Wrap(ctx, &pb.WrapRequest{Key: "res/kms", Plaintext: []byte("x"), Context: rc})
			return err
		},
		"rewrap": func() error {
			_, err := root.Rewrap(ctx, &pb.RewrapRequest{Ciphertext: enc.Ciphertext, Context: rc})
			return err
		},
		"datakey": func() error {
			_, err := root.GenerateDataKey(ctx, &pb.GenerateDataKeyRequest{Key: "res/kms", Context: rc})
			return err
		},
		"batch unwrap item": func() error {
			resp, err := root.BatchUnwrap(ctx, &pb.BatchUnwrapRequest{Items: []*pb.UnwrapRequest{{Ciphertext: enc.Ciphertext, Context: rc}}})
			if err != nil {
				return err
			}
			return itemErr(resp.GetResults()[0].GetError())
		},
		"batch wrap item": func() error {
			resp, err := root.BatchWrap(ctx, &pb.BatchWrapRequest{Items: []*pb.WrapRequest{{Key: "res/kms", Plaintext: []byte("x"), Context: rc}}})
			if err != nil {
				return err
			}
			return itemErr(resp.GetResults()[0].GetError())
		},
	}
	for name, call := range calls {
		err := call()
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "keyward.internal/") {
			t.Errorf("%s with a reserved context key (root, every data operation on **): %v, want INVALID_ARGUMENT naming the reserved prefix", name, err)
		}
	}
}

// itemErr is a batch item's error as a call's, nil when it succeeded.
func itemErr(e *pb.ItemError) error {
	if e == nil {
		return nil
	}
	return status.Error(codes.Code(e.GetCode()), e.GetMessage())
}

// TestReservedContextCredential: the same caller can neither open a stored
// credential's blob through the API nor make one the credential socket
// serves, under the reserved context or the {unit, credential} one stored
// credentials had before.
func TestReservedContextCredential(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("credential tests need root")
	}
	sfx := randHex(4)
	unit := "res-" + sfx + ".service"
	var credSock, credDir string
	rules := append(testRules(),
		policy.Rule{Name: "put", UIDs: []uint32{0}, Keys: []string{"**"}, Operations: []string{"credential.put"}},
		policy.Rule{Name: "unit", Units: []string{unit}, Keys: []string{"res/cred"}, Operations: []string{"credential"}},
		policy.Rule{Name: "snoop", UIDs: []uint32{snoopUID}, Keys: []string{"**"}, Operations: []string{"wrap", "unwrap"}})
	r := start(t, rules, func(c *config.Config) {
		credSock = filepath.Join(filepath.Dir(c.Socket), "credentials.sock")
		credDir = filepath.Join(filepath.Dir(filepath.Dir(c.Socket)), "credstore")
		c.CredentialsSocket, c.CredentialsDir = credSock, credDir
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := kwclient.Dial(ctx, r.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.CreateKey(ctx, "res/cred", "aes-256-gcm"); err != nil {
		t.Fatal(err)
	}
	const secret = "cred-secret-8d2f61"
	if _, err := c.PutCredential(ctx, unit, "db", "res/cred", []byte(secret), false); err != nil {
		t.Fatal(err)
	}
	stored, err := os.ReadFile(filepath.Join(credDir, unit, "db"))
	if err != nil {
		t.Fatal(err)
	}
	snoop := as(t, r.sock, snoopUID)
	reserved := "keyward.internal/purpose=systemd-credential,keyward.internal/unit=" + unit + ",keyward.internal/credential=db"
	for _, ctxText := range []string{reserved, "unit=" + unit + ",credential=db"} {
		if got := snoop.do("unwrap " + hex.EncodeToString(stored) + " " + ctxText); strings.HasPrefix(got, "OK") {
			t.Errorf("unwrap of a stored credential with %s through the API: %q", ctxText, got)
		}
	}
	cg := testCgroup(t, unit)
	for _, ctxText := range []string{reserved, "unit=" + unit + ",credential=db"} {
		code, forged, _ := strings.Cut(snoop.do("wrap res/cred "+ctxText), " ")
		if code != "OK" {
			continue
		}
		b, _ := hex.DecodeString(forged)
		if err := os.WriteFile(filepath.Join(credDir, unit, "db"), b, 0o600); err != nil {
			t.Fatal(err)
		}
		if got := askCredential(t, credSock, cg, randHex(7)+"/unit/"+unit+"/db", 0); got != "REFUSED" {
			t.Errorf("a blob wrapped through the API with %s was served: %q", ctxText, got)
		}
	}
}
