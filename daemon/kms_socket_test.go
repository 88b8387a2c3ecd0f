package daemon_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/internal/testutil"
	"github.com/keyward/keyward/policy"
)

// TestKMSSocketHygieneAndMetrics runs the KMS endpoint in the daemon on its
// own socket (the real codec, gate and interceptors) with a marker seed
// through Encrypt, Decrypt, a refused Decrypt and a denied caller, at debug
// log level: the seed appears in no log line, audit record or metric; the
// calls are counted under kms.* and the first key_id is counted.
func TestKMSSocketHygieneAndMetrics(t *testing.T) {
	var logs testutil.SyncBuffer
	metricsSock := filepath.Join(t.TempDir(), "metrics.sock")
	rules := append(testRules(), policy.Rule{Name: "kube-apiserver", UIDs: []uint32{0}, Keys: []string{"hyg/kms"}, Operations: []string{"kms.encrypt", "kms.decrypt"}})
	var kmsSock string
	r := startWith(t, rules, func(c *config.Config) {
		c.MetricsSocket = metricsSock
		kmsSock = filepath.Join(filepath.Dir(c.Socket), "kms.sock")
		c.KMSSocket, c.KMSKey = kmsSock, "hyg/kms"
	}, &logs)
	ctx := context.Background()
	if _, err := dial(t, r.sock).CreateKey(ctx, &pb.CreateKeyRequest{Key: "hyg/kms", KeyType: "aes-256-gcm"}); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("unix://"+kmsSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	kc := kmsapi.NewKeyManagementServiceClient(conn)
	const seed = "MARKER-seed-0b7d5e3c9a1f2468ace0"
	st, err := kc.Status(ctx, &kmsapi.StatusRequest{})
	if err != nil || st.Healthz != "ok" || st.Version != "v2" {
		t.Fatalf("Status = %v, %v", st, err)
	}
	enc, err := kc.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: []byte(seed), Uid: "req-1"})
	if err != nil || enc.KeyId != st.KeyId {
		t.Fatalf("Encrypt = %v, %v (Status key_id %q)", enc, err, st.KeyId)
	}
	dec, err := kc.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId, Uid: "req-2"})
	if err != nil || string(dec.Plaintext) != seed {
		t.Fatalf("Decrypt = %v", err)
	}
	if _, err := kc.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: "keyward:hyg/kms:v9:0"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("Decrypt with another key_id = %v", err)
	}
	page := scrape(t, metricsSock)
	auditRaw, err := os.ReadFile(filepath.Join(filepath.Dir(r.cfgPath), "audit", "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	for what, text := range map[string]string{"log": logs.String(), "metrics": page, "audit log": string(auditRaw)} {
		if strings.Contains(text, seed) {
			t.Errorf("the seed appears in the %s", what)
		}
	}
	for _, want := range []string{
		`keyward_requests_total{method="kms.Encrypt",result="OK"} 1`,
		`keyward_requests_total{method="kms.Decrypt",result="OK"} 1`,
		`keyward_requests_total{method="kms.Decrypt",result="INVALID_REQUEST"} 1`,
		`keyward_requests_total{method="kms.Status",result="OK"} 1`,
		`keyward_request_duration_seconds_bucket{method="kms.Encrypt"`,
		`keyward_kms_key_id_changes_total 1`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("metrics page lacks %q", want)
		}
	}
	for _, want := range []string{`"op":"kms.encrypt","key":"hyg/kms","version":1`, `"caller_ref":"req-1"`, `"result":"INVALID_REQUEST"`} {
		if !strings.Contains(string(auditRaw), want) {
			t.Errorf("audit log lacks %s", want)
		}
	}
	if t.Failed() {
		t.Logf("metrics:\n%s", grepLines(page, "keyward_"))
	}
}

// TestKMSOversizedUIDAudited: an Encrypt or Decrypt whose uid is over what
// an audit record holds is refused and still recorded, with the uid
// clipped, rather than leaving no audit line.
func TestKMSOversizedUIDAudited(t *testing.T) {
	rules := append(testRules(), policy.Rule{Name: "kube-apiserver", UIDs: []uint32{0}, Keys: []string{"uid/kms"}, Operations: []string{"kms.encrypt", "kms.decrypt"}})
	var kmsSock string
	r := start(t, rules, func(c *config.Config) {
		kmsSock = filepath.Join(filepath.Dir(c.Socket), "kms.sock")
		c.KMSSocket, c.KMSKey = kmsSock, "uid/kms"
	})
	ctx := context.Background()
	if _, err := dial(t, r.sock).CreateKey(ctx, &pb.CreateKeyRequest{Key: "uid/kms", KeyType: "aes-256-gcm"}); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("unix://"+kmsSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	kc := kmsapi.NewKeyManagementServiceClient(conn)
	uid := "long-uid-" + strings.Repeat("é", 300)
	if _, err := kc.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: make([]byte, 32), Uid: uid}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("Encrypt with a %d-byte uid = %v, want InvalidArgument", len(uid), err)
	}
	if _, err := kc.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: []byte("x"), KeyId: "k", Uid: uid}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("Decrypt with a %d-byte uid = %v, want InvalidArgument", len(uid), err)
	}
	raw, err := os.ReadFile(filepath.Join(filepath.Dir(r.cfgPath), "audit", "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]bool{}
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.Contains(line, `"caller_ref":"long-uid-`) && strings.Contains(line, `"result":"INVALID_REQUEST"`) && strings.Contains(line, "sha256:") {
			for _, op := range []string{"kms.encrypt", "kms.decrypt"} {
				if strings.Contains(line, `"op":"`+op+`"`) {
					found[op] = true
				}
			}
		}
	}
	if !found["kms.encrypt"] || !found["kms.decrypt"] {
		t.Errorf("records of the refused calls with the uid clipped: %v; want both", found)
	}
}

// TestKMSMessageBound: a KMS request is bounded to 64 KiB, not
// max_message: the KMS socket counts its calls apart from the API socket's
// (a flood on one does not shut the apiserver out of the other), so what a
// uid can make keywardd hold there must stay small.
func TestKMSMessageBound(t *testing.T) {
	rules := append(testRules(), policy.Rule{Name: "kube-apiserver", UIDs: []uint32{0}, Keys: []string{"bound/kms"}, Operations: []string{"kms.encrypt", "kms.decrypt"}})
	var kmsSock string
	start(t, rules, func(c *config.Config) {
		kmsSock = filepath.Join(filepath.Dir(c.Socket), "kms.sock")
		c.KMSSocket, c.KMSKey = kmsSock, "bound/kms"
	})
	conn, err := grpc.NewClient("unix://"+kmsSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	kc := kmsapi.NewKeyManagementServiceClient(conn)
	if _, err := kc.Encrypt(context.Background(), &kmsapi.EncryptRequest{Plaintext: make([]byte, 70<<10), Uid: "big"}); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("a 70 KiB KMS request: %v, want ResourceExhausted (over 64 KiB)", err)
	}
}
