package keystest

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/keyward/keyward/envelope"
	"github.com/keyward/keyward/keys"
)

func testRandom(t *testing.T, be keys.Backend) {
	t.Run("sizes", func(t *testing.T) {
		for _, n := range []int{1, 32, keys.MaxRandom} {
			b, err := be.Random(t.Context(), n)
			must(t, err, "Random(%d)", n)
			if len(b) != n {
				t.Errorf("Random(%d) gave %d bytes", n, len(b))
			}
		}
	})
	t.Run("differ", func(t *testing.T) {
		a, err := be.Random(t.Context(), 32)
		must(t, err, "Random(32)")
		b, err := be.Random(t.Context(), 32)
		must(t, err, "Random(32)")
		if bytes.Equal(a, b) {
			t.Error("two calls of Random(32) gave the same bytes")
		}
		if bytes.Equal(a, make([]byte, 32)) {
			t.Error("Random(32) gave zeros")
		}
	})
	t.Run("bad_size", func(t *testing.T) {
		for _, n := range []int{0, -1, keys.MaxRandom + 1} {
			_, err := be.Random(t.Context(), n)
			wantErr(t, err, fmt.Sprintf("Random(%d)", n), keys.ErrInvalidArgument)
		}
	})
}

func testLimits(t *testing.T, be keys.Backend) {
	name := create(t, be, keys.AES256GCM).Name
	pt := []byte("limits")

	// full is the largest context the limits allow.
	full := keys.Context{}
	for i := range keys.MaxContext {
		k := fmt.Sprintf("%04d", i) + strings.Repeat("k", keys.MaxContextKV-4)
		full[k] = strings.Repeat("v", keys.MaxContextKV)
	}
	t.Run("largest_context", func(t *testing.T) {
		unwrapOK(t, be, wrap(t, be, name, pt, full, 1), full, name, 1, pt)
	})

	blob := wrap(t, be, name, pt, nil, 1)
	for _, tc := range []struct {
		name string
		c    keys.Context
	}{
		{"too_many_pairs", withPair(full, "extra", "")},
		{"empty_key", keys.Context{"": "v"}},
		{"long_key", keys.Context{strings.Repeat("k", keys.MaxContextKV+1): "v"}},
		{"long_value", keys.Context{"k": strings.Repeat("v", keys.MaxContextKV+1)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := be.Wrap(t.Context(), name, pt, tc.c)
			wantErr(t, err, "Wrap", keys.ErrInvalidArgument)
			// Checked before the blob is even opened.
			_, err = be.Unwrap(t.Context(), blob, tc.c)
			wantErr(t, err, "Unwrap", keys.ErrInvalidArgument)
		})
	}

	big := make([]byte, keys.MaxPlaintext+1)
	t.Run("sign_too_large", func(t *testing.T) {
		k := create(t, be, keys.ECDSAP256).Name
		_, err := be.Sign(t.Context(), k, big)
		wantErr(t, err, "Sign of keys.MaxPlaintext+1 bytes", keys.ErrInvalidArgument)
	})
	t.Run("mac_too_large", func(t *testing.T) {
		k := create(t, be, keys.HMACSHA256).Name
		_, err := be.MAC(t.Context(), k, big)
		wantErr(t, err, "MAC of keys.MaxPlaintext+1 bytes", keys.ErrInvalidArgument)
	})
}

// withPair returns a copy of c with one more pair.
func withPair(c keys.Context, k, v string) keys.Context {
	out := make(keys.Context, len(c)+1)
	for ck, cv := range c {
		out[ck] = cv
	}
	out[k] = v
	return out
}

func testConcurrency(t *testing.T, be keys.Backend) {
	const workers, rounds = 8, 50
	name := create(t, be, keys.AES256GCM).Name
	var (
		mu     sync.Mutex
		nonces = map[string]bool{} // distinct nonces imply distinct blobs
		wg     sync.WaitGroup
	)
	for w := range workers {
		wg.Go(func() {
			for i := range rounds {
				// Distinct plaintexts catch answers crossed between calls.
				pt := fmt.Appendf(nil, "worker %d round %d", w, i)
				c := keys.Context{"worker": fmt.Sprint(w)}
				blob, err := be.Wrap(t.Context(), name, pt, c)
				if err != nil {
					t.Errorf("worker %d round %d: Wrap: %v", w, i, err)
					return
				}
				u, err := be.Unwrap(t.Context(), blob, c)
				if err != nil {
					t.Errorf("worker %d round %d: Unwrap: %v", w, i, err)
					return
				}
				if !bytes.Equal(u.Plaintext, pt) {
					t.Errorf("worker %d round %d: Unwrap gave another plaintext", w, i)
					return
				}
				h, _, err := envelope.Decode(blob)
				if err != nil {
					t.Errorf("worker %d round %d: envelope.Decode: %v", w, i, err)
					return
				}
				mu.Lock()
				dup := nonces[string(h.Nonce)]
				nonces[string(h.Nonce)] = true
				mu.Unlock()
				if dup {
					t.Errorf("worker %d round %d: a nonce was used twice", w, i)
				}
			}
		})
	}
	wg.Wait()
}

func testHealth(t *testing.T, be keys.Backend) {
	if err := be.Health(t.Context()); err != nil {
		t.Errorf("Health: %v", err)
	}
}
