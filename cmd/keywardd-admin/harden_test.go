package main

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	softhsmtest "github.com/keyward/keyward/softhsm-test"
)

// TestNoCoreDump: the device commands hold the PIN (define-counter also the
// TPM's owner authorisation), so, like keywardd, they run with core dumps
// off (RLIMIT_CORE 0, not dumpable) whatever limit they were started
// with. Seen from outside while "keywardd doctor" runs on a token whose
// calls each take 100 ms (the latency module).
func TestNoCoreDump(t *testing.T) {
	softhsmtest.Need(t, tok)
	so, err := softhsmtest.BuildLatencyModule(t.TempDir())
	if err != nil {
		t.Skipf("latency module: %v", err)
	}
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_CORE, &old); err != nil {
		t.Fatal(err)
	}
	// Started with dumps allowed, as under "ulimit -c unlimited".
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{Cur: unix.RLIM_INFINITY, Max: unix.RLIM_INFINITY}); err != nil {
		t.Skipf("cannot allow core dumps here: %v", err)
	}
	t.Cleanup(func() { unix.Setrlimit(unix.RLIMIT_CORE, &old) })
	cmd := exec.Command(bin, "doctor", "--module", so, "--token", tok.Label, "--pin-file", tok.PINFile)
	cmd.Env = append(os.Environ(), (softhsmtest.Latency{Target: tok.Module, RoundTrip: 100 * time.Millisecond}).Env()...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	limits := "/proc/" + strconv.Itoa(cmd.Process.Pid) + "/limits"
	for {
		select {
		case err := <-done:
			t.Fatalf("keywardd doctor ended (%v) and never ran with core dumps off", err)
		default:
		}
		if b, err := os.ReadFile(limits); err == nil && coreOff(string(b)) {
			cmd.Process.Kill()
			<-done
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// coreOff reports whether a /proc/PID/limits page says no core file.
func coreOff(limits string) bool {
	for _, l := range strings.Split(limits, "\n") {
		if strings.HasPrefix(l, "Max core file size") {
			f := strings.Fields(strings.TrimPrefix(l, "Max core file size"))
			return len(f) >= 2 && f[0] == "0" && f[1] == "0"
		}
	}
	return false
}
