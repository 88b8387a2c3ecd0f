package hsm_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/keyward/keyward/hsm"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/keys/keystest"
	softhsmtest "github.com/keyward/keyward/softhsm-test"
)

var tok *softhsmtest.Token

func TestMain(m *testing.M) { os.Exit(softhsmtest.Main(m, &tok)) }

// open returns a backend on the test token, closed with the test.
func open(t testing.TB, mod func(*hsm.Config)) *hsm.Token {
	t.Helper()
	softhsmtest.Need(t, tok)
	cfg := hsm.Config{Module: tok.Module, TokenLabel: tok.Label, PINFile: tok.PINFile}
	if mod != nil {
		mod(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := hsm.Open(ctx, cfg)
	if err != nil {
		t.Fatalf("open token: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func TestConformance(t *testing.T) {
	keystest.Run(t, func(t *testing.T) keys.Backend { return open(t, nil) })
}

// TestConformanceFreshMetadata runs the suite reading every record on
// every operation (MetadataMaxAge < 0) with a minimal session pool.
func TestConformanceFreshMetadata(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	keystest.Run(t, func(t *testing.T) keys.Backend {
		return open(t, func(c *hsm.Config) { c.MetadataMaxAge = -1; c.Sessions = 2 })
	})
}
