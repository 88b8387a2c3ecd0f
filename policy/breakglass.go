package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Break-glass: time-boxed access that a requester asks for and other people
// approve. A Breakglass is one [[breakglass]] table, in the policy's terms
// (the config package reads its durations). Compiled, it says who may ask
// for what and who may approve; the grants themselves are the daemon's
// state, never the policy's: Decide ignores break-glass entirely.
type Breakglass struct {
	Name string
	// Requesters may ask for a grant; Approvers may approve or deny one.
	// A requester never approves their own request, even when in both.
	Requesters Subjects
	Approvers  Subjects
	// Keys are key-name globs and Operations data operations, as in a rule.
	Keys       []string
	Operations []string
	// MaxDuration bounds a grant's duration, RequestTTL how long a request
	// waits for its approvals (0: DefaultRequestTTL); Approvals is how many
	// distinct approvers a grant needs (0: 1).
	MaxDuration time.Duration
	Approvals   int
	RequestTTL  time.Duration
}

// Subjects name people as a rule does: user names or decimal uids, group
// names or decimal gids, uids, gids. Units are not subjects of break-glass:
// a grant belongs to the person (uid) who asked.
type Subjects struct {
	Users  []string `toml:"users"`
	Groups []string `toml:"groups"`
	UIDs   []uint32 `toml:"uids"`
	GIDs   []uint32 `toml:"gids"`
}

// Break-glass bounds.
const (
	DefaultRequestTTL = time.Hour
	MinGrantDuration  = time.Minute
	MaxGrantDuration  = 24 * time.Hour
	MaxRequestTTL     = 24 * time.Hour
	MaxApprovals      = 8
	// MaxBreakglassPolicies bounds the [[breakglass]] tables of one config.
	MaxBreakglassPolicies = 64
)

// BreakglassOperations are the operations a break-glass policy may grant:
// the data operations a person uses through keyward's socket. Admin
// operations never; credential and the Kubernetes KMS operations neither
// (they are asked for by systemd and the apiserver, not by a person).
var BreakglassOperations = []Operation{OpWrap, OpUnwrap, OpRewrap, OpDataKey, OpSign, OpVerify, OpMAC, OpVerifyMAC, OpPublicKey}

// BreakglassPolicy is one compiled [[breakglass]] table, immutable.
type BreakglassPolicy struct {
	name        string
	requesters  rule // only users and groups are set
	approvers   rule
	ops         opSet
	globs       []glob
	maxDuration time.Duration
	approvals   int
	requestTTL  time.Duration
	digest      string
}

// CompileBreakglass validates the tables and resolves their names; every
// problem is reported, each wrapping ErrInvalidPolicy and naming its table.
func CompileBreakglass(in []Breakglass, r Resolver) ([]*BreakglassPolicy, error) {
	var out []*BreakglassPolicy
	var errs []error
	if len(in) > MaxBreakglassPolicies {
		errs = append(errs, policyErr("%d [[breakglass]] tables, at most %d", len(in), MaxBreakglassPolicies))
	}
	seen := map[string]bool{}
	for i := range in {
		bp, label, perrs := compileBreakglass(i, &in[i], r)
		if seen[bp.name] {
			perrs = append(perrs, policyErr("name already used by another [[breakglass]] table"))
		}
		seen[bp.name] = true
		for _, err := range perrs {
			errs = append(errs, fmt.Errorf("%s: %w", label, err))
		}
		out = append(out, bp)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

func compileBreakglass(i int, in *Breakglass, res Resolver) (*BreakglassPolicy, string, []error) {
	label := fmt.Sprintf("breakglass #%d", i+1)
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, policyErr(format, args...)) }
	switch {
	case in.Name == "":
		fail("no name: requests name their break-glass policy")
	case len(in.Name) > 64 || strings.Trim(in.Name, "abcdefghijklmnopqrstuvwxyz0123456789-_.") != "":
		fail("name %s: 1 to 64 of a-z, 0-9, '-', '_', '.'", quote(in.Name))
	default:
		label = "breakglass " + quote(in.Name)
	}
	bp := &BreakglassPolicy{name: in.Name, maxDuration: in.MaxDuration, approvals: max(in.Approvals, 1), requestTTL: in.RequestTTL,
		digest: tableDigest(in)}
	if bp.requestTTL == 0 {
		bp.requestTTL = DefaultRequestTTL
	}
	rc := &ruleCompiler{in: &Rule{}}
	bp.requesters = subjectsRule(rc, "requesters", in.Requesters, res)
	bp.approvers = subjectsRule(rc, "approvers", in.Approvers, res)
	errs = append(errs, rc.errs...)
	errs = append(errs, bp.compileGrants(in)...)
	errs = append(errs, bp.checkBounds(in)...)
	return bp, label, errs
}

// subjectsRule compiles one set of subjects into a rule's identity part.
func subjectsRule(c *ruleCompiler, what string, s Subjects, res Resolver) rule {
	n := len(c.errs)
	r := rule{users: c.ids("user", "uid", s.Users, s.UIDs, res), groups: c.ids("group", "gid", s.Groups, s.GIDs, res)}
	for i := n; i < len(c.errs); i++ {
		c.errs[i] = fmt.Errorf("%s: %w", what, c.errs[i])
	}
	if len(r.users)+len(r.groups) == 0 && len(c.errs) == n {
		c.fail(policyErr("%s: no users, groups, uids or gids: nobody could %s", what, strings.TrimSuffix(what, "ers")))
	}
	return r
}

// compileGrants reads the keys and operations a grant may cover.
func (bp *BreakglassPolicy) compileGrants(in *Breakglass) []error {
	var errs []error
	if len(in.Keys) == 0 {
		errs = append(errs, policyErr("no keys: the policy could grant nothing"))
	}
	for _, k := range in.Keys {
		g, err := compileGlob(k)
		if err != nil {
			errs = append(errs, policyErr("%s", err))
			continue
		}
		bp.globs = append(bp.globs, g)
	}
	if len(in.Operations) == 0 {
		errs = append(errs, policyErr("no operations: the policy could grant nothing"))
	}
	for _, s := range in.Operations {
		op, err := ParseOperation(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("%w: %w", err, ErrInvalidPolicy))
			continue
		}
		if !IsBreakglassOperation(op) {
			errs = append(errs, policyErr("operation %s cannot be granted by break-glass (only %s)", op, joinOps(BreakglassOperations, ", ")))
			continue
		}
		idx, _ := opIndex(op)
		bp.ops |= 1 << uint(idx)
	}
	return errs
}

// checkBounds checks the durations and that enough approvers can exist.
func (bp *BreakglassPolicy) checkBounds(in *Breakglass) []error {
	var errs []error
	if in.MaxDuration < MinGrantDuration || in.MaxDuration > MaxGrantDuration {
		errs = append(errs, policyErr("max_duration %s: want %s..%s", in.MaxDuration, MinGrantDuration, MaxGrantDuration))
	}
	if in.RequestTTL != 0 && (in.RequestTTL < MinGrantDuration || in.RequestTTL > MaxRequestTTL) {
		errs = append(errs, policyErr("request_ttl %s: want %s..%s", in.RequestTTL, MinGrantDuration, MaxRequestTTL))
	}
	if in.Approvals < 0 || in.Approvals > MaxApprovals {
		errs = append(errs, policyErr("approvals %d: want 1..%d", in.Approvals, MaxApprovals))
	}
	// With groups the approvers' number is the host's; by uids alone it is
	// known: a policy that could never reach its approvals is a typo.
	if len(bp.approvers.groups) == 0 && len(bp.approvers.users) > 0 {
		if len(bp.approvers.users) < bp.approvals {
			errs = append(errs, policyErr("approvals %d, but approvers name only %d people", bp.approvals, len(bp.approvers.users)))
		} else if len(bp.requesters.groups) == 0 && len(bp.approvers.users) == bp.approvals && bp.approversAreRequesters() {
			errs = append(errs, policyErr("every approver is also a requester, and nobody approves their own request: a request by one of them could never get %d approvals", bp.approvals))
		}
	}
	return errs
}

func (bp *BreakglassPolicy) approversAreRequesters() bool {
	for _, a := range bp.approvers.users {
		if !slices.ContainsFunc(bp.requesters.users, func(r subject) bool { return r.id == a.id }) {
			return false
		}
	}
	return true
}

// tableDigest is a digest of the table as written (names, not the ids they
// resolve to here): two hosts with the same table get the same digest
// whatever their uid numbering.
func tableDigest(in *Breakglass) string {
	b, _ := json.Marshal(in) // plain strings, numbers and slices: never fails
	sum := sha256.Sum256(append([]byte("keyward/v1/breakglass-table\x00"), b...))
	return hex.EncodeToString(sum[:16])
}

// Digest identifies the table as written: a grant records its policy's
// digest, and a daemon of another host decides on the grant only under a
// table with the same digest.
func (bp *BreakglassPolicy) Digest() string { return bp.digest }

// NamesApproverUID reports whether the approvers name uid itself (in
// users or uids), not merely through a group: uid 0 approves only so.
func (bp *BreakglassPolicy) NamesApproverUID(uid uint32) bool {
	return slices.ContainsFunc(bp.approvers.users, func(s subject) bool { return s.id == uid })
}

// Name is the policy's name.
func (bp *BreakglassPolicy) Name() string { return bp.name }

// MaxDuration, Approvals and RequestTTL are its bounds.
func (bp *BreakglassPolicy) MaxDuration() time.Duration { return bp.maxDuration }
func (bp *BreakglassPolicy) Approvals() int             { return bp.approvals }
func (bp *BreakglassPolicy) RequestTTL() time.Duration  { return bp.requestTTL }

// MayRequest reports whether id may ask for a grant under bp.
func (bp *BreakglassPolicy) MayRequest(id Identity) bool { return bp.requesters.matchIdentity(id) }

// MayApprove reports whether id is one of bp's approvers; whether they may
// approve a given request (never their own) is the daemon's to decide.
func (bp *BreakglassPolicy) MayApprove(id Identity) bool { return bp.approvers.matchIdentity(id) }

// Covers reports whether bp may grant op on key.
func (bp *BreakglassPolicy) Covers(op Operation, key string) bool {
	c := check(Request{Op: op, Key: key})
	return c.opOK && c.keyOK && bp.ops.has(c.opIdx) && (&rule{globs: bp.globs}).matchKey(key)
}

// Requesters and Approvers describe the subjects for people: "user alice
// (uid 1000)", "uid 1002", "group oncall (gid 990)".
func (bp *BreakglassPolicy) Requesters() []string { return describeSubjects(bp.requesters) }
func (bp *BreakglassPolicy) Approvers() []string  { return describeSubjects(bp.approvers) }

// Operations and Keys are what bp may grant, as written.
func (bp *BreakglassPolicy) Operations() []Operation { return bp.ops.list() }
func (bp *BreakglassPolicy) Keys() []string {
	out := make([]string, len(bp.globs))
	for i, g := range bp.globs {
		out[i] = g.src
	}
	return out
}

func describeSubjects(r rule) []string {
	var out []string
	for _, s := range r.users {
		if s.name != "" {
			out = append(out, fmt.Sprintf("user %s (uid %d)", plain(s.name), s.id))
		} else {
			out = append(out, fmt.Sprintf("uid %d", s.id))
		}
	}
	for _, s := range r.groups {
		if s.name != "" {
			out = append(out, fmt.Sprintf("group %s (gid %d)", plain(s.name), s.id))
		} else {
			out = append(out, fmt.Sprintf("gid %d", s.id))
		}
	}
	return out
}

// WithBreakglass returns a copy of p that carries the break-glass
// policies bps (p is unchanged; nil p is the empty policy).
func (p *Policy) WithBreakglass(bps []*BreakglassPolicy) *Policy {
	var q Policy
	if p != nil {
		q = *p
	}
	q.breakglass = slices.Clone(bps)
	return &q
}

// Breakglass returns the break-glass policies, in config order.
func (p *Policy) Breakglass() []*BreakglassPolicy {
	if p == nil {
		return nil
	}
	return slices.Clone(p.breakglass)
}

// HasBreakglass reports whether p has break-glass policies (no copy).
func (p *Policy) HasBreakglass() bool { return p != nil && len(p.breakglass) > 0 }

// BreakglassNamed returns the break-glass policy called name.
func (p *Policy) BreakglassNamed(name string) (*BreakglassPolicy, bool) {
	if p == nil {
		return nil, false
	}
	for _, bp := range p.breakglass {
		if bp.name == name {
			return bp, true
		}
	}
	return nil, false
}

// BreakglassPaths lists the break-glass policies under which id could get
// req with approval: id may request, and the policy covers the operation
// and key. The context is not a condition of a policy (a grant may fix one).
func (p *Policy) BreakglassPaths(id Identity, req Request) []*BreakglassPolicy {
	var out []*BreakglassPolicy
	for _, bp := range p.Breakglass() {
		if bp.MayRequest(id) && bp.Covers(req.Op, req.Key) {
			out = append(out, bp)
		}
	}
	return out
}

// Path renders what bp offers a requester, for explain and report: "could
// get unwrap on payments/* with approval from group oncall (gid 990)
// (policy "db", up to 1h, 1 approval)".
func (bp *BreakglassPolicy) Path(ops []Operation, key string) string {
	return fmt.Sprintf("could get %s on %s with approval from %s (policy %s, up to %s, %d approval%s)",
		joinOps(ops, ","), key, strings.Join(bp.Approvers(), ", "), quote(bp.name), ShortDuration(bp.maxDuration), bp.approvals, plural(bp.approvals))
}

// ShortDuration writes d as a config would: "1h", "1h30m", not "1h0m0s".
func ShortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// IsBreakglassOperation reports whether break-glass may grant op.
func IsBreakglassOperation(op Operation) bool { return slices.Contains(BreakglassOperations, op) }
