package hsm_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyward/keyward/hsm"
	"github.com/keyward/keyward/keys"
	softhsmtest "github.com/keyward/keyward/softhsm-test"
)

// TestOffloadedOperations: on a module whose calls wait (the latency
// module, 1 ms per call), every data operation's device calls run on the
// worker threads, one job each, and results are right when many run at
// once (the race detector sees the Go side; the buffers are pinned).
func TestOffloadedOperations(t *testing.T) {
	softhsmtest.Need(t, tok)
	so, err := softhsmtest.BuildLatencyModule(t.TempDir())
	if errors.Is(err, softhsmtest.ErrNoCompiler) && os.Getenv("CI") == "" {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	// The module reads its settings once, when first loaded in this process.
	for _, kv := range (softhsmtest.Latency{Target: tok.Module, RoundTrip: time.Millisecond}).Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	b := open(t, func(c *hsm.Config) { c.Module = so; c.Sessions = 16; c.MetadataMaxAge = time.Hour })
	ctx := context.Background()
	for _, k := range []struct {
		name string
		typ  keys.Type
	}{
		{"offload/aes", keys.AES256GCM}, {"offload/hmac", keys.HMACSHA256}, {"offload/ecdsa", keys.ECDSAP256},
		{"offload/ed25519", keys.Ed25519}, {"offload/rsa", keys.RSA3072PSS},
	} {
		if _, err := b.CreateKey(ctx, k.name, k.typ); err != nil {
			t.Fatal(err)
		}
	}
	msg := []byte("message")
	blob, err := b.Wrap(ctx, "offload/aes", msg, keys.Context{"a": "b"})
	if err != nil {
		t.Fatal(err)
	}
	mac, err := b.MAC(ctx, "offload/hmac", msg)
	if err != nil {
		t.Fatal(err)
	}
	// A version's public key is read once, checked against its private key
	// by a signature (matchesPrivate), and kept: read them now, so that
	// each sign below counts its own operation only.
	for _, k := range []string{"offload/ecdsa", "offload/ed25519", "offload/rsa"} {
		if _, _, err := b.PublicKey(ctx, k, 0); err != nil {
			t.Fatal(err)
		}
	}
	for range 40 { // more than a window of the module's pace
		if _, err := b.MAC(ctx, "offload/hmac", msg); err != nil {
			t.Fatal(err)
		}
	}
	if !b.Stats().OnWorkers {
		t.Fatal("after 40 operations at 2 ms, the module's operations are not on the worker threads")
	}
	ops := []struct {
		name string
		call func() error
	}{
		{"wrap", func() error { _, err := b.Wrap(ctx, "offload/aes", msg, nil); return err }},
		{"unwrap", func() error {
			u, err := b.Unwrap(ctx, blob, keys.Context{"a": "b"})
			if err == nil && !bytes.Equal(u.Plaintext, msg) {
				err = fmt.Errorf("unwrapped %q, want %q", u.Plaintext, msg)
			}
			return err
		}},
		{"mac", func() error { _, err := b.MAC(ctx, "offload/hmac", msg); return err }},
		{"verify-mac", func() error { return b.VerifyMAC(ctx, "offload/hmac", mac.Version, msg, mac.Bytes) }},
		{"sign ecdsa-p256", signed(b, "offload/ecdsa", msg)},
		{"sign ed25519", signed(b, "offload/ed25519", msg)},
		{"sign rsa-3072-pss", signed(b, "offload/rsa", msg)},
		{"verify-mac, wrong mac", func() error {
			bad := bytes.Clone(mac.Bytes)
			bad[0] ^= 1
			if err := b.VerifyMAC(ctx, "offload/hmac", mac.Version, msg, bad); !errors.Is(err, keys.ErrInvalidSignature) {
				return fmt.Errorf("a wrong mac: %v, want ErrInvalidSignature", err)
			}
			return nil
		}},
		{"unwrap, tampered", func() error {
			bad := bytes.Clone(blob)
			bad[len(bad)-1] ^= 1
			if _, err := b.Unwrap(ctx, bad, keys.Context{"a": "b"}); !errors.Is(err, keys.ErrDecrypt) {
				return fmt.Errorf("a tampered blob: %v, want ErrDecrypt", err)
			}
			return nil
		}},
	}
	for _, op := range ops {
		t.Run(op.name, func(t *testing.T) {
			before := b.Offloaded()
			if err := op.call(); err != nil {
				t.Fatal(err)
			}
			if got := b.Offloaded() - before; got != 1 {
				t.Errorf("%s handed %d operations to the worker threads, want 1", op.name, got)
			}
		})
	}
	t.Run("concurrent", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for w := range 64 {
			wg.Go(func() {
				for range 20 {
					pt := []byte(fmt.Sprintf("secret %d", w))
					bl, err := b.Wrap(ctx, "offload/aes", pt, keys.Context{"w": fmt.Sprint(w)})
					if err == nil {
						var u keys.Unwrapped
						if u, err = b.Unwrap(ctx, bl, keys.Context{"w": fmt.Sprint(w)}); err == nil && !bytes.Equal(u.Plaintext, pt) {
							err = fmt.Errorf("worker %d unwrapped %q, want %q", w, u.Plaintext, pt)
						}
					}
					if err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
}

// signed signs msg with key and checks the signature with the key's public
// key, outside the device.
func signed(b keys.Backend, key string, msg []byte) func() error {
	return func() error {
		ctx := context.Background()
		sig, err := b.Sign(ctx, key, msg)
		if err != nil {
			return err
		}
		pub, _, err := b.PublicKey(ctx, key, sig.Version)
		if err != nil {
			return err
		}
		if !keys.VerifySignature(pub, msg, sig.Bytes) {
			return fmt.Errorf("the %s signature does not verify", key)
		}
		return nil
	}
}
