package hsm_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyward/keyward/hsm"
	"github.com/keyward/keyward/keys"
)

// TestConcurrentKeyChanges: keys created, rotated and their versions
// destroyed on some goroutines while others list and describe keys (which
// search the token) and wrap with a record read on every call. On SoftHSM2
// a search during another session's C_GenerateKey used to wipe the new
// object's attributes (C_GenerateKey: CKR_TEMPLATE_INCONSISTENT or
// CKR_GENERAL_ERROR, about 1 generate in 300); the module's object lock
// keeps them apart, and every call here must succeed.
// KEYWARD_OBJECT_RACE_DURATION sets how long it runs (default 3s).
func TestConcurrentKeyChanges(t *testing.T) {
	d := 3 * time.Second
	if s := os.Getenv("KEYWARD_OBJECT_RACE_DURATION"); s != "" {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			t.Fatalf("KEYWARD_OBJECT_RACE_DURATION=%q: %v", s, err)
		}
	}
	b := open(t, func(c *hsm.Config) { c.MetadataMaxAge = -1 })
	ctx := context.Background()
	prefix := fmt.Sprintf("race%d", time.Now().UnixNano()%1e9)
	stable := prefix + "/stable"
	if _, err := b.CreateKey(ctx, stable, keys.AES256GCM); err != nil {
		t.Fatal(err)
	}
	stop := time.Now().Add(d)
	var creates, rotates, destroys, reads, wraps atomic.Int64
	var wg sync.WaitGroup
	fail := func(what string, err error) {
		t.Errorf("%s: %v", what, err)
	}
	for g := range 2 { // key changes
		wg.Go(func() {
			for i := 0; time.Now().Before(stop) && !t.Failed(); i++ {
				name := fmt.Sprintf("%s/g%d-%d", prefix, g, i)
				if _, err := b.CreateKey(ctx, name, keys.AES256GCM); err != nil {
					fail("create "+name, err)
					return
				}
				creates.Add(1)
				if _, err := b.RotateKey(ctx, name); err != nil {
					fail("rotate "+name, err)
					return
				}
				rotates.Add(1)
				if _, err := b.SetVersionState(ctx, name, 1, keys.Disabled); err != nil {
					fail("disable "+name, err)
					return
				}
				if _, err := b.DestroyVersion(ctx, name, 1); err != nil {
					fail("destroy "+name, err)
					return
				}
				destroys.Add(1)
			}
		})
	}
	for range 2 { // searches: every key's record, and one by name
		wg.Go(func() {
			for time.Now().Before(stop) && !t.Failed() {
				if _, err := b.ListKeys(ctx); err != nil {
					fail("list", err)
					return
				}
				if _, err := b.DescribeKey(ctx, stable); err != nil {
					fail("describe", err)
					return
				}
				reads.Add(2)
			}
		})
	}
	wg.Go(func() { // data: the record is read on every call
		for time.Now().Before(stop) && !t.Failed() {
			blob, err := b.Wrap(ctx, stable, []byte("x"), nil)
			if err == nil {
				_, err = b.Unwrap(ctx, blob, nil)
			}
			if err != nil {
				fail("wrap/unwrap", err)
				return
			}
			wraps.Add(1)
		}
	})
	wg.Wait()
	t.Logf("%v: %d creates, %d rotations, %d destroys, %d list/describe, %d wrap+unwrap",
		d, creates.Load(), rotates.Load(), destroys.Load(), reads.Load(), wraps.Load())
	if creates.Load() == 0 || reads.Load() == 0 || wraps.Load() == 0 {
		t.Fatal("a kind of call never ran")
	}
	// Nothing left behind: every key made here lists, with its versions.
	all, err := b.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, k := range all {
		if strings.HasPrefix(k.Name, prefix+"/") {
			n++
		}
	}
	if want := int(creates.Load()) + 1; n != want {
		t.Errorf("%d keys listed, %d created", n, want)
	}
}
