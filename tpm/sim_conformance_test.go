//go:build tpmsim

package tpm_test

import (
	"testing"

	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/keys/keystest"
)

// TestConformanceSimulator runs the conformance suite on the in-process
// reference simulator (fixed seeds, so a redial finds the same parent).
func TestConformanceSimulator(t *testing.T) {
	be := open(t, "sim:7", t.TempDir())
	keystest.Run(t, func(t *testing.T) keys.Backend { return be })
}
