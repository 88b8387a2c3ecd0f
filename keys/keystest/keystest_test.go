package keystest_test

import (
	"testing"

	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/keys/keystest"
)

// TestSuite runs the suite against a plain in-memory reference backend, so
// that the suite itself is checked without a device.
func TestSuite(t *testing.T) {
	shared := keystest.NewMem()
	keystest.Run(t, func(t *testing.T) keys.Backend { return shared })
}

// TestSuiteSkipsUnsupported checks that a backend without RSA skips, not fails.
func TestSuiteSkipsUnsupported(t *testing.T) {
	keystest.Run(t, func(t *testing.T) keys.Backend { m := keystest.NewMem(); m.NoRSA = true; return m })
}
