package accessreview

import (
	"cmp"
	"errors"
	"slices"
	"time"

	"github.com/keyward/keyward/audit"
	"github.com/keyward/keyward/policy"
)

// Options says what to review.
type Options struct {
	// Files are the trail's files in chain order (audit.Chain).
	Files []string
	// Verify is how the chain is verified (checkpoint keys, where a pruned
	// trail starts); its Each is the review's own.
	Verify audit.VerifyOptions
	// Since: records before it are verified but not counted. Zero: all.
	Since time.Time
	// Policy, when set, is the daemon's policy: its rules are listed with
	// the allowed calls each may have allowed.
	Policy *policy.Policy
	// Users resolves uids on this host; nil: the system's user database.
	Users Users
	// AllowEmpty: a trail with no record is a new log, not a broken one.
	AllowEmpty bool
	// MaxRows bounds the rows (subject x key x operation) kept apart; 0:
	// DefaultMaxRows. Callers choose the key names of their calls (and a
	// user the names of its own scopes), so a trail may name more of them
	// than memory should hold: once MaxRows rows are held, a call that
	// would need a new row is counted in its uid and operation's "other
	// keys" row (no unit, no key). Counts per uid and operation stay exact.
	MaxRows int

	// afterRecord, when set, is called after each record is counted
	// (tests measure memory along the pass).
	afterRecord func(n uint64)
}

// Report is a review.
type Report struct {
	// Chain is what the verification found; Chain.Broken is the first
	// broken record, after which nothing was read or counted.
	Chain audit.Result
	Since time.Time
	// InWindow counts the records at or after Since (every record read
	// when Since is zero), counted or not.
	InWindow uint64
	// UnreadSummaries counts refusal summaries whose counts did not read
	// as keywardd writes them: each counted as one denial of op "refused".
	UnreadSummaries uint64
	// OtherKeysCalls counts the calls counted in an "other keys" row (see
	// Options.MaxRows).
	OtherKeysCalls uint64
	Rows           []Row
	// Grants are every grant of the config (nil without Options.Policy),
	// in kind then config order, with their use.
	Grants []Grant
}

// Row is one subject's use of one operation on one key in the window.
type Row struct {
	UID uint32
	// Folded: the callers a refusal summary counted together, past its
	// budget: no one uid (UID is 0, User and Unit empty).
	Folded bool
	User   string // the uid's user name on this host, "" when unknown
	Unit   string // the caller's systemd unit, "" when none or unknown
	// Key is "" for refusal summaries, which do not name keys, and calls
	// refused before a key was read.
	Key string
	// OtherKeys: the row counts the uid's calls of this operation that
	// would have needed a new row after Options.MaxRows rows were held
	// (Unit and Key are "").
	OtherKeys               bool
	Op                      string
	Allowed, Denied, Failed uint64
	// Last is the time of the row's last record; LastAllowed of its last
	// allowed one (zero: none).
	Last, LastAllowed time.Time
}

// Run reads and verifies the trail and returns the review. A broken
// chain returns the review of the records before the break, and the
// *audit.Break (errors.Is audit.ErrBroken); a file that cannot be read,
// its error.
func Run(o Options) (*Report, error) {
	if o.Users == nil {
		o.Users = SystemUsers()
	}
	rv := &reviewer{o: o, groups: map[groupKey]*counts{}, users: newUserCache(o.Users), maxRows: o.MaxRows}
	if rv.maxRows <= 0 {
		rv.maxRows = DefaultMaxRows
	}
	for _, kind := range grantKinds {
		if src := kind(o); src != nil {
			rv.sources = append(rv.sources, src)
		}
	}
	vo := o.Verify
	var n uint64
	vo.Each = func(r audit.Record) error {
		rv.add(&r)
		if n++; o.afterRecord != nil {
			o.afterRecord(n)
		}
		return nil
	}
	res, err := audit.VerifyWith(vo, o.Files...)
	rep := rv.report(res)
	var brk *audit.Break
	switch {
	case errors.As(err, &brk):
		return rep, err
	case err != nil:
		return nil, err
	case res.Records == 0 && !o.AllowEmpty:
		return rep, ErrNoRecords
	}
	return rep, nil
}

// reviewer holds the state of one pass: bounded by the distinct groups.
type reviewer struct {
	o        Options
	groups   map[groupKey]*counts
	users    *userCache
	sources  []grantSource
	inWindow uint64
	unread   uint64
	maxRows  int
	// otherKeys counts the calls counted in an "other keys" row.
	otherKeys uint64
}

// add counts one verified record.
func (rv *reviewer) add(r *audit.Record) {
	if !rv.o.Since.IsZero() && r.Time.Before(rv.o.Since) {
		return
	}
	rv.inWindow++
	o := outcomeOf(r)
	if o == outcomeNone {
		return
	}
	k := groupKey{uid: r.Peer.UID, unit: r.Peer.Unit, key: r.Key, op: r.Op}
	if r.Op == opRefused {
		rv.addSummary(r, k)
		return
	}
	rv.count(k, o, 1, r.Time)
	if o == outcomeAllowed {
		rv.attribute(r)
	}
}

// DefaultMaxRows is Options.MaxRows's default: some 50 MB of rows.
const DefaultMaxRows = 200_000

// count adds n calls with outcome o at time t to k's row, or, once
// maxRows rows are held and k has none, to the "other keys" row of its uid
// and operation (units, like key names, can be many: a user may name its
// own scopes).
func (rv *reviewer) count(k groupKey, o outcome, n uint64, t time.Time) {
	c := rv.groups[k]
	if c == nil && len(rv.groups) >= rv.maxRows {
		rv.otherKeys += n
		k.key, k.unit, k.otherKeys = "", "", true
		c = rv.groups[k]
	}
	if c == nil {
		c = &counts{}
		rv.groups[k] = c
	}
	c.add(o, n, t)
}

// addSummary counts a refusal summary's refusals under each operation it
// names, with no key.
func (rv *reviewer) addSummary(r *audit.Record, k groupKey) {
	if r.Result == resultMixed {
		k.uid, k.unit, k.folded = 0, "", true
	}
	s, ok := parseSummary(r.Reason)
	if !ok {
		rv.unread++
		rv.count(k, outcomeDenied, 1, r.Time)
		return
	}
	last := s.last
	if last.IsZero() {
		last = r.Time
	}
	for _, oc := range s.ops {
		k.op = oc.op
		rv.count(k, outcomeDenied, oc.n, last)
	}
}

// attribute credits an allowed record to the grants that may have
// allowed it.
func (rv *reviewer) attribute(r *audit.Record) {
	if len(rv.sources) == 0 {
		return
	}
	u := use{rec: r, id: policy.Identity{UID: r.Peer.UID, GID: r.Peer.GID, PID: r.Peer.PID, Unit: r.Peer.Unit,
		Groups: rv.users.groups(r.Peer.UID)}}
	for _, src := range rv.sources {
		list := src.grants()
		for _, i := range src.attribute(u) {
			g := &list[i]
			g.Allowed++
			if r.Time.After(g.LastUse) {
				g.LastUse = r.Time
			}
		}
	}
}

// report sorts the groups into rows: by subject (uid, then unit; the
// folded callers last), key, operation.
func (rv *reviewer) report(res audit.Result) *Report {
	rep := &Report{Chain: res, Since: rv.o.Since, InWindow: rv.inWindow, UnreadSummaries: rv.unread, OtherKeysCalls: rv.otherKeys}
	for k, c := range rv.groups {
		row := Row{UID: k.uid, Folded: k.folded, Unit: k.unit, Key: k.key, OtherKeys: k.otherKeys, Op: k.op,
			Allowed: c.allowed, Denied: c.denied, Failed: c.failed, Last: c.last, LastAllowed: c.lastAllowed}
		if !k.folded {
			row.User = rv.users.name(k.uid)
		}
		rep.Rows = append(rep.Rows, row)
	}
	slices.SortFunc(rep.Rows, func(a, b Row) int {
		return cmp.Or(compareBool(a.Folded, b.Folded), cmp.Compare(a.UID, b.UID), cmp.Compare(a.Unit, b.Unit),
			compareBool(a.OtherKeys, b.OtherKeys), cmp.Compare(a.Key, b.Key), cmp.Compare(a.Op, b.Op))
	})
	for _, src := range rv.sources {
		rep.Grants = append(rep.Grants, src.grants()...)
	}
	if rv.o.Policy != nil && rep.Grants == nil {
		rep.Grants = []Grant{}
	}
	return rep
}

func compareBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}
