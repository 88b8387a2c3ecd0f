package daemon

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/keyward/keyward/keys"
)

// What a caller who is no party to a grant can make the daemon do is
// bounded: the id must be one newGrantID makes, a refusal is answered from
// the daemon's view of the store when it can be (no device read), and
// every refusal of a non-party counts towards max_denied_per_minute, past
// which the caller's calls are refused (RATE_LIMITED) when they open.

// Bounds of the context pairs a grant fixes (stored in the device and
// shown to the grant's parties).
const (
	maxGrantContextPairs = 8
	maxGrantContextBytes = 256 // of each key and each value
)

// validGrantIDForm accepts only the form newGrantID makes
// (keys.IsBreakglassID).
func validGrantIDForm(id string) error {
	if !keys.IsBreakglassID(id) {
		return invalid("grant id: %d lowercase hex digits, as break-glass request prints", 2*keys.BreakglassIDBytes)
	}
	return nil
}

// checkGrantContext bounds the context pairs a grant fixes.
func checkGrantContext(c map[string]string) error {
	if len(c) > maxGrantContextPairs {
		return invalid("context: %d pairs, a grant fixes at most %d", len(c), maxGrantContextPairs)
	}
	for k, v := range c {
		if len(k) > maxGrantContextBytes || len(v) > maxGrantContextBytes {
			return invalid("context: a grant's context keys and values are at most %d bytes each", maxGrantContextBytes)
		}
	}
	return nil
}

// checkGrantRecord refuses a grant whose record would not fit in the
// store, before anything about it is recorded.
func checkGrantRecord(g *grant) error {
	body, err := json.Marshal(g)
	if err != nil {
		return err
	}
	if len(body) > keys.MaxGrantBody {
		return invalid("the grant's record would be %d bytes, at most %d: shorten the reason or the context", len(body), keys.MaxGrantBody)
	}
	return nil
}

// errNotParty: the caller is no party to the grant named, or it does not
// exist (the caller is not told which).
var errNotParty = errors.New("no such grant, or not one you are party to")

// refuseFromView answers a change of grant id from the daemon's view
// without reading the device, when the view already says the caller may
// not make it: the grant is in the view and the caller is no party to it
// (who is party never changes: its requester, policy and key are fixed),
// or it is not in the view and no break-glass policy names the caller as
// requester or approver. revoking: the change is a revocation, which
// revokesForeign also allows, so an id not in a view older than
// grantMaxAge goes on to a read for anyone (a grant made on another host
// since; a stranger makes at most one read per grantMaxAge, as the read
// makes the view young). nil: the change goes on to a fresh read.
func (s *Service) refuseFromView(c bgCaller, id string, revoking bool) error {
	view, young, err := c.b.grants.cached()
	if err != nil {
		return nil // the fresh read reports the store
	}
	for _, g := range view {
		if g.id == id {
			if s.partyTo(c, g) || revoking && s.revokesForeign(c, g) {
				return nil
			}
			return bgDenied(fmt.Sprintf("uid %d is no party to grant %s", c.id.UID, id), errNotParty.Error())
		}
	}
	if namedByBreakglass(c) || revoking && !young {
		return nil
	}
	return bgDenied("no grant "+id+" known to this daemon", errNotParty.Error())
}

// namedByBreakglass reports whether a break-glass policy names the caller
// as requester or approver: the people whose list reads the store afresh
// and whose changes of an id not in the view go on to a read.
func namedByBreakglass(c bgCaller) bool {
	for _, bp := range c.pol.Breakglass() {
		if bp.MayRequest(c.id) || bp.MayApprove(c.id) {
			return true
		}
	}
	return false
}

// countNotParty counts a change refused to a caller who is no party to
// grant g (nil: unknown) towards the caller's denied-request limit.
func (s *Service) countNotParty(c bgCaller, g *grant, err error) {
	if !errors.Is(err, ErrDenied) || g != nil && s.partyTo(c, g) {
		return
	}
	s.abuse.note(callerOf(c.id), abuseDenied, s.lim.Load().MaxDeniedPerMinute)
}
