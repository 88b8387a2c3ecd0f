package daemon

import (
	"log/slog"
	"sync"
	"time"

	"github.com/keyward/keyward/policy"
)

// grantUses keeps the journal readable while a grantee calls in a loop:
// the first use of a grant is a WARN line of its own; later uses are
// counted and written as one summary line per grant each sweep
// (grantSweepEvery), so a busy grant cannot push other lines past
// journald's rate limit. Every use is still an audit record and counted
// in keyward_breakglass_uses_total.
type grantUses struct {
	mu   sync.Mutex
	seen map[string]*useCount // by grant id
}

type useCount struct {
	policy, key, op string
	uid             uint32
	n               int // uses since the last line
}

// used notes one use of g; first reports whether it is g's first here.
func (u *grantUses) used(g *grant, uid uint32, op policy.Operation) (first bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.seen == nil {
		u.seen = map[string]*useCount{}
	}
	if c, ok := u.seen[g.id]; ok {
		c.n++
		return false
	}
	u.seen[g.id] = &useCount{policy: g.Policy, key: g.Key, op: string(op), uid: uid}
	return true
}

// flush writes a summary line for each grant used since the last one, and
// forgets grants that are no longer in view.
func (u *grantUses) flush(log *slog.Logger, view []*grant, since time.Duration) {
	live := map[string]bool{}
	for _, g := range view {
		live[g.id] = true
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	for id, c := range u.seen {
		if c.n > 0 {
			log.Warn("break-glass grant used again", messageIDKey, msgBreakglassUsed, "grant", id, "policy", c.policy, "op", c.op,
				"key", c.key, "uid", c.uid, "uses", c.n, "within", since.String())
			c.n = 0
		}
		if !live[id] {
			delete(u.seen, id)
		}
	}
}
