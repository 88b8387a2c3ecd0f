package keywardtest_test

import (
	"context"
	"errors"
	"os"
	"slices"
	"sort"
	"testing"
	"time"

	keywardv1 "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/client"
	"github.com/keyward/keyward/keywardtest"
	"github.com/keyward/keyward/policy"
)

func TestStart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	kw := keywardtest.Start(t, keywardtest.WithKey("app/db", "aes-256-gcm"), keywardtest.WithKey("app/sig", "ed25519"))
	w, err := kw.Client.Wrap(ctx, "app/db", []byte("s3cr3t"), map[string]string{"app": "test"})
	if err != nil {
		t.Fatal(err)
	}
	u, err := kw.Client.Unwrap(ctx, w.GetCiphertext(), map[string]string{"app": "test"})
	if err != nil || string(u.GetPlaintext()) != "s3cr3t" {
		t.Fatalf("unwrap: %v", err)
	}
	list, err := kw.Client.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, k := range list {
		names = append(names, k.GetKey()+" "+k.GetKeyType())
	}
	if want := []string{"app/db aes-256-gcm", "app/sig ed25519"}; !slices.Equal(names, want) {
		t.Errorf("keys %q, want %q", names, want)
	}
	// The default policy lets the test's uid do everything.
	if _, err := kw.Client.CreateKey(ctx, "other/k", "hmac-sha256"); err != nil {
		t.Errorf("create under the default policy: %v", err)
	}
	st, err := kw.Client.Status(ctx)
	if err != nil || !st.GetBackendHealthy() || st.GetYou().GetUid() != uint32(os.Getuid()) {
		t.Errorf("status %v: %v", st, err)
	}
}

// TestRules: the test's policy is the daemon's; keys asked for exist even
// when the policy does not allow creating them.
func TestRules(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	kw := keywardtest.Start(t,
		keywardtest.WithRules(policy.Rule{Name: "wrap only", UIDs: []uint32{uint32(os.Getuid())}, Keys: []string{"app/**"}, Operations: []string{"wrap"}}),
		keywardtest.WithKey("app/db", "aes-256-gcm"),
		keywardtest.WithLimits("max_batch = 1"))
	w, err := kw.Client.Wrap(ctx, "app/db", []byte("x"), nil)
	if err != nil {
		t.Fatalf("wrap, allowed: %v", err)
	}
	if _, err := kw.Client.Unwrap(ctx, w.GetCiphertext(), nil); !errors.Is(err, client.ErrPermissionDenied) {
		t.Errorf("unwrap, not allowed: %v", err)
	}
	if _, err := kw.Client.CreateKey(ctx, "app/new", "aes-256-gcm"); !errors.Is(err, client.ErrPermissionDenied) {
		t.Errorf("create, not allowed: %v", err)
	}
	two := []*keywardv1.WrapRequest{{Key: "app/db"}, {Key: "app/db"}}
	if _, err := kw.Client.BatchWrap(ctx, two); !errors.Is(err, client.ErrInvalidArgument) {
		t.Errorf("a batch of 2 over WithLimits' max_batch 1: %v", err)
	}
}

// TestIsolated: two servers are two tokens: one's keys are not the other's.
func TestIsolated(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := keywardtest.Start(t, keywardtest.WithKey("k/a", "aes-256-gcm"))
	b := keywardtest.Start(t)
	w, err := a.Client.Wrap(ctx, "k/a", []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Client.Unwrap(ctx, w.GetCiphertext(), nil); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("another server's blob: %v, want ErrNotFound", err)
	}
}

// TestClose: Close stops the daemon and removes its socket; a second
// Close (t.Cleanup's) is fine.
func TestClose(t *testing.T) {
	t.Parallel()
	kw := keywardtest.Start(t)
	if err := kw.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(kw.Socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket after Close: %v", err)
	}
	if err := kw.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestStartRefusesBadKey: a bad WithKey is the test's mistake, said before
// anything starts.
func TestStartRefusesBadKey(t *testing.T) {
	ft := &fakeT{TB: t}
	func() {
		defer func() { recover() }()
		keywardtest.Start(ft, keywardtest.WithKey("app/db", "aes-512"))
	}()
	if !ft.fatal {
		t.Error("Start accepted key type aes-512")
	}
}

type fakeT struct {
	testing.TB
	fatal bool
}

func (f *fakeT) Fatalf(string, ...any) { f.fatal = true; panic("fatal") }

// BenchmarkStartToFirstCall measures Start up to the answer of a first
// call: run with -benchtime 20x for the median of 20
// (median-ms; the README quotes it).
func BenchmarkStartToFirstCall(b *testing.B) {
	ctx := context.Background()
	var took []time.Duration
	for b.Loop() {
		start := time.Now()
		kw := keywardtest.Start(b)
		if _, err := kw.Client.Status(ctx); err != nil {
			b.Fatal(err)
		}
		took = append(took, time.Since(start))
		b.StopTimer()
		kw.Close()
		b.StartTimer()
	}
	sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
	b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "median-ms")
}
