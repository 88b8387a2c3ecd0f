package keys

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Bounds of a key's rotation period. The shortest keeps a record small: a
// record grows by one version per rotation, and a device record holds a
// few thousand versions at most, years of daily rotation. The longest is
// ten years.
const (
	MinRotationPeriod = time.Hour
	MaxRotationPeriod = 3650 * 24 * time.Hour
)

// PeriodFromSeconds is a rotation period as key records keep it (whole
// seconds) read back: an error unless CheckRotationPeriod accepts it,
// including a count of seconds a Duration cannot hold.
func PeriodFromSeconds(s int64) (time.Duration, error) {
	return rotationPeriod.fromSeconds(s)
}

// CheckRotationPeriod accepts 0 (no scheduled rotation) or a whole number
// of seconds within [MinRotationPeriod, MaxRotationPeriod].
func CheckRotationPeriod(d time.Duration) error { return rotationPeriod.check(d) }

var rotationPeriod = delay{"rotation period", "none", MinRotationPeriod, MaxRotationPeriod}

// delay is a key's scheduled delay setting: its name in errors, what 0
// means, and its bounds.
type delay struct {
	name, zero string
	min, max   time.Duration
}

// check accepts 0 or a whole number of seconds within [min, max].
func (dl delay) check(d time.Duration) error {
	switch {
	case d == 0:
		return nil
	case d < dl.min || d > dl.max:
		return fmt.Errorf("%s %s: want 0 (%s) or between %s and %s: %w",
			dl.name, FormatPeriod(d), dl.zero, FormatPeriod(dl.min), FormatPeriod(dl.max), ErrInvalidArgument)
	case d%time.Second != 0:
		return fmt.Errorf("%s %s: whole seconds only: %w", dl.name, d, ErrInvalidArgument)
	}
	return nil
}

// fromSeconds is the delay as key records keep it (whole seconds) read
// back: an error unless check accepts it, including a count of seconds a
// Duration cannot hold.
func (dl delay) fromSeconds(s int64) (time.Duration, error) {
	if s < 0 || s > int64(dl.max/time.Second) {
		return 0, fmt.Errorf("%s %ds: %w", dl.name, s, ErrInvalidArgument)
	}
	d := time.Duration(s) * time.Second
	return d, dl.check(d)
}

// ParsePeriod reads a period written as a whole number and a unit, d
// (days of 24 hours), h or m ("90d", "36h", "90m"), or "0" for none. It
// does not check the bounds (CheckRotationPeriod does).
func ParsePeriod(s string) (time.Duration, error) {
	if s == "0" {
		return 0, nil
	}
	bad := func() (time.Duration, error) {
		return 0, fmt.Errorf("period %q: want a whole number and a unit, d, h or m (90d, 36h, 90m), or 0: %w", printable(s), ErrInvalidArgument)
	}
	if len(s) < 2 || len(s) > 12 {
		return bad()
	}
	unit := map[byte]time.Duration{'d': 24 * time.Hour, 'h': time.Hour, 'm': time.Minute}[s[len(s)-1]]
	num := s[:len(s)-1]
	if unit == 0 || strings.TrimLeft(num, "0123456789") != "" {
		return bad()
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 || n > int64(MaxRotationPeriod/unit)*10 {
		return bad()
	}
	return time.Duration(n) * unit, nil
}

// FormatPeriod writes d in the largest of the units ParsePeriod reads
// that divides it (seconds otherwise), "0" for none.
func FormatPeriod(d time.Duration) string {
	switch {
	case d == 0:
		return "0"
	case d%(24*time.Hour) == 0:
		return strconv.FormatInt(int64(d/(24*time.Hour)), 10) + "d"
	case d%time.Hour == 0:
		return strconv.FormatInt(int64(d/time.Hour), 10) + "h"
	case d%time.Minute == 0:
		return strconv.FormatInt(int64(d/time.Minute), 10) + "m"
	}
	return strconv.FormatInt(int64(d/time.Second), 10) + "s"
}

// NextRotation is when the key is due for its scheduled rotation: its
// newest version's creation plus its rotation period. ok is false when
// the key has no rotation period, or no enabled version: a key an admin
// took out of service (every version disabled or destroyed) is never due,
// so the scheduler does not put it back into service with a new version.
func (k *KeyInfo) NextRotation() (next time.Time, ok bool) {
	if k.RotationPeriod <= 0 || !slices.ContainsFunc(k.Versions, func(v VersionInfo) bool { return v.State == Enabled }) {
		return time.Time{}, false
	}
	return k.Versions[len(k.Versions)-1].Created.Add(k.RotationPeriod), true
}

// DueAt reports whether the key's scheduled rotation is due at now.
func (k *KeyInfo) DueAt(now time.Time) bool {
	next, ok := k.NextRotation()
	return ok && !now.Before(next)
}
