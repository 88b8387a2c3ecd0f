//go:build !keywardtest

package main

import "time"

// breakglassClock is break-glass grants' clock: the system's. Builds with
// the keywardtest tag (tests only) read it from a file instead
// (bgclock_keywardtest.go).
func breakglassClock() func() time.Time { return nil }
