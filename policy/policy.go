package policy

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/keyward/keyward/keys"
)

// Rule is one [[rule]] table of the daemon's config: who (users, groups,
// uids, gids, units: any one of them matching is enough), what (operations,
// named exactly), on which keys (globs) and under which context pairs.
type Rule struct {
	// Name identifies the rule in decisions, reports and errors; unnamed
	// rules are called "rule #N" (1-based, file order).
	Name string `toml:"name"`
	// Users are user names (resolved at Compile) or decimal uids ("1000").
	Users []string `toml:"users"`
	// Groups are group names or decimal gids, matched against the caller's
	// primary and supplementary groups.
	Groups []string `toml:"groups"`
	UIDs   []uint32 `toml:"uids"`
	GIDs   []uint32 `toml:"gids"`
	// Units are systemd unit names ("payments.service"), matched exactly.
	Units []string `toml:"units"`
	// Keys are key-name globs: '*' and '?' within a segment, a trailing
	// "/**" for everything below a prefix, "**" for every key.
	Keys []string `toml:"keys"`
	// Operations are operation names, each listed explicitly.
	Operations []string `toml:"operations"`
	// Context pairs must all be present, with these exact values, in the
	// request's context.
	Context map[string]string `toml:"context"`
}

// Identity is a caller as the kernel reports it at accept time. PID is
// carried for logs; no rule matches on it.
type Identity struct {
	UID    uint32
	GID    uint32
	Groups []uint32 // supplementary groups
	PID    int32
	Unit   string // systemd unit from the peer's cgroup, "" when unknown
}

// maxShownGroups bounds how many supplementary groups a message lists.
const maxShownGroups = 16

// String renders the identity's policy inputs for reasons and logs.
func (id Identity) String() string {
	return fmt.Sprintf("uid=%d gid=%d groups=%s unit=%s", id.UID, id.GID, formatGroups(id.Groups), quote(id.Unit))
}

func formatGroups(gs []uint32) string {
	var b strings.Builder
	b.WriteByte('[')
	for i, g := range gs {
		if i == maxShownGroups {
			fmt.Fprintf(&b, " ... +%d", len(gs)-i)
			break
		}
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(strconv.FormatUint(uint64(g), 10))
	}
	b.WriteByte(']')
	return b.String()
}

// Request is what a caller asks: an operation on a key name, with the
// request's context (client-chosen; see the package doc).
type Request struct {
	Op      Operation
	Key     string
	Context map[string]string
}

// Decision is the outcome of Decide. Reason is for logs and audit; it is
// never sent to the caller, who only learns "not allowed".
type Decision struct {
	Allowed bool
	Rule    string // name of the granting rule; "" when denied
	Reason  string
}

// RuleVerdict says, for one rule, whether it allows the request and why not.
type RuleVerdict struct {
	Rule    string
	Matched bool
	Why     string
}

// Policy is a compiled, immutable set of rules, safe for concurrent use. The
// nil and zero Policy deny everything.
type Policy struct {
	rules    []rule
	warnings []string
	// breakglass are the [[breakglass]] tables (WithBreakglass): who may
	// ask for and approve time-boxed grants. Decide never reads them.
	breakglass []*BreakglassPolicy
}

// Reserved is what keywardd withholds from every caller whatever the rules
// say. The daemon passes the values it runs with (not a reloaded file's):
// audit_checkpoint_key is fixed until a restart.
type Reserved struct {
	// CheckpointKey signs the audit log's checkpoints; no caller may sign
	// with it, or it could forge them. "" reserves nothing.
	CheckpointKey string
}

// reservedReason is the reason of a denial by Reserved: constant, so that
// Decide still does not allocate.
const reservedReason = "the key signs audit checkpoints and is reserved to keywardd (audit_checkpoint_key)"

// Withholds reports whether res withholds op on key whatever grants it
// (a rule or a break-glass grant).
func (res Reserved) Withholds(op Operation, key string) bool {
	return res.reserves(Request{Op: op, Key: key})
}

// reserves reports whether res withholds req whatever the rules say.
func (res Reserved) reserves(req Request) bool {
	return req.Op == OpSign && res.CheckpointKey != "" && req.Key == res.CheckpointKey
}

// noID is (uid_t)-1 / (gid_t)-1: "no id" to the kernel, never a real caller.
const noID = ^uint32(0)

// subject is a uid or gid a rule names; name is "" when given as a number.
type subject struct {
	id   uint32
	name string
}

type pair struct{ k, v string }

type rule struct {
	name        string
	users       []subject // unique ids, in config order, first spelling kept
	groups      []subject
	units       []string
	ops         opSet
	globs       []glob
	context     []pair // sorted by key
	allowReason string
}

// Compile validates rules and resolves their names. Every problem found is
// reported (errors.Join), each wrapping ErrInvalidPolicy and naming its rule.
// r may be nil when no rule names a user or group by name. No rules at all is
// valid: that policy denies everything.
func Compile(rules []Rule, r Resolver) (*Policy, error) {
	p := &Policy{rules: make([]rule, 0, len(rules))}
	var errs []error
	names := make(map[string]int, len(rules))
	for i := range rules {
		cr, label, rerrs, warns := compileRule(i, &rules[i], r)
		for _, w := range warns {
			p.warnings = append(p.warnings, label+": "+w)
		}
		if prev, dup := names[cr.name]; dup {
			rerrs = append(rerrs, policyErr("name already used by rule #%d", prev+1))
			label = fmt.Sprintf("%s (#%d)", label, i+1)
		} else {
			names[cr.name] = i
		}
		for _, err := range rerrs {
			errs = append(errs, fmt.Errorf("%s: %w", label, err))
		}
		if len(errs) == 0 {
			p.rules = append(p.rules, cr)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return p, nil
}

// policyErr formats one problem of a rule; the caller prefixes the rule.
func policyErr(format string, args ...any) error {
	return fmt.Errorf(format+": %w", append(args, ErrInvalidPolicy)...)
}

// compileRule compiles rules[i]: the rule, the label its problems are
// named by, its errors and its warnings.
func compileRule(i int, in *Rule, res Resolver) (rule, string, []error, []string) {
	c := &ruleCompiler{in: in, r: rule{name: in.Name}}
	c.name(i)
	c.subjects(res)
	c.operations()
	c.keyGlobs()
	c.contextPairs()
	c.r.allowReason = "allowed by rule " + quote(c.r.name)
	return c.r, c.label, c.errs, c.warns
}

// ruleCompiler gathers one rule's compiled form and its problems, step by
// step; each step reads one part of the rule.
type ruleCompiler struct {
	in    *Rule
	r     rule
	label string
	errs  []error
	warns []string
}

func (c *ruleCompiler) fail(err error) { c.errs = append(c.errs, err) }

func (c *ruleCompiler) warn(format string, args ...any) {
	c.warns = append(c.warns, fmt.Sprintf(format, args...))
}

// name checks the rule's name and sets the label its problems are named by.
func (c *ruleCompiler) name(i int) {
	in := c.in
	c.label = fmt.Sprintf("rule #%d", i+1)
	switch {
	case in.Name == "":
		c.r.name = c.label
	case len(in.Name) > keys.MaxNameLen || !printableName(in.Name):
		c.fail(policyErr("name %s: at most %d bytes of printable UTF-8", quote(in.Name), keys.MaxNameLen))
	case strings.TrimSpace(in.Name) != in.Name:
		c.fail(policyErr("name %s has leading or trailing spaces", quote(in.Name)))
	default:
		c.label = "rule " + quote(in.Name)
	}
}

// subjects reads users, uids, groups, gids and units.
func (c *ruleCompiler) subjects(res Resolver) {
	in := c.in
	c.r.users = c.ids("user", "uid", in.Users, in.UIDs, res)
	c.r.groups = c.ids("group", "gid", in.Groups, in.GIDs, res)
	for _, u := range in.Units {
		switch err := checkUnit(u); {
		case err != nil:
			c.fail(err)
		case slices.Contains(c.r.units, u):
			c.warn("unit %s listed twice", quote(u))
		default:
			c.r.units = append(c.r.units, u)
			if strings.HasSuffix(u, ".socket") {
				c.warn("unit %s: only the socket unit's own ExecStartPre=/ExecStopPost= commands run in it, not the service it starts", quote(u))
			}
		}
	}
	if len(in.Users)+len(in.UIDs)+len(in.Groups)+len(in.GIDs)+len(in.Units) == 0 {
		c.fail(policyErr("no users, groups, uids, gids or units: the rule would match nobody"))
	}
}

// ids reads the names then the numeric ids of one kind of subject (kind
// "user", idKind "uid"; or "group", "gid").
func (c *ruleCompiler) ids(kind, idKind string, names []string, ids []uint32, res Resolver) []subject {
	var subs []subject
	for _, s := range names {
		if sub, err := resolveSubject(kind, s, res); err != nil {
			c.fail(err)
		} else {
			subs = addSubject(subs, sub)
		}
	}
	for _, id := range ids {
		if id == noID {
			c.fail(policyErr("%s %d is (%s_t)-1, not a %s", idKind, id, idKind, kind))
			continue
		}
		subs = addSubject(subs, subject{id: id})
	}
	return subs
}

// operations reads the operations, and refuses context pairs on a rule
// granting one whose requests carry none.
func (c *ruleCompiler) operations() {
	if len(c.in.Operations) == 0 {
		c.fail(policyErr("no operations: the rule would allow nothing"))
	}
	for _, s := range c.in.Operations {
		op, err := ParseOperation(s)
		if err != nil {
			c.fail(fmt.Errorf("%w: %w", err, ErrInvalidPolicy))
			continue
		}
		idx, _ := opIndex(op)
		if c.r.ops.has(idx) {
			c.warn("operation %s listed twice", op)
		}
		c.r.ops |= 1 << uint(idx)
	}
	if i, _ := opIndex(OpCredential); c.r.ops.has(i) && len(c.r.units) == 0 {
		c.warn("operation credential is granted only to the units a rule names (systemd asks as root), and this rule names none")
	}
	if len(c.in.Context) == 0 {
		return
	}
	var bare []string
	for _, op := range c.r.ops.list() {
		if !op.CarriesContext() {
			bare = append(bare, string(op))
		}
	}
	if len(bare) > 0 {
		c.fail(policyErr("context pairs, but %s requests carry no context, so this rule could never grant them: grant them in a rule without context",
			strings.Join(bare, ", ")))
	}
}

// keyGlobs compiles the key patterns.
func (c *ruleCompiler) keyGlobs() {
	if len(c.in.Keys) == 0 {
		c.fail(policyErr("no keys: the rule would allow nothing (\"**\" is every key)"))
	}
	for _, k := range c.in.Keys {
		g, err := compileGlob(k)
		if err != nil {
			c.fail(policyErr("%s", err))
			continue
		}
		if slices.ContainsFunc(c.r.globs, func(h glob) bool { return h.src == k }) {
			c.warn("key pattern %s listed twice", quote(k))
		} else {
			c.r.globs = append(c.r.globs, g)
		}
	}
}

// contextPairs reads the context pairs a request must carry.
func (c *ruleCompiler) contextPairs() {
	ctx := c.in.Context
	if len(ctx) > keys.MaxContext {
		c.fail(policyErr("context has %d pairs, but a request carries at most %d", len(ctx), keys.MaxContext))
	}
	for _, k := range slices.Sorted(maps.Keys(ctx)) { // sorted: errors in a stable order
		v := ctx[k]
		switch {
		case k == "":
			c.fail(policyErr("context has an empty key"))
		case len(k) > keys.MaxContextKV || len(v) > keys.MaxContextKV:
			c.fail(policyErr("context key %s: key or value over %d bytes, more than a request may carry", quote(k), keys.MaxContextKV))
		case keys.IsReservedContextKey(k):
			c.fail(policyErr("context key %s: keys beginning with %s are reserved for keywardd's own blobs and no request may carry one, so this rule could never grant anything",
				quote(k), quote(keys.ReservedContextPrefix)))
		default:
			c.r.context = append(c.r.context, pair{k, v})
		}
	}
}

// resolveSubject reads a users or groups entry: decimal digits are an id,
// anything else a name for the Resolver.
func resolveSubject(kind, s string, res Resolver) (subject, error) {
	if s == "" {
		return subject{}, policyErr("empty %s name", kind)
	}
	if isDigits(s) {
		n, err := strconv.ParseUint(s, 10, 32)
		if err != nil || uint32(n) == noID {
			return subject{}, policyErr("%s id %s is not a valid 32-bit id", kind, quote(s))
		}
		return subject{id: uint32(n)}, nil
	}
	if !printableName(s) || len(s) > 256 {
		return subject{}, policyErr("%s name %s is not a plausible name", kind, quote(s))
	}
	if res == nil {
		return subject{}, policyErr("%s %s: no resolver for names", kind, quote(s))
	}
	var (
		id  uint32
		err error
	)
	if kind == "user" {
		id, err = res.LookupUser(s)
	} else {
		id, err = res.LookupGroup(s)
	}
	if err != nil {
		return subject{}, policyErr("unknown %s %s (%v)", kind, quote(s), err)
	}
	if id == noID {
		return subject{}, policyErr("%s %s resolved to id %d, which is no %s", kind, quote(s), id, kind)
	}
	return subject{id: id, name: s}, nil
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

func addSubject(list []subject, s subject) []subject {
	for _, t := range list {
		if t.id == s.id {
			return list
		}
	}
	return append(list, s)
}

// unitTypes are the systemd unit type suffixes. A unit named without one
// ("payments" for "payments.service") would never match, so Compile refuses it.
var unitTypes = []string{"service", "socket", "device", "mount", "automount", "swap", "target", "path", "timer", "slice", "scope"}

// peerUnitTypes are the types a caller's unit can have: the daemon takes the
// unit from the caller's cgroup, the first service, scope or socket below
// the slices (socket.Peer.Unit). No process runs in a timer, target, path or
// slice unit, so a rule naming one would match nobody: Compile refuses it.
var peerUnitTypes = []string{"service", "scope", "socket"}

// maxUnitLen is systemd's UNIT_NAME_MAX.
const maxUnitLen = 255

func checkUnit(u string) error {
	if u == "" {
		return policyErr("empty unit name")
	}
	if len(u) > maxUnitLen {
		return policyErr("unit %s is longer than %d bytes", quote(u), maxUnitLen)
	}
	for i := 0; i < len(u); i++ {
		switch c := u[i]; {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == ':' || c == '_' || c == '.' || c == '-' || c == '@' || c == '\\':
		default:
			return policyErr("unit %s: byte %d is not allowed in a systemd unit name", quote(u), i)
		}
	}
	dot := strings.LastIndexByte(u, '.')
	switch {
	case dot <= 0 || !slices.Contains(unitTypes, u[dot+1:]):
		return policyErr("unit %s has no unit type suffix (want e.g. %s.service)", quote(u), strings.TrimSuffix(u, "."))
	case !slices.Contains(peerUnitTypes, u[dot+1:]):
		return policyErr("unit %s: callers run in service, scope or socket units, never in a .%s unit, so it would match nobody (name the service it starts)", quote(u), u[dot+1:])
	case strings.HasSuffix(u[:dot], "@"):
		return policyErr("unit %s is a template: callers run in its instances (%sNAME%s)", quote(u), u[:dot], u[dot:])
	}
	return nil
}

// PeerUnit checks that u is a unit name a caller can have (see Identity.Unit),
// as Compile checks the units a rule names.
func PeerUnit(u string) error { return checkUnit(u) }

// Warnings are the problems Compile found that leave the policy valid but
// say the config is not what its author meant (an entry listed twice, a
// socket unit), each naming its rule.
func (p *Policy) Warnings() []string {
	if p == nil {
		return nil
	}
	return slices.Clone(p.warnings)
}

// CheckReserved reports every rule that grants what res withholds: sign on
// the audit checkpoint key, named exactly (a wildcard that also covers it
// keeps granting every other key). Such a grant would never take effect.
func CheckReserved(rules []Rule, res Reserved) []error {
	if res.CheckpointKey == "" {
		return nil
	}
	var errs []error
	for i := range rules {
		in := &rules[i]
		if !slices.Contains(in.Operations, string(OpSign)) || !slices.Contains(in.Keys, res.CheckpointKey) {
			continue
		}
		label := fmt.Sprintf("rule #%d", i+1)
		if in.Name != "" {
			label = "rule " + quote(in.Name)
		}
		errs = append(errs, fmt.Errorf("%s: grants sign on %s, which is audit_checkpoint_key: keywardd reserves it, no caller may sign with it: %w",
			label, quote(res.CheckpointKey), ErrInvalidPolicy))
	}
	return errs
}

// Rules returns the number of rules.
func (p *Policy) Rules() int {
	if p == nil {
		return 0
	}
	return len(p.rules)
}

// Names reports whether any rule names the identity (by uid, group or
// unit), whatever it grants, or a break-glass policy names it as a
// requester or approver: a caller nobody names can be refused before its
// request is read.
func (p *Policy) Names(id Identity) bool {
	if p == nil {
		return false
	}
	for i := range p.rules {
		if p.rules[i].matchIdentity(id) {
			return true
		}
	}
	for _, bp := range p.breakglass { // requesters and approvers call too
		if bp.requesters.matchIdentity(id) || bp.approvers.matchIdentity(id) {
			return true
		}
	}
	return false
}

func (r *rule) matchIdentity(id Identity) bool {
	for _, s := range r.users {
		if s.id == id.UID {
			return true
		}
	}
	for _, s := range r.groups {
		if s.id == id.GID || slices.Contains(id.Groups, s.id) {
			return true
		}
	}
	return id.Unit != "" && slices.Contains(r.units, id.Unit)
}

func (r *rule) matchKey(name string) bool {
	for i := range r.globs {
		if r.globs[i].match(name) {
			return true
		}
	}
	return false
}

func (r *rule) matchContext(c map[string]string) bool {
	for _, p := range r.context {
		if v, ok := c[p.k]; !ok || v != p.v {
			return false
		}
	}
	return true
}

// miss records which conditions of a rule a request fails.
type miss uint8

const (
	missIdentity miss = 1 << iota
	missOperation
	missKey
	missContext
)

func (m miss) count() int {
	n := 0
	for ; m != 0; m &= m - 1 {
		n++
	}
	return n
}

// checked is a request with its operation and key looked up once.
type checked struct {
	req   Request
	opIdx int
	opOK  bool
	keyOK bool
}

func check(req Request) checked {
	i, ok := opIndex(req.Op)
	return checked{req: req, opIdx: i, opOK: ok, keyOK: keys.ValidateName(req.Key) == nil}
}

func (r *rule) misses(id Identity, c *checked) miss {
	var m miss
	if !r.matchIdentity(id) {
		m |= missIdentity
	}
	if !c.opOK || !r.ops.has(c.opIdx) {
		m |= missOperation
	}
	if !c.keyOK || !r.matchKey(c.req.Key) {
		m |= missKey
	}
	if !r.matchContext(c.req.Context) {
		m |= missContext
	}
	return m
}

// Decide returns whether the identity may make the request: allowed by the
// first rule, in config order, that names the identity, lists the operation,
// matches the key and finds its context in the request, unless res withholds
// it. A key that is not a valid key name never matches, not even "**";
// listing keys is decided per listed key. An operation that carries no
// context (Operation.CarriesContext) is decided as the daemon decides it,
// without the request's context. It is the one decision: keywardd and
// "keyward policy explain" both call it. Decide does not allocate when it
// allows.
func (p *Policy) Decide(id Identity, req Request, res Reserved) Decision {
	if !req.Op.CarriesContext() {
		req.Context = nil
	}
	id = decisionIdentity(id, req.Op)
	if p == nil || len(p.rules) == 0 {
		c := check(req)
		return Decision{Reason: "no rules: " + denyBase(id, &c)}
	}
	c := check(req)
	if c.opOK && c.keyOK {
		for i := range p.rules {
			r := &p.rules[i]
			if r.ops.has(c.opIdx) && r.matchIdentity(id) && r.matchKey(req.Key) && r.matchContext(req.Context) {
				if res.reserves(req) {
					return Decision{Reason: reservedReason}
				}
				return Decision{Allowed: true, Rule: r.name, Reason: r.allowReason}
			}
		}
	}
	return p.deny(id, &c)
}

// decisionIdentity is the identity op is decided for: for credential,
// which systemd asks as root for every unit, only the unit (uid, gid and
// groups never match). Decide and Explain both use it.
func decisionIdentity(id Identity, op Operation) Identity {
	if op == OpCredential {
		return Identity{UID: noID, GID: noID, PID: id.PID, Unit: id.Unit}
	}
	return id
}

// deny explains a denial by the closest miss: the rule failing the fewest
// conditions, preferring one that names the identity, then config order.
func (p *Policy) deny(id Identity, c *checked) Decision {
	best, bestMiss := -1, miss(0)
	for i := range p.rules {
		m := p.rules[i].misses(id, c)
		if m == 0 { // unreachable from Decide; keeps deny honest if it ever is
			continue
		}
		if best < 0 || m.count() < bestMiss.count() ||
			(m.count() == bestMiss.count() && bestMiss&missIdentity != 0 && m&missIdentity == 0) {
			best, bestMiss = i, m
		}
	}
	reason := denyBase(id, c)
	if best >= 0 {
		r := &p.rules[best]
		reason += "; closest: rule " + quote(r.name) + ": " + r.why(bestMiss, id, c)
	}
	return Decision{Reason: reason}
}

func denyBase(id Identity, c *checked) string {
	return fmt.Sprintf("no rule grants %s on %s to %s", opText(c), keyText(c), id)
}

func opText(c *checked) string {
	if c.opOK {
		return string(c.req.Op)
	}
	return "unknown operation " + quote(string(c.req.Op))
}

func keyText(c *checked) string {
	if c.keyOK {
		return c.req.Key
	}
	return "invalid key name " + quote(c.req.Key)
}

// Explain is Decide with a verdict for every rule, in config order: the
// answer to "why was this denied?" (keyward policy explain). A rule that
// would allow what res withholds is not Matched, and says so.
func (p *Policy) Explain(id Identity, req Request, res Reserved) (Decision, []RuleVerdict) {
	d := p.Decide(id, req, res)
	if p == nil {
		return d, nil
	}
	if !req.Op.CarriesContext() {
		req.Context = nil
	}
	id = decisionIdentity(id, req.Op)
	c := check(req)
	out := make([]RuleVerdict, len(p.rules))
	for i := range p.rules {
		r := &p.rules[i]
		m := r.misses(id, &c)
		switch {
		case m != 0:
			out[i] = RuleVerdict{Rule: r.name, Why: r.why(m, id, &c)}
		case res.reserves(req):
			out[i] = RuleVerdict{Rule: r.name, Why: "would allow, but " + reservedReason}
		default:
			out[i] = RuleVerdict{Rule: r.name, Matched: true, Why: "allows"}
		}
	}
	return d, out
}

// why renders every condition of the rule that the request fails. It never
// includes a request context value.
func (r *rule) why(m miss, id Identity, c *checked) string {
	var parts []string
	if m&missIdentity != 0 {
		parts = append(parts, "identity does not match ("+r.identityMiss(id)+")")
	}
	if m&missOperation != 0 {
		if c.opOK {
			parts = append(parts, "operation "+string(c.req.Op)+" not granted")
		} else {
			parts = append(parts, "operation "+quote(string(c.req.Op))+" is unknown")
		}
	}
	if m&missKey != 0 {
		if c.keyOK {
			parts = append(parts, "key "+c.req.Key+" not matched by "+r.globList())
		} else {
			parts = append(parts, "key "+quote(c.req.Key)+" is not a valid key name")
		}
	}
	if m&missContext != 0 {
		parts = append(parts, r.contextMiss(c.req.Context))
	}
	return strings.Join(parts, "; ")
}

func (r *rule) identityMiss(id Identity) string {
	var parts []string
	if id.UID == noID && id.GID == noID && len(r.units) == 0 { // decisionIdentity's, for credential
		return "credential is granted by units alone: systemd asks as root for every unit"
	}
	if len(r.users) > 0 {
		parts = append(parts, fmt.Sprintf("uid %d not in users %s", id.UID, subjectList(r.users)))
	}
	if len(r.groups) > 0 {
		parts = append(parts, fmt.Sprintf("gid %d and groups %s not in groups %s", id.GID, formatGroups(id.Groups), subjectList(r.groups)))
	}
	if len(r.units) > 0 {
		us := make([]string, len(r.units))
		for i, u := range r.units {
			us[i] = plain(u)
		}
		parts = append(parts, fmt.Sprintf("unit %s not in units [%s]", quote(id.Unit), strings.Join(us, " ")))
	}
	return strings.Join(parts, ", ")
}

func subjectList(ss []subject) string {
	var b strings.Builder
	b.WriteByte('[')
	for i, s := range ss {
		if i > 0 {
			b.WriteByte(' ')
		}
		if s.name != "" {
			b.WriteString(plain(s.name))
			b.WriteByte('=')
		}
		b.WriteString(strconv.FormatUint(uint64(s.id), 10))
	}
	b.WriteByte(']')
	return b.String()
}

func (r *rule) globList() string {
	srcs := make([]string, len(r.globs))
	for i, g := range r.globs {
		srcs[i] = g.src
	}
	return "[" + strings.Join(srcs, " ") + "]"
}

// contextMiss names the required pairs (config values, not secrets) and which
// are missing or different in the request, without the request's values.
func (r *rule) contextMiss(c map[string]string) string {
	var want, bad []string
	for _, p := range r.context {
		want = append(want, plain(p.k)+"="+plain(p.v))
		if v, ok := c[p.k]; !ok {
			bad = append(bad, plain(p.k)+" missing")
		} else if v != p.v {
			bad = append(bad, plain(p.k)+" differs")
		}
	}
	return "context " + strings.Join(want, " ") + " required (" + strings.Join(bad, ", ") + ")"
}
