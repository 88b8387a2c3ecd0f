package hsm_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keyward/keyward/hsm"
	"github.com/keyward/keyward/keys"
	softhsmtest "github.com/keyward/keyward/softhsm-test"
)

// TestHealthSeesRemovedToken: Health is what keywardd's watchdog trusts, so
// it must fail while the token is gone, without any other call having
// noticed first, and succeed again once the token is back.
func TestHealthSeesRemovedToken(t *testing.T) {
	softhsmtest.Need(t, tok)
	pin, err := tok.InitToken("health")
	if err != nil {
		t.Fatal(err)
	}
	pinFile := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(pinFile, []byte(pin), 0o600); err != nil {
		t.Fatal(err)
	}
	b := open(t, func(c *hsm.Config) { c.TokenLabel, c.PINFile = "health", pinFile })
	ctx := context.Background()
	if err := b.Health(ctx); err != nil {
		t.Fatalf("healthy token: %v", err)
	}
	dir, err := tok.TokenDirOf("health")
	if err != nil {
		t.Fatal(err)
	}
	// Moved out of the tokendir in one rename (SoftHSM2 re-creates files in
	// a directory deleted file by file; a copy inside the tokendir aborts it).
	away := filepath.Join(tok.Dir, "health-away")
	if err := os.Rename(dir, away); err != nil {
		t.Fatal(err)
	}
	if err := b.Health(ctx); !errors.Is(err, keys.ErrUnavailable) {
		t.Fatalf("Health with the token directory gone: %v, want ErrUnavailable", err)
	}
	os.RemoveAll(dir) // whatever SoftHSM2 re-created meanwhile
	if err := os.Rename(away, dir); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second) // ends a hang; measures nothing
	for {
		err := b.Health(ctx)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Health after the token came back: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
