package accessreview

import (
	"time"

	"github.com/keyward/keyward/audit"
	"github.com/keyward/keyward/policy"
)

// Grant is one thing the daemon's config grants, and whether the window's
// allowed calls used it.
type Grant struct {
	// Kind is the kind of grant: "rule" (a [[rule]] of the policy) or
	// "breakglass" (a [[breakglass]] table: what its approved grants
	// allowed).
	Kind string
	// Name is the grant's name ("rule #N" for an unnamed rule).
	Name string
	// Subjects, Keys, Operations and Context are what it grants, to whom,
	// as policy.Report words them.
	Subjects   []string
	Keys       []string
	Operations []string
	Context    map[string]string
	// Allowed counts the allowed calls in the window that it may have
	// allowed (see Options.Policy); LastUse is the last of them.
	Allowed uint64
	LastUse time.Time
}

// Used reports whether any allowed call in the window may have come
// through the grant.
func (g *Grant) Used() bool { return g.Allowed > 0 }

// use is an allowed record, with the caller's identity as the policy sees
// it (supplementary groups resolved on this host).
type use struct {
	rec *audit.Record
	id  policy.Identity
}

// grantSource is one kind of grant: what it grants, and which of its
// grants may have allowed a use.
type grantSource interface {
	// grants lists the kind's grants, in config order.
	grants() []Grant
	// attribute returns the indices, in grants(), of those that may have
	// allowed u.
	attribute(u use) []int
}

// grantKinds are the kinds of grant a review lists, in this order: the
// rules, then the break-glass tables. A new kind is one more entry: its
// grants, read from Options, and how an allowed record is attributed to
// one. An entry returns nil when its kind is not configured.
var grantKinds = []func(Options) grantSource{
	ruleGrants,
	breakglassGrants,
}

// ruleSource is the policy's rules.
type ruleSource struct {
	pol   *policy.Policy
	index map[string]int   // rule name -> index in list
	list  []Grant          // one per rule, in config order
	cache map[useKey][]int // attributions already made, at most maxCached
}

// useKey is what a rule's attribution depends on.
type useKey struct {
	uid, gid uint32
	unit     string
	op, key  string
}

// ruleGrants lists the policy's rules: subjects, keys and operations as
// policy.Report gives them, merged per rule.
func ruleGrants(o Options) grantSource {
	if o.Policy == nil {
		return nil
	}
	s := &ruleSource{pol: o.Policy, index: map[string]int{}, cache: map[useKey][]int{}}
	for i, name := range o.Policy.RuleNames() {
		s.index[name] = i
		s.list = append(s.list, Grant{Kind: "rule", Name: name})
	}
	for _, g := range o.Policy.Report() {
		rg := &s.list[s.index[g.Rule]]
		rg.Subjects = append(rg.Subjects, g.Subject)
		if rg.Keys == nil { // the same for every subject of a rule
			rg.Keys, rg.Context = g.Keys, g.Context
		}
		for _, op := range append(g.Operations, g.Never...) {
			rg.Operations = appendNew(rg.Operations, string(op))
		}
	}
	return s
}

func appendNew(list []string, s string) []string {
	for _, t := range list {
		if t == s {
			return list
		}
	}
	return append(list, s)
}

// maxCached bounds the rule attributions a review remembers.
const maxCached = 100_000

func (s *ruleSource) grants() []Grant { return s.list }

func (s *ruleSource) attribute(u use) []int {
	if u.rec.Grant != "" { // the rules denied it: a break-glass grant allowed it
		return nil
	}
	k := useKey{uid: u.id.UID, gid: u.id.GID, unit: u.id.Unit, op: u.rec.Op, key: u.rec.Key}
	if idx, ok := s.cache[k]; ok {
		return idx
	}
	var idx []int
	for _, name := range s.pol.MayHaveAllowed(u.id, policy.Operation(u.rec.Op), u.rec.Key) {
		idx = append(idx, s.index[name])
	}
	if len(s.cache) < maxCached { // callers choose key names: bounded, as the rows are
		s.cache[k] = idx
	}
	return idx
}

// breakglassSource is the policy's [[breakglass]] tables. A call a
// break-glass grant allowed carries the grant's id in its record; it is
// attributed to each table that may have granted it: the caller may
// request under it, and it covers the operation and the key.
type breakglassSource struct {
	pols []*policy.BreakglassPolicy
	list []Grant
}

func breakglassGrants(o Options) grantSource {
	if !o.Policy.HasBreakglass() {
		return nil
	}
	s := &breakglassSource{pols: o.Policy.Breakglass()}
	for _, bp := range s.pols {
		g := Grant{Kind: "breakglass", Name: bp.Name(), Subjects: bp.Requesters(), Keys: bp.Keys()}
		for _, op := range bp.Operations() {
			g.Operations = append(g.Operations, string(op))
		}
		s.list = append(s.list, g)
	}
	return s
}

func (s *breakglassSource) grants() []Grant { return s.list }

func (s *breakglassSource) attribute(u use) []int {
	if u.rec.Grant == "" {
		return nil
	}
	var idx []int
	for i, bp := range s.pols {
		if bp.MayRequest(u.id) && bp.Covers(policy.Operation(u.rec.Op), u.rec.Key) {
			idx = append(idx, i)
		}
	}
	return idx
}
