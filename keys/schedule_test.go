package keys_test

import (
	"errors"
	"testing"
	"time"

	"github.com/keyward/keyward/keys"
)

func TestParsePeriod(t *testing.T) {
	day := 24 * time.Hour
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"0", 0, true},
		{"90d", 90 * day, true},
		{"36h", 36 * time.Hour, true},
		{"90m", 90 * time.Minute, true},
		{"3650d", 3650 * day, true},
		{"", 0, false},
		{"d", 0, false},
		{"90", 0, false},
		{"0d", 0, false},
		{"-1d", 0, false},
		{"+1d", 0, false},
		{"1.5d", 0, false},
		{"1w", 0, false},
		{"3600s", 0, false},
		{"90D", 0, false},
		{" 90d", 0, false},
		{"1h30m", 0, false},
		{"99999999999d", 0, false},
		{"9223372036854775807m", 0, false},
	} {
		got, err := keys.ParsePeriod(tc.in)
		if tc.ok && (err != nil || got != tc.want) || !tc.ok && !errors.Is(err, keys.ErrInvalidArgument) {
			t.Errorf("ParsePeriod(%q) = %v, %v; want %v ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
		if tc.ok && tc.in != "0" {
			if f := keys.FormatPeriod(got); f != tc.in {
				t.Errorf("FormatPeriod(%v) = %q, want %q", got, f, tc.in)
			}
		}
	}
	if f := keys.FormatPeriod(90 * time.Second); f != "90s" {
		t.Errorf("FormatPeriod(90s) = %q", f)
	}
}

func TestNextRotation(t *testing.T) {
	v1 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	k := keys.KeyInfo{Versions: []keys.VersionInfo{{Version: 1, Created: v1, State: keys.Enabled}, {Version: 2, Created: v1.Add(time.Hour), State: keys.Disabled}}}
	if _, ok := k.NextRotation(); ok || k.DueAt(v1.Add(1000*time.Hour)) {
		t.Error("a key without a period has a next rotation")
	}
	k.RotationPeriod = 24 * time.Hour
	next, ok := k.NextRotation()
	if want := v1.Add(25 * time.Hour); !ok || !next.Equal(want) {
		t.Errorf("next rotation %v, want the newest version's creation + period %v", next, want)
	}
	if k.DueAt(next.Add(-time.Nanosecond)) || !k.DueAt(next) || !k.DueAt(next.Add(time.Hour)) {
		t.Error("DueAt: due from the next rotation on, not before")
	}
	k.Versions[0].State = keys.Destroyed // the newest is disabled: none enabled
	if _, ok := k.NextRotation(); ok || k.DueAt(next.Add(1000*time.Hour)) {
		t.Error("a key with no enabled version is due: the scheduler would put it back into service")
	}
}

func TestPeriodFromSeconds(t *testing.T) {
	for _, tc := range []struct {
		s    int64
		want time.Duration
		ok   bool
	}{
		{0, 0, true},
		{3600, time.Hour, true},
		{90 * 86400, 90 * 24 * time.Hour, true},
		{-1, 0, false},
		{60, 0, false},           // under an hour
		{3600 - 1<<55, 0, false}, // negative, wraps to an hour when multiplied
		{1 << 62, 0, false},      // beyond a Duration
		{3651 * 86400, 0, false}, // over the maximum
	} {
		got, err := keys.PeriodFromSeconds(tc.s)
		if (err == nil) != tc.ok || tc.ok && got != tc.want {
			t.Errorf("PeriodFromSeconds(%d) = %v, %v; want %v ok=%v", tc.s, got, err, tc.want, tc.ok)
		}
	}
}
