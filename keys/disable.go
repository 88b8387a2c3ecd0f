package keys

import (
	"time"
)

// Bounds of a key's disable-after delay: how long a version stays enabled
// once a newer version exists. The shortest is a day: callers need time to
// rewrap their blobs after a rotation, and a shorter delay is almost
// certainly a typo (1h for 1d) that would take every superseded version out
// of service at the scheduler's next check. The longest is ten years, as
// for the rotation period.
const (
	MinDisableAfter = 24 * time.Hour
	MaxDisableAfter = MaxRotationPeriod
)

// CheckDisableAfter accepts 0 (versions are never disabled by the
// scheduler) or a whole number of seconds within [MinDisableAfter,
// MaxDisableAfter].
func CheckDisableAfter(d time.Duration) error { return disableAfter.check(d) }

// DisableAfterFromSeconds is a disable-after delay as key records keep it
// (whole seconds) read back: an error unless CheckDisableAfter accepts it,
// including a count of seconds a Duration cannot hold.
func DisableAfterFromSeconds(s int64) (time.Duration, error) {
	return disableAfter.fromSeconds(s)
}

var disableAfter = delay{"disable-versions-after", "never", MinDisableAfter, MaxDisableAfter}

// disableCandidates calls fn for every enabled version older than the
// newest enabled one, with when it becomes due to be disabled: the
// creation of the next newer version plus DisableAfter. Nothing without a
// delay, or with fewer than two enabled versions: the newest enabled
// version is never disabled, so a key always keeps one in service.
func (k *KeyInfo) disableCandidates(fn func(v uint32, due time.Time)) {
	newest, err := k.Latest()
	if k.DisableAfter <= 0 || err != nil {
		return
	}
	for i := range int(newest) - 1 {
		if k.Versions[i].State == Enabled {
			fn(k.Versions[i].Version, k.Versions[i+1].Created.Add(k.DisableAfter))
		}
	}
}

// NextDisable is when the scheduler next disables a version of the key:
// the earliest due time of its enabled versions older than the newest
// enabled one (which may be in the past: a version already due). ok is
// false when the key has no disable-after delay or no such version.
func (k *KeyInfo) NextDisable() (next time.Time, ok bool) {
	k.disableCandidates(func(_ uint32, due time.Time) {
		if !ok || due.Before(next) {
			next, ok = due, true
		}
	})
	return next, ok
}

// DisableDueAt lists, in ascending order, the versions the scheduler
// disables at now: enabled, older than the newest enabled version, and
// superseded (the next newer version created) at least DisableAfter ago.
func (k *KeyInfo) DisableDueAt(now time.Time) []uint32 {
	var out []uint32
	k.disableCandidates(func(v uint32, due time.Time) {
		if !now.Before(due) {
			out = append(out, v)
		}
	})
	return out
}
