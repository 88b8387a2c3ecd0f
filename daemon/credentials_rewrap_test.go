package daemon

import (
	"context"
	"io"
	"log/slog"
	"testing"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/credstore"
	"github.com/keyward/keyward/keys/keystest"
	"github.com/keyward/keyward/policy"
)

// TestRewrapLosesNoConcurrentPut: a credential put --replace that lands
// while a rewrap of the same credential is between its unwrap and its
// write wins: the rewrap does not write the old secret back over it.
func TestRewrapLosesNoConcurrentPut(t *testing.T) {
	pol, err := policy.Compile([]policy.Rule{{Name: "admin", UIDs: []uint32{memAppUID}, Keys: []string{"**"},
		Operations: []string{"key.create", "key.rotate", "credential.put"}}}, policy.SystemResolver())
	if err != nil {
		t.Fatal(err)
	}
	s := NewService(keystest.NewMem(), "mem", "test", pol, config.Defaults().Limits, slog.New(slog.NewTextHandler(io.Discard, nil)))
	s.audit = &memTrail{}
	s.creds = credstore.New(t.TempDir() + "/credstore")
	ctx := asUID(memAppUID)
	const unit, id, key = "app.service", "db", "creds/k"
	put := func(secret string) {
		t.Helper()
		if _, err := through(s, ctx, "PutCredential", func(ctx context.Context) (*pb.CredentialInfo, error) {
			return s.PutCredential(ctx, &pb.PutCredentialRequest{Unit: unit, Id: id, Key: key, Secret: []byte(secret), Replace: true})
		}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := through(s, ctx, "CreateKey", func(ctx context.Context) (*pb.KeyInfo, error) {
		return s.CreateKey(ctx, &pb.CreateKeyRequest{Key: key, KeyType: "aes-256-gcm"})
	}); err != nil {
		t.Fatal(err)
	}
	put("old-secret")
	if _, err := through(s, ctx, "RotateKey", func(ctx context.Context) (*pb.KeyInfo, error) {
		return s.RotateKey(ctx, &pb.RotateKeyRequest{Key: key})
	}); err != nil {
		t.Fatal(err)
	}
	s.beforeCredReplace = func() { put("new-secret") }
	if _, err := through(s, ctx, "RewrapCredentials", func(ctx context.Context) (*pb.ListCredentialsResponse, error) {
		return s.RewrapCredentials(ctx, &pb.RewrapCredentialsRequest{Unit: unit})
	}); err != nil {
		t.Fatal(err)
	}
	blob, _, err := s.creds.Read(unit, id)
	if err != nil {
		t.Fatal(err)
	}
	u, err := s.be.Unwrap(context.Background(), blob, credstore.Context(unit, id))
	if err != nil {
		t.Fatal(err)
	}
	if string(u.Plaintext) != "new-secret" {
		t.Fatalf("after a rewrap racing a put --replace the store holds %q, want the put's secret", u.Plaintext)
	}
}
