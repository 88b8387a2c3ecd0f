package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	keywardv1 "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/client"
	"github.com/keyward/keyward/keys"
)

// keySetFlags are key set's flags, read by check and sent by apply.
type keySetFlags struct {
	minVersion                  uint32
	periodText, afterText       string
	period, after               time.Duration
	setMin, setPeriod, setAfter bool
}

// check reads the flags; a bad value is a usage error before any call.
func (f *keySetFlags) check(c *cobra.Command, _ string) error {
	fl := c.Flags()
	f.setMin, f.setPeriod, f.setAfter = fl.Changed("min-decrypt-version"), fl.Changed("rotation-period"), fl.Changed("disable-versions-after")
	if !f.setMin && !f.setPeriod && !f.setAfter {
		return usagef(cmdName(c), "nothing to set: give --min-decrypt-version N, --rotation-period PERIOD or --disable-versions-after DELAY")
	}
	var err error
	if f.setPeriod {
		if f.period, err = keys.ParsePeriod(f.periodText); err == nil {
			err = keys.CheckRotationPeriod(f.period)
		}
		if err != nil {
			return usagef(cmdName(c), "--rotation-period %q: want 0 (none) or a whole number of d, h or m (90d, 36h, 90m) between 1h and 3650d", f.periodText)
		}
	}
	if f.setAfter {
		if f.after, err = keys.ParsePeriod(f.afterText); err == nil {
			err = keys.CheckDisableAfter(f.after)
		}
		if err != nil {
			return usagef(cmdName(c), "--disable-versions-after %q: want 0 (never) or a whole number of d, h or m (30d, 48h) between %s and %s",
				f.afterText, keys.FormatPeriod(keys.MinDisableAfter), keys.FormatPeriod(keys.MaxDisableAfter))
		}
	}
	return nil
}

// apply sends each setting given, in the order of the flags, and returns
// the key as the last call left it.
func (f *keySetFlags) apply(ctx context.Context, kc *client.Client, name string) (*keywardv1.KeyInfo, error) {
	var ki *keywardv1.KeyInfo
	var err error
	if f.setMin {
		if ki, err = kc.SetMinDecryptVersion(ctx, name, f.minVersion); err != nil {
			return nil, err
		}
	}
	if f.setPeriod {
		if ki, err = kc.SetRotationPolicy(ctx, name, f.period); err != nil {
			return nil, err
		}
	}
	if f.setAfter {
		ki, err = kc.SetDisableAfter(ctx, name, f.after)
	}
	return ki, err
}

// disableJSON is the key's disable-after delay ("" without one) and when
// its next version is due to be disabled (nil: none pending).
func disableJSON(ki *keywardv1.KeyInfo) (string, *time.Time) {
	secs := ki.GetDisableAfterSeconds()
	if secs == 0 {
		return "", nil
	}
	after := keys.FormatPeriod(time.Duration(secs) * time.Second)
	if n := ki.GetNextDisable(); n != nil {
		t := n.AsTime()
		return after, &t
	}
	return after, nil
}

// disableSummary is summary's part for the disable-after delay.
func disableSummary(ki *keywardv1.KeyInfo) string {
	after, next := disableJSON(ki)
	switch {
	case after == "":
		return ""
	case next == nil:
		return fmt.Sprintf(" (disables versions %s after the next one)", after)
	}
	return fmt.Sprintf(" (disables versions %s after the next one, next %s)", after, timeText(next))
}

// disableText is key show's disable line.
func disableText(k keyJSON) string {
	switch {
	case k.DisableAfter == "":
		return "not scheduled"
	case k.NextDisable == nil:
		return "versions " + k.DisableAfter + " after the next one, by keywardd; none pending"
	}
	return "versions " + k.DisableAfter + " after the next one, by keywardd; next " + timeText(k.NextDisable)
}

// disableDue lists the versions of ki that keywardd's scheduler disables
// at now: keys.KeyInfo.DisableDueAt, the scheduler's own rule, on what the
// wire's KeyInfo says of the versions and the delay.
func disableDue(ki *keywardv1.KeyInfo, now time.Time) []uint32 {
	k := keys.KeyInfo{DisableAfter: time.Duration(ki.GetDisableAfterSeconds()) * time.Second}
	for _, v := range ki.GetVersions() {
		st := keys.Disabled // not enabled: never a candidate, never the newest enabled
		if v.GetState() == keywardv1.VersionState_ENABLED {
			st = keys.Enabled
		}
		k.Versions = append(k.Versions, keys.VersionInfo{Version: v.GetVersion(), State: st, Created: v.GetCreated().AsTime()})
	}
	return k.DisableDueAt(now)
}

// noteDisableDue tells an admin who enabled version v of a key that
// keywardd will disable it again at its next check.
func (a *app) noteDisableDue(ki *keywardv1.KeyInfo, v uint32) {
	if !slices.Contains(disableDue(ki, time.Now()), v) {
		return
	}
	after := keys.FormatPeriod(time.Duration(ki.GetDisableAfterSeconds()) * time.Second)
	fmt.Fprintf(a.stderr, "keyward: note: %s disables versions %s after the next one; v%d is past that and keywardd disables it again at its next check (keyward key set %s --disable-versions-after 0 stops that)\n",
		ki.GetKey(), after, v, ki.GetKey())
}

// noteDisableSet tells an admin who set a delay which versions keywardd
// disables at its next check because of it.
func (a *app) noteDisableSet(ki *keywardv1.KeyInfo) {
	due := disableDue(ki, time.Now())
	if len(due) == 0 {
		return
	}
	names := make([]string, len(due))
	for i, v := range due {
		names[i] = fmt.Sprintf("v%d", v)
	}
	fmt.Fprintf(a.stderr, "keyward: note: keywardd disables %s of %s at its next check (within rotation_check_interval)\n",
		strings.Join(names, ", "), ki.GetKey())
}
