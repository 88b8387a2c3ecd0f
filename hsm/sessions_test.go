package hsm_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/keyward/keyward/hsm"
	softhsmtest "github.com/keyward/keyward/softhsm-test"
)

// TestSessionsByDemand: with no configured bound the pool may open as many
// sessions as the token allows (SoftHSM2 states no limit: 256), opens them
// only when calls need them, and closes idle ones down to the peak of the
// last sweep interval, then to the floor of 2.
func TestSessionsByDemand(t *testing.T) {
	softhsmtest.Need(t, tok)
	b := open(t, nil)
	if st := b.Stats(); st.SessionsMax != 256 || st.SessionsOpen != 1 {
		t.Fatalf("fresh token: %+v, want 1 session open of at most 256", st)
	}
	release := b.HoldSessions(t, 40) // 40 calls at once: none waits for another
	if st := b.Stats(); st.SessionsOpen != 40 || st.SessionsIdle != 0 {
		t.Fatalf("40 calls in flight: %+v, want 40 open, none idle", st)
	}
	release()
	b.SweepSessions() // the peak since the last sweep was 40: all kept
	if st := b.Stats(); st.SessionsOpen != 40 {
		t.Fatalf("after the first sweep: %+v, want the peak of 40 kept", st)
	}
	b.HoldSessions(t, 5)()
	b.SweepSessions()
	if st := b.Stats(); st.SessionsOpen != 5 || st.SessionsIdle != 5 {
		t.Fatalf("after a quieter interval: %+v, want its peak of 5 open", st)
	}
	b.SweepSessions()
	if st := b.Stats(); st.SessionsOpen != 2 {
		t.Fatalf("after an idle interval: %+v, want the floor of 2", st)
	}
}

// TestSessionsConfigured: a configured bound is the bound; calls beyond it
// wait for a session instead of failing.
func TestSessionsConfigured(t *testing.T) {
	softhsmtest.Need(t, tok)
	b := open(t, func(c *hsm.Config) { c.Sessions = 3 })
	release := b.HoldSessions(t, 3)
	if st := b.Stats(); st.SessionsMax != 3 || st.SessionsOpen != 3 {
		t.Fatalf("%+v, want 3 of 3 open", st)
	}
	waited := make(chan error, 1)
	go func() { waited <- b.Health(t.Context()) }()
	release()
	if err := <-waited; err != nil {
		t.Fatalf("a call that waited for a session: %v", err)
	}
}

// TestSweepKeepsLogin: sessions still being opened are not sessions the
// sweep may count on: with one session that exists and two being opened,
// it closes none, so the application stays logged in (closing its last
// session would log it out).
func TestSweepKeepsLogin(t *testing.T) {
	softhsmtest.Need(t, tok)
	pin, err := tok.InitToken("sweep-login")
	if err != nil {
		t.Fatal(err)
	}
	pinFile := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(pinFile, []byte(pin), 0o600); err != nil {
		t.Fatal(err)
	}
	b := open(t, func(c *hsm.Config) { c.TokenLabel, c.PINFile = "sweep-login", pinFile })
	undo := b.PretendOpening(2)
	b.SweepSessions()
	undo()
	if st := b.Stats(); st.SessionsOpen != 1 {
		t.Fatalf("after a sweep during two opens: %+v, want the one session kept", st)
	}
	if err := b.Health(t.Context()); err != nil {
		t.Fatalf("Health after the sweep: %v (logged out?)", err)
	}
}
