package keys_test

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/keyward/keyward/keys"
)

func TestDisableDueAt(t *testing.T) {
	day := 24 * time.Hour
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ver := func(v uint32, created time.Time, s keys.State) keys.VersionInfo {
		return keys.VersionInfo{Version: v, Created: created, State: s}
	}
	E, D, X := keys.Enabled, keys.Disabled, keys.Destroyed
	for _, tc := range []struct {
		name  string
		after time.Duration
		vers  []keys.VersionInfo
		now   time.Time
		want  []uint32
		next  time.Time // zero: none
	}{
		{"no delay", 0, []keys.VersionInfo{ver(1, t0, E), ver(2, t0.Add(day), E)}, t0.Add(1000 * day), nil, time.Time{}},
		{"one version", 30 * day, []keys.VersionInfo{ver(1, t0, E)}, t0.Add(1000 * day), nil, time.Time{}},
		{"not yet", 30 * day, []keys.VersionInfo{ver(1, t0, E), ver(2, t0.Add(day), E)}, t0.Add(31*day - time.Second), nil, t0.Add(31 * day)},
		{"due from v2's creation", 30 * day, []keys.VersionInfo{ver(1, t0, E), ver(2, t0.Add(day), E)}, t0.Add(31 * day), []uint32{1}, t0.Add(31 * day)},
		{"each from its successor", 30 * day, []keys.VersionInfo{ver(1, t0, E), ver(2, t0.Add(day), E), ver(3, t0.Add(10*day), E)}, t0.Add(35 * day), []uint32{1}, t0.Add(31 * day)},
		{"all but the newest", 30 * day, []keys.VersionInfo{ver(1, t0, E), ver(2, t0.Add(day), E), ver(3, t0.Add(10*day), E)}, t0.Add(1000 * day), []uint32{1, 2}, t0.Add(31 * day)},
		{"newest enabled kept", 30 * day, []keys.VersionInfo{ver(1, t0, E), ver(2, t0.Add(day), E), ver(3, t0.Add(10*day), D)}, t0.Add(1000 * day), []uint32{1}, t0.Add(31 * day)},
		{"disabled and destroyed skipped", 30 * day, []keys.VersionInfo{ver(1, t0, X), ver(2, t0.Add(day), D), ver(3, t0.Add(2*day), E), ver(4, t0.Add(10*day), E)}, t0.Add(1000 * day), []uint32{3}, t0.Add(40 * day)},
		{"none enabled", 30 * day, []keys.VersionInfo{ver(1, t0, D), ver(2, t0.Add(day), D)}, t0.Add(1000 * day), nil, time.Time{}},
	} {
		k := keys.KeyInfo{Name: "a", DisableAfter: tc.after, Versions: tc.vers}
		if got := k.DisableDueAt(tc.now); !slices.Equal(got, tc.want) {
			t.Errorf("%s: DisableDueAt = %v, want %v", tc.name, got, tc.want)
		}
		next, ok := k.NextDisable()
		if ok != !tc.next.IsZero() || !next.Equal(tc.next) {
			t.Errorf("%s: NextDisable = %v %v, want %v", tc.name, next, ok, tc.next)
		}
	}
}

func TestDisableAfterFromSeconds(t *testing.T) {
	for _, tc := range []struct {
		s    int64
		want time.Duration
		ok   bool
	}{
		{0, 0, true},
		{86400, 24 * time.Hour, true},
		{3650 * 86400, keys.MaxDisableAfter, true},
		{-1, 0, false},
		{3600, 0, false},          // under a day
		{86400 - 1<<55, 0, false}, // negative
		{1 << 62, 0, false},       // beyond a Duration
		{3651 * 86400, 0, false},  // over the maximum
	} {
		got, err := keys.DisableAfterFromSeconds(tc.s)
		if (err == nil) != tc.ok || tc.ok && got != tc.want || !tc.ok && !errors.Is(err, keys.ErrInvalidArgument) {
			t.Errorf("DisableAfterFromSeconds(%d) = %v, %v; want %v ok=%v", tc.s, got, err, tc.want, tc.ok)
		}
	}
}
