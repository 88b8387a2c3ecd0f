package systemdtest

import (
	"os"
	"strings"
	"testing"
)

// TestBoot: a guest boots, runs a command as PID 1's child, sees its own
// PID 1 and cgroup root, keeps the host untouched, and powers off.
func TestBoot(t *testing.T) {
	g := Boot(t, Options{Files: map[string]File{"/etc/keyward-test-marker": {Data: []byte("guest\n")}}, Mask: hostServices})
	out := g.Sh(t, `cat /etc/keyward-test-marker; cat /proc/1/comm; cat /proc/self/cgroup; grep ' / / ' /proc/self/mountinfo`)
	for _, want := range []string{"guest", "systemd", "0::/", "shared:"} {
		if !strings.Contains(out, want) {
			t.Errorf("guest said %q, want %q in it", out, want)
		}
	}
	if _, err := os.Stat("/etc/keyward-test-marker"); err == nil {
		t.Error("a staged file reached the host")
	}
}
