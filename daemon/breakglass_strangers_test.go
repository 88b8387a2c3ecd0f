package daemon_test

import (
	"crypto/rand"
	"encoding/hex"
	"testing"
	"time"

	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/keys/keystest"
)

// TestBreakglassStrangerFlood: through the socket, a uid no policy names
// that approves random grant ids is refused each time, and past
// max_denied_per_minute its calls are refused when they open
// (RATE_LIMITED); the requester and approvers are not affected.
func TestBreakglassStrangerFlood(t *testing.T) {
	clock := &testClock{now: time.Now()}
	be := keystest.NewMem()
	if _, err := be.CreateKey(t.Context(), "db/sign", keys.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	d, err := startBG(t, bgDir(t), be, clock, 1)
	if err != nil {
		t.Fatal(err)
	}
	outsider := as(t, d.sock, outsideUID)
	limit := config.Defaults().Limits.MaxDeniedPerMinute
	for range limit + 1 { // "more often than" the limit
		b := make([]byte, 16)
		rand.Read(b)
		expect(t, outsider, "bg-approve "+hex.EncodeToString(b), "PermissionDenied PERMISSION_DENIED")
	}
	expect(t, outsider, "bg-approve 0123456789abcdef0123456789abcdef", "ResourceExhausted RATE_LIMITED")
	id := requestGrant(t, as(t, d.sock, bgRequesterUID), "db-emergency db/sign sign 600 INC-12")
	expect(t, as(t, d.sock, bgApproverUID), "bg-approve "+id, "OK active")
}
