package hsm

import (
	"errors"
	"time"

	"github.com/miekg/pkcs11"
)

// The session pool grows with demand: a call takes an idle session, or
// opens one more while fewer than the bound are open, and waits only when
// the bound is reached or the token refuses another session
// (CKR_SESSION_COUNT: other applications hold the rest of a shared
// partition's sessions). On a network HSM every call is a round trip, and
// calls in flight are what throughput comes from: a session runs one call
// at a time. Idle sessions beyond the recent peak are closed by sweep.

// maxAutoSessions bounds the pool when the configuration leaves it to the
// token (Config.Sessions 0).
const maxAutoSessions = 256

// minSessions are kept open however idle: closing a token's last session
// logs the application out (PKCS#11 5.6), and a few warm sessions save the
// first calls after a quiet spell a round trip each.
const minSessions = 2

// sweepEvery is how often idle sessions are closed down to the peak of
// concurrent use since the last sweep.
const sweepEvery = 30 * time.Second

// sessionBound is how many sessions a Token may open on the token: the
// configured number, else the token's ulMaxSessionCount up to
// maxAutoSessions (0 and CK_UNAVAILABLE_INFORMATION mean no stated limit).
func sessionBound(configured int, ti pkcs11.TokenInfo, infoErr error) int {
	if configured > 0 {
		return configured
	}
	if infoErr != nil || ti.MaxSessionCount == 0 || ti.MaxSessionCount == pkcs11.CK_UNAVAILABLE_INFORMATION {
		return maxAutoSessions
	}
	return int(min(ti.MaxSessionCount, maxAutoSessions))
}

// refusedSession reports the token saying it has no session to give.
func refusedSession(err error) bool {
	return errors.Is(err, pkcs11.Error(pkcs11.CKR_SESSION_COUNT))
}

// busy counts a session lent out and keeps the peak since the last sweep.
// Caller holds openMu.
func (st *tokenState) busy(delta int) {
	st.inUse += delta
	st.peak = max(st.peak, st.inUse)
}

// sweep closes idle sessions while more are open than the peak of
// concurrent use since the last sweep (at least minSessions), and starts a
// new peak. Sessions still being opened do not count: closing the last
// session that exists would log the application out. Caller holds mod.mu
// for reading.
func (st *tokenState) sweep() {
	st.openMu.Lock()
	keep := max(st.peak, minSessions)
	st.peak = st.inUse
	var idle []pkcs11.SessionHandle
	for st.open-st.opening-len(idle) > keep {
		select {
		case sh := <-st.pool:
			idle = append(idle, sh)
			continue
		default:
		}
		break
	}
	st.open -= len(idle)
	st.openMu.Unlock()
	for _, sh := range idle {
		st.p.CloseSession(sh)
	}
}

// sweeper runs sweep every sweepEvery until the Token is closed.
func (t *Token) sweeper(stop <-chan struct{}) {
	tick := time.NewTicker(sweepEvery)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
			t.sweepSessions()
		}
	}
}

// sweepSessions sweeps the current state's pool, if it is current.
func (t *Token) sweepSessions() {
	m := t.mod
	m.mu.RLock()
	defer m.mu.RUnlock()
	if st := t.state.Load(); st != nil && st.modGen == m.gen && m.p != nil {
		st.sweep()
	}
}
