package keystest

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/keyward/keyward/keys"
)

// testDisableAfter checks the disable-after delay kept in a key's record
// and DisableVersionsIfDue, which the daemon's scheduler disables
// superseded versions through. The cases share the backend: one reopens
// it for those after it.
func testDisableAfter(t *testing.T, be keys.Backend, h Hooks) {
	s := &disableSuite{be: be, h: h}
	for _, c := range []struct {
		name string
		run  func(*testing.T)
	}{
		{"delay_kept", s.caseDelayKept},
		{"invalid_delay", s.caseInvalidDelay},
		{"disable_if_due", s.caseDisableIfDue},
		{"newest_enabled_kept", s.caseNewestEnabledKept},
		{"one_winner", s.caseOneWinner},
	} {
		t.Run(c.name, c.run)
	}
}

// disableAfter is the delay the cases set.
const disableAfter = 30 * 24 * time.Hour

// disableSuite is testDisableAfter's backend and hooks.
type disableSuite struct {
	be keys.Backend
	h  Hooks
}

// withDelay returns a key with the delay set and n versions; spaced, each
// created in a later second than the one before it (creation times are
// whole seconds), so that their due times differ.
func (s *disableSuite) withDelay(t *testing.T, n int, spaced bool) keys.KeyInfo {
	t.Helper()
	info := create(t, s.be, keys.AES256GCM)
	for len(info.Versions) < n {
		for spaced && !time.Now().UTC().Truncate(time.Second).After(info.Versions[len(info.Versions)-1].Created) {
			time.Sleep(50 * time.Millisecond)
		}
		info = rotate(t, s.be, info.Name)
	}
	info, err := s.be.SetDisableAfter(t.Context(), info.Name, disableAfter)
	must(t, err, "SetDisableAfter(%s, 30d)", info.Name)
	if info.DisableAfter != disableAfter {
		t.Fatalf("after SetDisableAfter: delay %v, want %v", info.DisableAfter, disableAfter)
	}
	return info
}

// disableIfDue calls DisableVersionsIfDue and checks what it disabled.
func (s *disableSuite) disableIfDue(t *testing.T, name string, now time.Time, want ...uint32) keys.KeyInfo {
	t.Helper()
	info, got, err := s.be.DisableVersionsIfDue(t.Context(), name, now)
	must(t, err, "DisableVersionsIfDue(%s, %v)", name, now)
	if !slices.Equal(got, want) {
		t.Fatalf("DisableVersionsIfDue(%s, %v) disabled %v, want %v", name, now, got, want)
	}
	return info
}

func (s *disableSuite) caseDelayKept(t *testing.T) {
	info := s.withDelay(t, 2, false)
	next, ok := info.NextDisable()
	if !ok || !next.Equal(info.Versions[1].Created.Add(disableAfter)) {
		t.Errorf("next disable %v %v, want v2's creation + 30d", next, ok)
	}
	if got := describe(t, s.be, info.Name, keys.Enabled, keys.Enabled); got.DisableAfter != disableAfter || got.RotationPeriod != 0 {
		t.Errorf("DescribeKey: delay %v, period %v; want %v and none", got.DisableAfter, got.RotationPeriod, disableAfter)
	}
	if s.h.Reopen != nil {
		s.be = s.h.Reopen(t, s.be)
		if got := describe(t, s.be, info.Name, keys.Enabled, keys.Enabled); got.DisableAfter != disableAfter {
			t.Errorf("disableAfter a restart: delay %v, want %v", got.DisableAfter, disableAfter)
		}
	}
	info, err := s.be.SetDisableAfter(t.Context(), info.Name, 0)
	must(t, err, "SetDisableAfter(%s, 0)", info.Name)
	if _, ok := info.NextDisable(); ok || info.DisableAfter != 0 {
		t.Errorf("delay 0: next disable still set (%v)", info.DisableAfter)
	}
	s.disableIfDue(t, info.Name, time.Now().Add(2*keys.MaxDisableAfter))
}

func (s *disableSuite) caseInvalidDelay(t *testing.T) {
	name := create(t, s.be, keys.AES256GCM).Name
	for _, d := range []time.Duration{-24 * time.Hour, time.Second, time.Hour, keys.MinDisableAfter - time.Second,
		keys.MaxDisableAfter + time.Hour, keys.MinDisableAfter + time.Millisecond} {
		_, err := s.be.SetDisableAfter(t.Context(), name, d)
		wantErr(t, err, "SetDisableAfter("+d.String()+")", keys.ErrInvalidArgument)
	}
	_, err := s.be.SetDisableAfter(t.Context(), newName(t), disableAfter)
	wantErr(t, err, "SetDisableAfter of a missing key", keys.ErrKeyNotFound)
	_, _, err = s.be.DisableVersionsIfDue(t.Context(), newName(t), time.Now())
	wantErr(t, err, "DisableVersionsIfDue of a missing key", keys.ErrKeyNotFound)
}

func (s *disableSuite) caseDisableIfDue(t *testing.T) {
	info := s.withDelay(t, 3, true)
	v2, v3 := info.Versions[1].Created, info.Versions[2].Created
	s.disableIfDue(t, info.Name, v2.Add(disableAfter-time.Second))
	info = s.disableIfDue(t, info.Name, v2.Add(disableAfter), 1)
	checkVersions(t, info, keys.Disabled, keys.Enabled, keys.Enabled)
	if next, ok := info.NextDisable(); !ok || !next.Equal(v3.Add(disableAfter)) {
		t.Errorf("next disable %v %v, want v3's creation + 30d", next, ok)
	}
	s.disableIfDue(t, info.Name, v2.Add(disableAfter)) // again: done
	// Long disableAfter: v2 goes, the newest never does.
	info = s.disableIfDue(t, info.Name, v3.Add(100*disableAfter), 2)
	checkVersions(t, info, keys.Disabled, keys.Disabled, keys.Enabled)
	if _, ok := info.NextDisable(); ok {
		t.Error("one enabled version left, yet a next disable")
	}
	describe(t, s.be, info.Name, keys.Disabled, keys.Disabled, keys.Enabled)
	wrap(t, s.be, info.Name, []byte("still in service"), nil, 3)
}

func (s *disableSuite) caseNewestEnabledKept(t *testing.T) {
	// One version: untouched.
	one := s.withDelay(t, 1, false)
	s.disableIfDue(t, one.Name, time.Now().Add(2*keys.MaxDisableAfter))
	// v3 disabled and v1 destroyed by hand: v2 is the newest enabled
	// version and stays; states set by hand stay.
	info := s.withDelay(t, 3, false)
	destroy(t, s.be, info.Name, 1)
	setState(t, s.be, info.Name, 3, keys.Disabled)
	info = s.disableIfDue(t, info.Name, time.Now().Add(2*keys.MaxDisableAfter))
	checkVersions(t, info, keys.Destroyed, keys.Enabled, keys.Disabled)
}

func (s *disableSuite) caseOneWinner(t *testing.T) {
	info := s.withDelay(t, 2, false)
	due := info.Versions[1].Created.Add(disableAfter)
	const n = 4
	var wg sync.WaitGroup
	wins := make(chan []uint32, n)
	for range n {
		wg.Go(func() {
			_, got, err := s.be.DisableVersionsIfDue(t.Context(), info.Name, due)
			if err != nil {
				t.Errorf("DisableVersionsIfDue: %v", err)
			}
			wins <- got
		})
	}
	wg.Wait()
	close(wins)
	won := 0
	for w := range wins {
		if len(w) > 0 {
			won++
		}
	}
	if won != 1 {
		t.Errorf("%d of %d concurrent DisableVersionsIfDue disabled a version, want 1", won, n)
	}
	describe(t, s.be, info.Name, keys.Disabled, keys.Enabled)
}
