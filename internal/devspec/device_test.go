package devspec

import (
	"errors"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		device string
		want   error // nil, ErrInvalid or ErrNoSimulator
	}{
		{"", nil},
		{"/dev/tpmrm0", nil},
		{"/dev/", ErrInvalid},
		{"swtpm:127.0.0.1:2321", nil},
		{"swtpm::2321", ErrInvalid},
		{"swtpm:127.0.0.1:0", ErrInvalid},
		{"swtpm+unix:/run/swtpm.sock", nil},
		{"swtpm+unix:relative.sock", ErrInvalid},
		{"sim:x", ErrInvalid},
		{"tpm0", ErrInvalid},
	} {
		if err := Check(tc.device); !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
			t.Errorf("Check(%q) = %v, want %v", tc.device, err, tc.want)
		}
	}
	// The simulator: refused until the build says it has one.
	if err := Check("sim:42"); !errors.Is(err, ErrNoSimulator) {
		t.Errorf("Check(sim:42) without a simulator = %v", err)
	}
	SetSimulator()
	t.Cleanup(func() { simulator.Store(false) })
	if err := Check("sim:42"); err != nil {
		t.Errorf("Check(sim:42) with a simulator = %v", err)
	}
	if err := Check("sim:not-a-seed-s3cr3t"); err == nil || strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("a bad seed: %v (the seed must not be echoed)", err)
	}
}
