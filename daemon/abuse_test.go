package daemon

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestAbuseWindow: over the limit a caller (uid and unit) is refused for
// the rest of the window; other uids, other units of the same uid and other
// kinds are not; one warning per caller and window; a new window starts
// clean.
func TestAbuseWindow(t *testing.T) {
	var logs bytes.Buffer
	a := newAbuse(slog.New(slog.NewTextHandler(&logs, nil)))
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	a.now = func() time.Time { return now }
	const limit = 3
	web := caller{uid: 1000, unit: "web.service"}
	other := caller{uid: 1001, unit: "web.service"}
	batch := caller{uid: 1000, unit: "batch.service"}
	if a.over(web, abuseDenied, limit) {
		t.Fatal("refused before any event")
	}
	for i := 1; i <= 6; i++ {
		over := a.note(web, abuseDenied, limit)
		if over != (i > limit) {
			t.Fatalf("event %d: over = %v", i, over)
		}
	}
	if !a.over(web, abuseDenied, limit) {
		t.Fatal("uid 1000 not refused after the limit")
	}
	for _, c := range []caller{other, batch, {uid: 1000}} {
		if a.over(c, abuseDenied, limit) {
			t.Fatalf("%+v is refused with %+v", c, web)
		}
	}
	if a.over(web, abuseBadMAC, limit) {
		t.Fatal("another kind is refused")
	}
	if n := strings.Count(logs.String(), "abuse limit exceeded"); n != 1 {
		t.Fatalf("%d warnings in one window, want 1:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "uid=1000") || !strings.Contains(logs.String(), "unit=web.service") || !strings.Contains(logs.String(), "denied requests") {
		t.Fatalf("warning lacks the uid or the kind: %s", logs.String())
	}
	now = now.Add(abuseWindow)
	if a.over(web, abuseDenied, limit) {
		t.Fatal("still refused in a new window")
	}
	if n := a.counted.Load(); n != 0 {
		t.Fatalf("a new window starts with %d counted", n)
	}
	for range limit + 1 {
		a.note(web, abuseDenied, limit)
	}
	if n := strings.Count(logs.String(), "abuse limit exceeded"); n != 2 {
		t.Fatalf("%d warnings after two windows, want 2", n)
	}
}
