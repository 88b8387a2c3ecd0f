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
	keystest.RunWith(t, func(t *testing.T) keys.Backend { return open(t, nil) }, hooks(t, nil))
}

// hooks are the suite's hooks for Tokens opened with mod; instances they
// open are closed when top ends.
func hooks(top *testing.T, mod func(*hsm.Config)) keystest.Hooks {
	return keystest.Hooks{
		Reopen: func(t *testing.T, be keys.Backend) keys.Backend {
			be.(*hsm.Token).Close()
			return open(top, mod)
		},
		ReadOnly: func(t *testing.T, be keys.Backend) keys.Backend {
			return open(t, func(c *hsm.Config) {
				if mod != nil {
					mod(c)
				}
				c.ReadOnly = true
			})
		},
		TamperGrant: func(t *testing.T, be keys.Backend, id string) {
			if err := be.(*hsm.Token).TamperGrant(t.Context(), id); err != nil {
				t.Fatalf("tamper with grant %s: %v", id, err)
			}
		},
		LimitGrants: func(t *testing.T, be keys.Backend, n int) { be.(*hsm.Token).SetGrantLimit(t, n) },
	}
}

// TestConformanceFreshMetadata runs the suite reading every record on
// every operation (MetadataMaxAge < 0) with a minimal session pool.
func TestConformanceFreshMetadata(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	mod := func(c *hsm.Config) { c.MetadataMaxAge = -1; c.Sessions = 2 }
	keystest.RunWith(t, func(t *testing.T) keys.Backend { return open(t, mod) }, hooks(t, mod))
}
