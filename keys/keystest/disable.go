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
// superseded versions through.
func testDisableAfter(t *testing.T, be keys.Backend, h Hooks) {
	const after = 30 * 24 * time.Hour
	// withDelay returns a key with the delay set and n versions; spaced,
	// each created in a later second than the one before it (creation
	// times are whole seconds), so that their due times differ.
	withDelay := func(t *testing.T, n int, spaced bool) keys.KeyInfo {
		t.Helper()
		info := create(t, be, keys.AES256GCM)
		for len(info.Versions) < n {
			for spaced && !time.Now().UTC().Truncate(time.Second).After(info.Versions[len(info.Versions)-1].Created) {
				time.Sleep(50 * time.Millisecond)
			}
			info = rotate(t, be, info.Name)
		}
		info, err := be.SetDisableAfter(t.Context(), info.Name, after)
		must(t, err, "SetDisableAfter(%s, 30d)", info.Name)
		if info.DisableAfter != after {
			t.Fatalf("after SetDisableAfter: delay %v, want %v", info.DisableAfter, after)
		}
		return info
	}
	disableIfDue := func(t *testing.T, name string, now time.Time, want ...uint32) keys.KeyInfo {
		t.Helper()
		info, got, err := be.DisableVersionsIfDue(t.Context(), name, now)
		must(t, err, "DisableVersionsIfDue(%s, %v)", name, now)
		if !slices.Equal(got, want) {
			t.Fatalf("DisableVersionsIfDue(%s, %v) disabled %v, want %v", name, now, got, want)
		}
		return info
	}

	t.Run("delay_kept", func(t *testing.T) {
		info := withDelay(t, 2, false)
		next, ok := info.NextDisable()
		if !ok || !next.Equal(info.Versions[1].Created.Add(after)) {
			t.Errorf("next disable %v %v, want v2's creation + 30d", next, ok)
		}
		if got := describe(t, be, info.Name, keys.Enabled, keys.Enabled); got.DisableAfter != after || got.RotationPeriod != 0 {
			t.Errorf("DescribeKey: delay %v, period %v; want %v and none", got.DisableAfter, got.RotationPeriod, after)
		}
		if h.Reopen != nil {
			be = h.Reopen(t, be)
			if got := describe(t, be, info.Name, keys.Enabled, keys.Enabled); got.DisableAfter != after {
				t.Errorf("after a restart: delay %v, want %v", got.DisableAfter, after)
			}
		}
		info, err := be.SetDisableAfter(t.Context(), info.Name, 0)
		must(t, err, "SetDisableAfter(%s, 0)", info.Name)
		if _, ok := info.NextDisable(); ok || info.DisableAfter != 0 {
			t.Errorf("delay 0: next disable still set (%v)", info.DisableAfter)
		}
		disableIfDue(t, info.Name, time.Now().Add(2*keys.MaxDisableAfter))
	})

	t.Run("invalid_delay", func(t *testing.T) {
		name := create(t, be, keys.AES256GCM).Name
		for _, d := range []time.Duration{-24 * time.Hour, time.Second, time.Hour, keys.MinDisableAfter - time.Second,
			keys.MaxDisableAfter + time.Hour, keys.MinDisableAfter + time.Millisecond} {
			_, err := be.SetDisableAfter(t.Context(), name, d)
			wantErr(t, err, "SetDisableAfter("+d.String()+")", keys.ErrInvalidArgument)
		}
		_, err := be.SetDisableAfter(t.Context(), newName(t), after)
		wantErr(t, err, "SetDisableAfter of a missing key", keys.ErrKeyNotFound)
		_, _, err = be.DisableVersionsIfDue(t.Context(), newName(t), time.Now())
		wantErr(t, err, "DisableVersionsIfDue of a missing key", keys.ErrKeyNotFound)
	})

	t.Run("disable_if_due", func(t *testing.T) {
		info := withDelay(t, 3, true)
		v2, v3 := info.Versions[1].Created, info.Versions[2].Created
		disableIfDue(t, info.Name, v2.Add(after-time.Second))
		info = disableIfDue(t, info.Name, v2.Add(after), 1)
		checkVersions(t, info, keys.Disabled, keys.Enabled, keys.Enabled)
		if next, ok := info.NextDisable(); !ok || !next.Equal(v3.Add(after)) {
			t.Errorf("next disable %v %v, want v3's creation + 30d", next, ok)
		}
		disableIfDue(t, info.Name, v2.Add(after)) // again: done
		// Long after: v2 goes, the newest never does.
		info = disableIfDue(t, info.Name, v3.Add(100*after), 2)
		checkVersions(t, info, keys.Disabled, keys.Disabled, keys.Enabled)
		if _, ok := info.NextDisable(); ok {
			t.Error("one enabled version left, yet a next disable")
		}
		describe(t, be, info.Name, keys.Disabled, keys.Disabled, keys.Enabled)
		wrap(t, be, info.Name, []byte("still in service"), nil, 3)
	})

	t.Run("newest_enabled_kept", func(t *testing.T) {
		// One version: untouched.
		one := withDelay(t, 1, false)
		disableIfDue(t, one.Name, time.Now().Add(2*keys.MaxDisableAfter))
		// v3 disabled and v1 destroyed by hand: v2 is the newest enabled
		// version and stays; states set by hand stay.
		info := withDelay(t, 3, false)
		destroy(t, be, info.Name, 1)
		setState(t, be, info.Name, 3, keys.Disabled)
		info = disableIfDue(t, info.Name, time.Now().Add(2*keys.MaxDisableAfter))
		checkVersions(t, info, keys.Destroyed, keys.Enabled, keys.Disabled)
	})

	t.Run("one_winner", func(t *testing.T) {
		info := withDelay(t, 2, false)
		due := info.Versions[1].Created.Add(after)
		const n = 4
		var wg sync.WaitGroup
		wins := make(chan []uint32, n)
		for range n {
			wg.Go(func() {
				_, got, err := be.DisableVersionsIfDue(t.Context(), info.Name, due)
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
		describe(t, be, info.Name, keys.Disabled, keys.Enabled)
	})
}
