//go:build keywardtest

package main

import (
	"fmt"
	"os"
	"time"
)

// schedulerClock, in test builds only (-tags keywardtest; never in a
// package), stops the scheduled rotation's clock at the RFC 3339 time in
// KEYWARD_TEST_SCHEDULER_NOW, so that a test process can make a key due
// without waiting for its period. Creation times stay the system's.
func schedulerClock() func() time.Time {
	v := os.Getenv("KEYWARD_TEST_SCHEDULER_NOW")
	if v == "" {
		return nil
	}
	at, err := time.Parse(time.RFC3339, v)
	if err != nil {
		fmt.Fprintf(os.Stderr, "keywardd: KEYWARD_TEST_SCHEDULER_NOW: %v\n", err)
		os.Exit(exitUsage)
	}
	return func() time.Time { return at }
}
