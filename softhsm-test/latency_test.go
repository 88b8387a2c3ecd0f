package softhsmtest_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	softhsmtest "github.com/keyward/keyward/softhsm-test"
)

// TestLatencyModule loads the latency module in front of the test token
// and checks what it promises: every call forwarded, counted and delayed by
// at least the round trip, the session cap reported and enforced.
func TestLatencyModule(t *testing.T) {
	softhsmtest.Need(t, tok)
	dir := t.TempDir()
	so, err := softhsmtest.BuildLatencyModule(dir)
	if errors.Is(err, softhsmtest.ErrNoCompiler) && os.Getenv("CI") == "" {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	const rtt = 2 * time.Millisecond
	lat := softhsmtest.Latency{Target: tok.Module, RoundTrip: rtt, MaxSessions: 3, MaxCalls: 2, CountsFile: filepath.Join(dir, "counts")}
	// Read once, when this process first loads the module: no other test
	// of this package loads it.
	if err := lat.Setenv(); err != nil {
		t.Fatal(err)
	}
	p := pkcs11.New(so)
	if p == nil {
		t.Fatalf("loading %s failed", so)
	}
	if err := p.Initialize(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Finalize(); p.Destroy() })

	slot := findSlot(t, p, tok.Label)
	ti, err := p.GetTokenInfo(slot)
	if err != nil {
		t.Fatal(err)
	}
	if ti.MaxSessionCount != 3 {
		t.Errorf("ulMaxSessionCount = %d, want the cap 3", ti.MaxSessionCount)
	}
	var sessions []pkcs11.SessionHandle
	for range 3 {
		sh, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION)
		if err != nil {
			t.Fatalf("session %d of 3: %v", len(sessions)+1, err)
		}
		sessions = append(sessions, sh)
	}
	if _, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION); !errors.Is(err, pkcs11.Error(pkcs11.CKR_SESSION_COUNT)) {
		t.Errorf("a 4th session: %v, want CKR_SESSION_COUNT", err)
	}
	if err := p.CloseSession(sessions[2]); err != nil {
		t.Fatal(err)
	}
	if _, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION); err != nil {
		t.Errorf("a session after one was closed: %v", err)
	}

	before, err := softhsmtest.Counts(lat.CountsFile)
	if err != nil {
		t.Fatal(err)
	}
	const n = 10
	start := time.Now()
	for range n {
		if _, err := p.GenerateRandom(sessions[0], 16); err != nil {
			t.Fatal(err)
		}
	}
	// A lower bound on the module's own sleeps: never an upper one.
	if took := time.Since(start); took < n*rtt {
		t.Errorf("%d calls took %v, less than %d round trips of %v", n, took, n, rtt)
	}
	after, err := softhsmtest.Counts(lat.CountsFile)
	if err != nil {
		t.Fatal(err)
	}
	if d := softhsmtest.Diff(before, after); len(d) != 1 || d["C_GenerateRandom"] != n {
		t.Errorf("calls counted: %v, want exactly C_GenerateRandom:%d", d, n)
	}
	if after["C_Initialize"] != 1 || after["C_OpenSession"] != 5 {
		t.Errorf("counts %v: want C_Initialize 1 and C_OpenSession 5 (one refused)", after)
	}
}

func findSlot(t *testing.T, p *pkcs11.Ctx, label string) uint {
	t.Helper()
	slots, err := p.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range slots {
		if ti, err := p.GetTokenInfo(s); err == nil && ti.Label == label {
			return s
		}
	}
	t.Fatalf("no token %q", label)
	return 0
}
