package daemon

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyward/keyward/audit"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/policy"
)

// Break-glass grants: a requester asks for one operation on one key under
// a [[breakglass]] policy, other people approve, and while the grant is
// active the requester's calls it covers are allowed where the rules deny
// them. Grants are records in the device (keys.GrantStore: tamper-evident,
// shared by every daemon on a shared HSM); every change is a new generation
// stored with a compare-and-swap, so of two daemons changing one grant
// exactly one wins and the other re-reads and decides again.

// Grant states as stored and shown.
const (
	grantPending = "pending"
	grantActive  = "active"
	grantDenied  = "denied"
	grantExpired = "expired"
	grantRevoked = "revoked"
)

// Break-glass limits.
const (
	// grantMaxAge is how old the daemon's view of the grant store may be
	// when a call depends on it: another daemon's approval, revocation or
	// expiry on a shared device takes effect here within it. Expiry by the
	// clock takes effect on the next call whatever the view's age.
	grantMaxAge = 2 * time.Second
	// grantRetention is how long an ended grant stays listed before the
	// daemon removes its record (the audit trail keeps its history).
	grantRetention = 30 * 24 * time.Hour
	// maxPendingPerRequester bounds the open requests of one uid, so that
	// a requester cannot fill the device's store.
	maxPendingPerRequester = 8
	maxReason              = 256
	// grantSweepEvery is how often the daemon records expiries and prunes
	// old grants when nobody calls.
	grantSweepEvery = 15 * time.Second
	// maxGrantRetries bounds the re-reads of one change that keeps losing
	// its compare-and-swap to other daemons.
	maxGrantRetries = 8
)

// auditBGStore is the audit op of a grant store that failed its check
// while the daemon ran (keywardd itself records it, peer unit breakglass).
const auditBGStore = "breakglass.store"

// errGrantStore: the grant store could not be read or verified; nothing
// is granted until it can.
var errGrantStore = errors.New("break-glass grant store unavailable")

// approval is one approver's consent: who (as the approving daemon's host
// saw them), where, and when. An approval counts only while its approver
// still approves under the table that decides (approvalCounts).
type approval struct {
	UID    uint32    `json:"uid"`
	At     time.Time `json:"at"`
	GID    uint32    `json:"gid,omitempty"`
	Groups []uint32  `json:"groups,omitempty"`
	Name   string    `json:"name,omitempty"` // the user name on Host, "" when it has none
	Host   string    `json:"host,omitempty"` // the approving daemon's machine id
}

// grant is one stored grant record's body (JSON, version 1).
type grant struct {
	id  string
	gen uint64

	V              int               `json:"v"`
	Policy         string            `json:"policy"`
	State          string            `json:"state"`
	Requester      uint32            `json:"requester_uid"`
	Key            string            `json:"key"`
	Op             string            `json:"op"`
	Context        map[string]string `json:"context,omitempty"`
	DurationS      int64             `json:"duration_s"`
	Reason         string            `json:"reason"`
	Requested      time.Time         `json:"requested"`
	RequestExpires time.Time         `json:"request_expires"`
	Needed         int               `json:"approvals_needed"`
	Approvals      []approval        `json:"approvals,omitempty"`
	Activated      time.Time         `json:"activated,omitzero"`
	Expires        time.Time         `json:"expires,omitzero"`
	EndedBy        uint32            `json:"ended_by_uid,omitempty"`
	Ended          time.Time         `json:"ended,omitzero"`
	// Host is the requesting daemon's machine id: the grant is used only
	// there, and decided elsewhere only under a table whose digest is
	// PolicyDigest (the requesting daemon's at the request).
	// RequesterName is the requester's user name there ("" for none): it
	// never approves, on any host.
	Host          string `json:"host,omitempty"`
	RequesterName string `json:"requester_name,omitempty"`
	PolicyDigest  string `json:"policy_digest,omitempty"`
}

func (g *grant) clone() *grant {
	c := *g
	c.Context = maps.Clone(g.Context)
	c.Approvals = slices.Clone(g.Approvals)
	for i := range c.Approvals {
		c.Approvals[i].Groups = slices.Clone(g.Approvals[i].Groups)
	}
	return &c
}

// state is the grant's state at now: a pending request past its
// request_ttl, or an active grant past its end, is expired even before the
// daemon records it.
func (g *grant) state(now time.Time) string {
	switch {
	case g.State == grantPending && !now.Before(g.RequestExpires):
		return grantExpired
	case g.State == grantActive && !now.Before(g.Expires):
		return grantExpired
	}
	return g.State
}

// endedAt is when an ended grant ended (for an unrecorded expiry, the
// moment it expired).
func (g *grant) endedAt() time.Time {
	switch {
	case !g.Ended.IsZero():
		return g.Ended
	case g.State == grantActive:
		return g.Expires
	}
	return g.RequestExpires
}

// covers reports whether the grant allows op on key with context c to uid
// at now: active, the requester's, the same operation and key, and every
// pair the grant fixed present in c.
func (g *grant) covers(uid uint32, op policy.Operation, key string, c map[string]string, now time.Time) bool {
	if g.state(now) != grantActive || g.Requester != uid || g.Op != string(op) || g.Key != key {
		return false
	}
	for k, v := range g.Context {
		if w, ok := c[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func decodeGrant(r keys.GrantRecord) (*grant, error) {
	g := &grant{}
	if err := json.Unmarshal(r.Body, g); err != nil || g.V != 1 {
		return nil, fmt.Errorf("grant %s generation %d: not a version 1 grant record: %w", r.ID, r.Gen, keys.ErrIntegrity)
	}
	g.id, g.gen = r.ID, r.Gen
	return g, nil
}

func newGrantID() string {
	b := make([]byte, keys.BreakglassIDBytes)
	rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}

// grants is the daemon's view of the grant store, at most grantMaxAge old
// for the calls that depend on it. One store read runs at a time, shared
// by everyone who needs it, and gs.mu is never held during device I/O: a
// call whose view is young enough never waits behind a read.
type grants struct {
	store keys.GrantStore
	log   *slog.Logger
	now   func() time.Time
	seen  *highWater
	trail auditLog // where store failures are recorded; nil: nowhere

	mu     sync.Mutex
	view   []*grant
	readAt time.Time   // by the monotonic clock; zero: never read
	err    error       // the last read's error, nil when it succeeded
	flight *grantsRead // the read in flight, nil when none
	next   *grantsRead // a read to start when flight ends (fresh callers), nil when none
	during []*grant    // grants this daemon stored while flight ran

	// test hooks: reads counts store reads; maxAge replaces grantMaxAge
	// when set before the first read.
	test struct {
		reads  atomic.Int64
		maxAge time.Duration
	}
}

// grantsRead is one read of the store that several callers wait for.
type grantsRead struct {
	done chan struct{}
	view []*grant
	err  error
}

func newGrants(store keys.GrantStore, log *slog.Logger, now func() time.Time, seenPath string) *grants {
	return &grants{store: store, log: log, now: now, seen: newHighWater(seenPath)}
}

// cached returns the view as it is, without reading (nil and the error
// when the last read failed or none ran), and whether it is younger than
// grantMaxAge.
func (gs *grants) cached() (view []*grant, young bool, err error) {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	return gs.view, gs.young(), gs.err
}

// young reports whether the view is younger than grantMaxAge. Caller
// holds mu.
func (gs *grants) young() bool {
	return !gs.readAt.IsZero() && time.Since(gs.readAt) < cmp.Or(gs.test.maxAge, grantMaxAge)
}

// current returns the view, re-read when older than grantMaxAge (or when
// fresh is set). A failed read leaves no view: nothing is granted. A read
// already in flight is joined, not repeated; a fresh caller joins only a
// read that starts after it arrived (the one in flight may have read the
// store before a change that ended before this call, on another daemon),
// which everyone arriving meanwhile shares.
func (gs *grants) current(ctx context.Context, fresh bool) ([]*grant, error) {
	gs.mu.Lock()
	if !fresh && gs.young() {
		defer gs.mu.Unlock()
		return gs.view, gs.err
	}
	f := gs.flight
	switch {
	case f == nil:
		f = &grantsRead{done: make(chan struct{})}
		gs.flight, gs.during = f, nil
		go gs.run(context.WithoutCancel(ctx), f)
	case fresh:
		if gs.next == nil {
			gs.next = &grantsRead{done: make(chan struct{})}
		}
		f = gs.next // run starts it when the read in flight ends
	}
	gs.mu.Unlock()
	select {
	case <-f.done:
		return f.view, f.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// run is one read of the store: checked against the high-water mark as it
// was when the read started, then installed as the view.
func (gs *grants) run(ctx context.Context, f *grantsRead) {
	defer close(f.done)
	snap, err := gs.seen.snapshot()
	var view []*grant
	if err == nil {
		view, err = gs.read(ctx)
	}
	now := gs.now()
	if err == nil {
		err = snap.check(view, now)
	}
	if err == nil {
		if err = gs.seen.persist(gs.seen.observed(snap, view, now)); err != nil {
			err = fmt.Errorf("%w: %w", errGrantStore, err)
		}
	}
	gs.mu.Lock()
	if err == nil && gs.seen.dirty() {
		// this daemon's own change could not be saved meanwhile (saveSeen)
		err = fmt.Errorf("%w: break-glass high-water file not saved", errGrantStore)
	}
	if err == nil {
		view = mergeStored(view, gs.during)
	} else {
		view = nil
	}
	was := gs.err
	gs.view, gs.err, gs.readAt, gs.flight, gs.during = view, err, time.Now(), nil, nil
	if n := gs.next; n != nil {
		gs.flight, gs.next = n, nil
		go gs.run(ctx, n)
	}
	gs.mu.Unlock()
	f.view, f.err = view, err
	gs.report(ctx, was, err)
}

// mergeStored returns view with the grants this daemon stored while it was
// read, where they are newer than what the read saw.
func mergeStored(view, stored []*grant) []*grant {
	for _, s := range stored {
		i := slices.IndexFunc(view, func(g *grant) bool { return g.id == s.id })
		switch {
		case i < 0:
			view = append(view, s)
		case view[i].gen < s.gen:
			view[i] = s
		}
	}
	return view
}

// report logs (ERROR, with the store's MESSAGE_ID) and records in the
// audit trail a store that stopped verifying, once per distinct error,
// and logs when it verifies again.
func (gs *grants) report(ctx context.Context, was, err error) {
	switch {
	case err == nil && was != nil:
		gs.log.Info("break-glass grant store readable again")
		return
	case err == nil || was != nil && was.Error() == err.Error():
		return
	}
	gs.log.Error("break-glass grant store cannot be read or verified: no grant is honoured until it can", messageIDKey, msgBreakglassStore, "err", err.Error())
	if gs.trail == nil {
		return
	}
	rec := audit.Record{Peer: breakglassPeer(), Op: auditBGStore, Result: resultFor(err), RequestID: newRequestID(),
		Reason: "break-glass grant store failed its check; no grant is honoured until it verifies: " + err.Error()}
	if aerr := gs.trail.Append(ctx, rec); aerr != nil {
		gs.log.Error("audit log write failed after a break-glass store failure", "err", aerr.Error())
	}
}

func (gs *grants) read(ctx context.Context) ([]*grant, error) {
	gs.test.reads.Add(1)
	recs, err := gs.store.Grants(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errGrantStore, err)
	}
	out := make([]*grant, 0, len(recs))
	for _, r := range recs {
		g, err := decodeGrant(r)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", errGrantStore, err)
		}
		out = append(out, g)
	}
	return out, nil
}

// stored replaces g in the view after this daemon stored it, and raises
// the high-water mark to it (saved outside gs.mu).
func (gs *grants) stored(g *grant) {
	gs.mu.Lock()
	if gs.flight != nil {
		gs.during = append(gs.during, g)
	}
	i := slices.IndexFunc(gs.view, func(h *grant) bool { return h.id == g.id })
	view := slices.Clone(gs.view)
	if i < 0 {
		view = append(view, g)
	} else {
		view[i] = g
	}
	gs.view = view
	gs.mu.Unlock()
	gs.saveSeen(gs.seen.stored(g, gs.now()))
}

// remove deletes every record of g (pruning, or a withdrawn request): the
// high-water mark then knows it gone, so that it coming back is an
// integrity failure.
func (gs *grants) remove(ctx context.Context, g *grant) error {
	id := g.id
	if err := gs.store.DeleteGrant(ctx, id); err != nil {
		return err
	}
	gs.seen.removed(g, gs.now())
	gs.mu.Lock()
	gs.view = slices.DeleteFunc(slices.Clone(gs.view), func(g *grant) bool { return g.id == id })
	gs.mu.Unlock()
	gs.saveSeen(true)
	return nil
}

// saveSeen saves the high-water mark after this daemon's own change; a
// failure is logged and drops the view, so that no grant is honoured until
// a read saves the mark (the next call reads again, and fails closed until
// the file is written).
func (gs *grants) saveSeen(changed bool) {
	err := gs.seen.persist(changed)
	if err == nil {
		return
	}
	gs.log.Error("break-glass high-water file cannot be written: no grant is honoured until it can (retried at the next read)", messageIDKey, msgBreakglassStore, "err", err.Error())
	gs.mu.Lock()
	gs.view, gs.readAt, gs.err = nil, time.Time{}, fmt.Errorf("%w: %w", errGrantStore, err)
	gs.mu.Unlock()
}

// put stores g as its next generation.
func (gs *grants) put(ctx context.Context, g *grant) error {
	body, err := json.Marshal(g)
	if err != nil {
		return err
	}
	if err := gs.store.PutGrant(ctx, g.id, g.gen+1, body); err != nil {
		return err
	}
	g.gen++
	gs.stored(g)
	return nil
}

// errNoGrant: no grant has the id asked for.
var errNoGrant = errors.New("no such grant")

// change applies decide to the newest stored generation of grant id and
// stores the result; when another daemon changed the grant meanwhile
// (keys.ErrGrantConflict) it re-reads and decides again. decide sees a
// copy and returns an error to change nothing.
func (gs *grants) change(ctx context.Context, id string, decide func(g *grant, now time.Time) error) (*grant, error) {
	for range maxGrantRetries {
		view, err := gs.current(ctx, true)
		if err != nil {
			return nil, err
		}
		i := slices.IndexFunc(view, func(g *grant) bool { return g.id == id })
		if i < 0 {
			return nil, errNoGrant
		}
		g := view[i].clone()
		if err := decide(g, gs.now()); err != nil {
			return g, err
		}
		if err := gs.put(ctx, g); errors.Is(err, keys.ErrGrantConflict) {
			continue
		} else if err != nil {
			return nil, err
		}
		return g, nil
	}
	return nil, fmt.Errorf("grant %s: changed by others %d times in a row: %w", id, maxGrantRetries, keys.ErrGrantConflict)
}
