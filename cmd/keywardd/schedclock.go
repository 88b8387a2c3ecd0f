//go:build !keywardtest

package main

import "time"

// schedulerClock is the scheduled rotation's clock: the system's. Builds
// with the keywardtest tag (tests only) read a fixed time from the
// environment instead (schedclock_keywardtest.go).
func schedulerClock() func() time.Time { return nil }
