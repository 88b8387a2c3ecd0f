//go:build tpmsim

package tpm_test

import (
	"testing"
)

// TestConformanceSimulator runs the conformance suite on the in-process
// reference simulator (fixed seeds, so a redial finds the same parent).
func TestConformanceSimulator(t *testing.T) {
	runConformance(t, "sim:7")
}
