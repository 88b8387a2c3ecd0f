// Package devspec checks the form of a TPM backend's device string
// without opening it. It is pure Go, so that the configuration's checks run
// in the client-only keyward command; package tpm uses it and says whether
// this build has the in-process simulator.
package devspec

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
)

// ErrInvalid: the device string has no form keyward accepts. Its text is
// the TPM backend's configuration error (tpm.ErrConfig).
var ErrInvalid = errors.New("tpm: bad configuration")

// ErrNoSimulator: "sim" in a build without the simulator. Its text is
// tpm.ErrNoSimulator's.
var ErrNoSimulator = errors.New("tpm: this build has no TPM simulator")

// Accepted lists the forms, for error messages.
const Accepted = `"" or a path under /dev/ (default /dev/tpmrm0), ` +
	`"swtpm:HOST:PORT", "swtpm+unix:/PATH", "sim" or "sim:SEED" (tpmsim builds only)`

var simulator atomic.Bool

// SetSimulator records that this build has the simulator (package tpm's
// simulator file, in tpmsim builds).
func SetSimulator() { simulator.Store(true) }

// Check checks device's form: nil, an error wrapping ErrInvalid, or
// ErrNoSimulator for "sim" in a build without the simulator.
func Check(device string) error {
	switch {
	case device == "" || strings.HasPrefix(device, "/dev/"):
		if device == "/dev/" {
			return bad(device, "want a device path")
		}
		return nil
	case strings.HasPrefix(device, "swtpm:"):
		host, port, err := net.SplitHostPort(strings.TrimPrefix(device, "swtpm:"))
		if err != nil || host == "" {
			return bad(device, "want swtpm:HOST:PORT")
		}
		if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
			return bad(device, "PORT must be 1-65535")
		}
		return nil
	case strings.HasPrefix(device, "swtpm+unix:"):
		if !filepath.IsAbs(strings.TrimPrefix(device, "swtpm+unix:")) {
			return bad(device, "want swtpm+unix: and an absolute socket path")
		}
		return nil
	case device == "sim" || strings.HasPrefix(device, "sim:"):
		if s, ok := strings.CutPrefix(device, "sim:"); ok {
			if _, err := strconv.ParseUint(s, 10, 64); err != nil {
				return bad(device, "SEED must be a decimal uint64")
			}
		}
		if !simulator.Load() {
			return ErrNoSimulator
		}
		return nil
	}
	return bad(device, "unknown form")
}

// Redact hides a simulator's seed (it determines the simulator's keys) in
// logs, reports and errors.
func Redact(device string) string {
	if strings.HasPrefix(device, "sim:") {
		return "sim:(seed)"
	}
	return device
}

func bad(device, why string) error {
	return fmt.Errorf("%w: tpm device %q: %s; accepted: %s", ErrInvalid, Redact(device), why, Accepted)
}
