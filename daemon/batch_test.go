package daemon_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/config"
)

// TestParallelBatch: a batch's items run in parallel, yet each result is
// its own item's (in order, failures where they were asked), and the audit
// trail has one record per item in item order, as when they run one after
// another (batch_parallelism = 1).
func TestParallelBatch(t *testing.T) {
	for _, par := range []int{1, 8} {
		t.Run(fmt.Sprintf("parallelism %d", par), func(t *testing.T) {
			r := start(t, testRules(), func(c *config.Config) { c.Limits.BatchParallelism = par })
			ctx := context.Background()
			c := dial(t, r.sock)
			key := fmt.Sprintf("app/batch-%d", par)
			if _, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: key, KeyType: "aes-256-gcm"}); err != nil {
				t.Fatal(err)
			}
			var items []*pb.WrapRequest
			var want []string
			for i := range 60 {
				k := key
				if i%7 == 3 {
					k = "app/missing"
				}
				items = append(items, &pb.WrapRequest{Key: k, Plaintext: fmt.Appendf(nil, "item %d", i)})
				want = append(want, "wrap "+k)
			}
			res, err := c.BatchWrap(ctx, &pb.BatchWrapRequest{Items: items})
			if err != nil {
				t.Fatal(err)
			}
			for i, it := range res.GetResults() {
				if (it.GetError() != nil) != (items[i].Key == "app/missing") {
					t.Fatalf("item %d: %+v", i, it)
				}
				if it.GetError() != nil {
					continue
				}
				u, err := c.Unwrap(ctx, &pb.UnwrapRequest{Ciphertext: it.GetOk().GetCiphertext()})
				if err != nil || string(u.Plaintext) != fmt.Sprintf("item %d", i) {
					t.Fatalf("item %d unwraps to %q, %v", i, u.GetPlaintext(), err)
				}
			}
			var got []string
			for _, a := range readAudit(t, filepath.Join(filepath.Dir(r.cfgPath), "audit", "audit.log")) {
				if a.Op == "wrap" {
					got = append(got, a.Op+" "+a.Key)
				}
			}
			if !slices.Equal(got, want) {
				t.Fatalf("audit records of the batch:\n%s\nwant, in item order:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}

// TestBatchVerifyMACLimit: a batch's verify-mac items run one at a time,
// whatever batch_parallelism says, so the failed-guess limit stops a batch
// of guesses after limit+1 of them (in parallel, every item in flight had
// passed the check before the first failure was counted).
func TestBatchVerifyMACLimit(t *testing.T) {
	r := start(t, testRules(), func(c *config.Config) {
		c.Limits.BatchParallelism = 64
		c.Limits.MaxFailedVerifyMacPerMinute = 3
	})
	ctx := context.Background()
	c := dial(t, r.sock)
	if _, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: "app/guess", KeyType: "hmac-sha256"}); err != nil {
		t.Fatal(err)
	}
	var items []*pb.VerifyMacRequest
	for i := range 100 {
		guess := make([]byte, 32)
		guess[0], guess[1] = byte(i), 1
		items = append(items, &pb.VerifyMacRequest{Key: "app/guess", Message: []byte("m"), Mac: guess})
	}
	res, err := c.BatchVerifyMac(ctx, &pb.BatchVerifyMacRequest{Items: items})
	if err != nil {
		t.Fatal(err)
	}
	checked, limited := 0, 0
	for i, it := range res.GetResults() {
		switch {
		case it.GetOk() != nil && !it.GetOk().GetValid():
			checked++
		case it.GetError().GetReason().String() == "RATE_LIMITED":
			limited++
		default:
			t.Fatalf("item %d: %+v", i, it)
		}
	}
	if checked != 4 || limited != 96 {
		t.Errorf("%d guesses checked and %d refused, want 4 (the limit + 1) and 96", checked, limited)
	}
}
