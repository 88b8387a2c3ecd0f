//go:build keywardtest

package main

import (
	"fmt"
	"os"
	"strings"
	"time"
)

// breakglassClock, in test builds only (-tags keywardtest; never in a
// package), reads break-glass grants' clock from the file named by
// KEYWARD_TEST_BREAKGLASS_CLOCK (an RFC 3339 time) at every reading, so
// that a test process can expire a grant without waiting for it. A file
// that cannot be read or parsed stops the daemon: a test build must never
// run on a clock it does not know.
func breakglassClock() func() time.Time {
	path := os.Getenv("KEYWARD_TEST_BREAKGLASS_CLOCK")
	if path == "" {
		return nil
	}
	return func() time.Time {
		b, err := os.ReadFile(path)
		if err == nil {
			var at time.Time
			if at, err = time.Parse(time.RFC3339, strings.TrimSpace(string(b))); err == nil {
				return at
			}
		}
		fmt.Fprintf(os.Stderr, "keywardd: KEYWARD_TEST_BREAKGLASS_CLOCK: %v\n", err)
		os.Exit(exitUsage)
		return time.Time{}
	}
}
