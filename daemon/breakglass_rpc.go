package daemon

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/audit"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/policy"
)

// The break-glass RPCs' entries in the method table.
var (
	mBGRequest = methodOf("BreakglassRequest")
	mBGApprove = methodOf("BreakglassApprove")
	mBGDeny    = methodOf("BreakglassDeny")
	mBGRevoke  = methodOf("BreakglassRevoke")
	mBGList    = methodOf("BreakglassList")
)

// bgCaller is what every break-glass call starts from.
type bgCaller struct {
	b   *breakglass
	pol *policy.Policy
	id  policy.Identity
	// approverName: for an approval, the caller's user name on this host
	// (name), looked up once before the store's compare-and-swap loop.
	approverName string
}

func (s *Service) bgCaller(ctx context.Context) (bgCaller, error) {
	id, ok := identityFrom(ctx)
	if !ok {
		return bgCaller{}, ErrDenied
	}
	pol := s.pol.Load()
	if s.bg == nil || !pol.HasBreakglass() {
		return bgCaller{}, &detailError{detail: "break-glass: keywardd's config has no [[breakglass]] policy", err: keys.ErrUnsupported}
	}
	return bgCaller{b: s.bg, pol: pol, id: id}, nil
}

// bgDenied is a refusal with a reason for the audit trail and a detail the
// caller may read (what they are not, never what others are).
func bgDenied(reason, detail string) error {
	return &deniedError{reason: reason, err: &detailError{detail: detail, err: ErrDenied}}
}

// bgIntent records a change before it is stored, durably: a grant never
// changes without its record, even if keywardd dies between the two.
func (s *Service) bgIntent(ctx context.Context, op string, g *grant) error {
	cl, ok := ctx.Value(callKey{}).(*call)
	if !ok || s.audit == nil {
		return nil
	}
	err := s.audit.Append(context.WithoutCancel(ctx), audit.Record{Peer: cl.peer, Op: op, Key: g.Key, Result: ResultStarted,
		Grant: g.id, Duration: time.Since(cl.start), RequestID: cl.id})
	if err != nil {
		s.log.Error("audit log write failed: refusing a break-glass change before it is stored", "op", op, "grant", g.id, "err", err.Error())
		return fmt.Errorf("%s %s: intent record: %v: %w", op, g.id, err, ErrAuditUnavailable)
	}
	return nil
}

// BreakglassRequest asks for a grant; it starts pending.
func (s *Service) BreakglassRequest(ctx context.Context, req *pb.BreakglassRequestRequest) (*pb.BreakglassGrant, error) {
	start := time.Now()
	g, err := s.bgRequest(ctx, req)
	rec := opRecord{op: mBGRequest.audit, key: clipKey(req.GetKey()), ctx: req.GetContext()}
	if g != nil {
		rec.grant, rec.reason = g.id, fmt.Sprintf("policy %s, %s for %s: %s", g.Policy, g.Op, time.Duration(g.DurationS)*time.Second, g.Reason)
	}
	auditOpGrant(ctx, rec, start, err)
	if err != nil {
		return nil, s.fail(ctx, mBGRequest.log, err)
	}
	s.bg.metrics.event("requested")
	s.log.Warn("break-glass requested", messageIDKey, msgBreakglassRequested, "grant", g.id, "policy", g.Policy, "op", g.Op, "key", g.Key,
		"requester_uid", g.Requester, "duration", time.Duration(g.DurationS)*time.Second, "reason", g.Reason, "approvals_needed", g.Needed)
	return s.grantPB(g), nil
}

func (s *Service) bgRequest(ctx context.Context, req *pb.BreakglassRequestRequest) (*grant, error) {
	c, err := s.bgCaller(ctx)
	if err != nil {
		return nil, err
	}
	// An unknown name and a table the caller may not ask under get one
	// answer: a caller who is no requester learns no policy's name.
	bp, ok := c.pol.BreakglassNamed(req.GetPolicy())
	if !ok || !bp.MayRequest(c.id) {
		return nil, bgDenied(fmt.Sprintf("uid %d is not a requester of a break-glass policy named %s (known: %v)", c.id.UID, clipQuote(req.GetPolicy()), ok),
			"you are not a requester of a break-glass policy of that name")
	}
	op, d, err := s.checkGrantRequest(bp, req)
	if err != nil {
		return nil, err
	}
	name, err := c.name()
	if err != nil {
		return nil, err
	}
	c.b.requests.Lock()
	defer c.b.requests.Unlock()
	view, err := c.b.grants.current(ctx, true)
	if err != nil {
		return nil, err
	}
	now := c.b.now()
	if err := c.b.checkQuota(view, c.id.UID, now); err != nil {
		return nil, err
	}
	g := &grant{id: newGrantID(), V: 1, Policy: bp.Name(), State: grantPending, Requester: c.id.UID, Key: req.GetKey(), Op: string(op),
		Context: req.GetContext(), DurationS: int64(d / time.Second), Reason: req.GetReason(), Requested: now,
		RequestExpires: now.Add(bp.RequestTTL()), Needed: bp.Approvals(),
		Host: c.b.host, RequesterName: name, PolicyDigest: bp.Digest()}
	if err := checkGrantRecord(g); err != nil {
		return nil, err
	}
	if err := s.bgIntent(ctx, mBGRequest.audit, g); err != nil {
		return nil, err
	}
	if err := c.b.grants.put(ctx, g); err != nil {
		return nil, err
	}
	return g, nil
}

// checkGrantRequest checks what a request asks for against its policy and
// the limits: the operation, key, context, duration and reason.
func (s *Service) checkGrantRequest(bp *policy.BreakglassPolicy, req *pb.BreakglassRequestRequest) (policy.Operation, time.Duration, error) {
	if err := s.checkKey(req.GetKey()); err != nil {
		return "", 0, err
	}
	op, err := policy.ParseOperation(req.GetOperation())
	if err != nil || !policy.IsBreakglassOperation(op) {
		return "", 0, invalid("operation %s: break-glass grants one of %s", clipQuote(req.GetOperation()), strings.Join(bgOpNames(), ", "))
	}
	if !bp.Covers(op, req.GetKey()) {
		return "", 0, invalid("break-glass policy %s does not grant %s on %s (it grants %s on %s)", bp.Name(), op, req.GetKey(),
			strings.Join(opStrings(bp.Operations()), ","), strings.Join(bp.Keys(), ","))
	}
	if err := checkContext(req.GetContext()); err != nil {
		return "", 0, err
	}
	if err := checkGrantContext(req.GetContext()); err != nil {
		return "", 0, err
	}
	if len(req.GetContext()) > 0 && !op.CarriesContext() {
		return "", 0, invalid("context: %s requests carry none, so a grant for it cannot fix one", op)
	}
	secs := req.GetDurationSeconds()
	d := time.Duration(secs) * time.Second
	if secs == 0 || secs > uint64(policy.MaxGrantDuration/time.Second) || d < policy.MinGrantDuration || d > bp.MaxDuration() {
		return "", 0, invalid("duration of %d seconds: want %s..%s (the policy's max_duration)", secs, policy.MinGrantDuration, bp.MaxDuration())
	}
	if r := req.GetReason(); r == "" || len(r) > maxReason || !printable(r) {
		return "", 0, invalid("reason: 1 to %d bytes of printable UTF-8 (an incident id and a few words)", maxReason)
	}
	return op, d, nil
}

func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

func bgOpNames() []string { return opStrings(policy.BreakglassOperations) }

func opStrings(ops []policy.Operation) []string {
	out := make([]string, len(ops))
	for i, o := range ops {
		out[i] = string(o)
	}
	return out
}

// clipQuote quotes a caller's string for a message, cut to 64 bytes.
func clipQuote(s string) string {
	if len(s) > 64 {
		return fmt.Sprintf("%q...", s[:64])
	}
	return fmt.Sprintf("%q", s)
}

// clipKey bounds a caller's key name in a record.
func clipKey(k string) string {
	if len(k) > keys.MaxNameLen {
		return k[:keys.MaxNameLen] + "..."
	}
	return k
}

// BreakglassApprove adds the caller's approval; with enough distinct
// approvers the grant is active from now for its duration.
func (s *Service) BreakglassApprove(ctx context.Context, req *pb.BreakglassGrantRequest) (*pb.BreakglassGrant, error) {
	return s.bgChange(ctx, mBGApprove, req.GetId(), (*Service).approve)
}

// BreakglassDeny ends a pending request.
func (s *Service) BreakglassDeny(ctx context.Context, req *pb.BreakglassGrantRequest) (*pb.BreakglassGrant, error) {
	return s.bgChange(ctx, mBGDeny, req.GetId(), (*Service).deny)
}

// BreakglassRevoke ends a pending or active grant.
func (s *Service) BreakglassRevoke(ctx context.Context, req *pb.BreakglassGrantRequest) (*pb.BreakglassGrant, error) {
	return s.bgChange(ctx, mBGRevoke, req.GetId(), (*Service).revoke)
}

// transition decides one change of grant g by caller c at now.
type transition func(s *Service, c bgCaller, g *grant, now time.Time) error

// bgChange runs a transition through the grant store's compare-and-swap,
// records it, and logs and counts the new state.
func (s *Service) bgChange(ctx context.Context, m *method, id string, t transition) (*pb.BreakglassGrant, error) {
	start := time.Now()
	var g *grant
	c, err := s.bgCaller(ctx)
	if err == nil {
		err = validGrantIDForm(id)
	}
	if err == nil && m == mBGApprove {
		c.approverName, err = c.name()
	}
	if err == nil {
		err = s.refuseFromView(c, id, m == mBGRevoke)
	}
	if err == nil {
		g, err = c.b.grants.change(ctx, id, func(g *grant, now time.Time) error {
			if err := t(s, c, g, now); err != nil {
				return err
			}
			return s.bgIntent(ctx, m.audit, g)
		})
		if errors.Is(err, errNoGrant) {
			err = bgDenied("no grant "+id, "no such grant, or not one you are party to")
		}
	}
	if c.b != nil {
		s.countNotParty(c, g, err)
	}
	rec := opRecord{op: m.audit}
	switch {
	case g != nil && err == nil:
		rec.key, rec.grant, rec.reason = g.Key, g.id, "policy "+g.Policy+", now "+g.State
	case g != nil: // refused: g is the decision's copy, nothing of it was stored
		rec.key, rec.grant, rec.reason = g.Key, g.id, "policy "+g.Policy
	case validGrantIDForm(id) == nil:
		rec.grant = id // a refusal names the id asked for, known or not
	}
	auditOpGrant(ctx, rec, start, err)
	if err != nil {
		return nil, s.fail(ctx, m.log, err)
	}
	s.logChange(g, c.id)
	if withdrawn(g) {
		peer := breakglassPeer()
		if cl, ok := ctx.Value(callKey{}).(*call); ok {
			peer = cl.peer
		}
		c.b.removeGrant(ctx, g, s.audit, peer, "withdrawn before it was active (policy "+g.Policy+", "+g.State+")")
	}
	if !s.partyTo(c, g) { // a revoker from another host: the outcome, nothing of the grant
		return &pb.BreakglassGrant{Id: g.id, State: g.State}, nil
	}
	return s.grantPB(g), nil
}

// logChange logs and counts a grant's new state after a change by id.
func (s *Service) logChange(g *grant, id policy.Identity) {
	attrs := []any{"grant", g.id, "policy", g.Policy, "op", g.Op, "key", g.Key, "requester_uid", g.Requester, "by_uid", id.UID}
	switch g.State {
	case grantActive:
		s.bg.metrics.event(grantActive)
		s.log.Warn("break-glass grant active", append(attrs, messageIDKey, msgBreakglassActive, "until", g.Expires.UTC().Format(time.RFC3339))...)
	case grantPending:
		s.bg.metrics.event("approved")
		s.log.Warn("break-glass request approved; more approvals needed", append(attrs, messageIDKey, msgBreakglassApproved,
			"approvals", len(g.Approvals), "approvals_needed", g.Needed)...)
	case grantDenied:
		s.bg.metrics.event(grantDenied)
		s.log.Warn("break-glass request denied", append(attrs, messageIDKey, msgBreakglassDenied)...)
	case grantRevoked:
		s.bg.metrics.event(grantRevoked)
		s.log.Warn("break-glass grant revoked", append(attrs, messageIDKey, msgBreakglassRevoked)...)
	}
}

// approve: an approver of the grant's policy, not its requester, not
// twice, on a pending request.
func (s *Service) approve(c bgCaller, g *grant, now time.Time) error {
	a := approval{UID: c.id.UID, GID: c.id.GID, Groups: c.id.Groups, Name: c.approverName, Host: c.b.host, At: now}
	// The requester's uid on any host (it may be them there too) and
	// their user name anywhere never approve.
	if g.Requester == c.id.UID || a.Name != "" && a.Name == g.RequesterName {
		return bgDenied(fmt.Sprintf("uid %d (user %q) asked to approve its own request", c.id.UID, a.Name),
			"you requested this grant: a requester never approves their own request")
	}
	bp, ok := c.pol.BreakglassNamed(g.Policy)
	if !ok || !bp.MayApprove(c.id) {
		if err := s.mayRead(c, g); err != nil {
			return err
		}
		return bgDenied(fmt.Sprintf("uid %d is not an approver of break-glass policy %s", c.id.UID, g.Policy),
			"you are not an approver of this grant's break-glass policy")
	}
	if err := c.b.decidesHere(bp, g, c.id.UID); err != nil {
		return err
	}
	if c.id.UID == 0 && !bp.NamesApproverUID(0) {
		return bgDenied(fmt.Sprintf("uid 0 approves for break-glass policy %s only through a group", g.Policy),
			"root approves only when the policy's approvers name uid 0 itself (users or uids), never through a group")
	}
	if st := g.state(now); st != grantPending {
		return invalid("the grant is %s, not pending", st)
	}
	if containsApprover(g, a) {
		return invalid("you have approved this grant already; it needs %d approvals by different approvers", g.Needed)
	}
	g.Approvals = append(g.Approvals, a)
	g.Needed = max(g.Needed, bp.Approvals())
	if c.b.countedApprovals(bp, g) >= g.Needed {
		g.State, g.Activated, g.Expires = grantActive, now, activeUntil(bp, g, now)
	}
	return nil
}

// deny: an approver of the grant's policy, on a pending request.
func (s *Service) deny(c bgCaller, g *grant, now time.Time) error {
	bp, ok := c.pol.BreakglassNamed(g.Policy)
	if !ok || !bp.MayApprove(c.id) {
		if err := s.mayRead(c, g); err != nil {
			return err
		}
		return bgDenied(fmt.Sprintf("uid %d is not an approver of break-glass policy %s", c.id.UID, g.Policy),
			"you are not an approver of this grant's break-glass policy (its requester withdraws a request with revoke)")
	}
	if err := c.b.decidesHere(bp, g, c.id.UID); err != nil {
		return err
	}
	if st := g.state(now); st != grantPending {
		return invalid("the grant is %s, not pending", st)
	}
	g.State, g.EndedBy, g.Ended = grantDenied, c.id.UID, now
	return nil
}

// revoke: the requester, an approver of the grant's policy or an admin of
// its key (on another host, under this host's table whatever the grant's:
// revokesForeign), on a pending or active grant.
func (s *Service) revoke(c bgCaller, g *grant, now time.Time) error {
	party := s.partyTo(c, g)
	if !party && !s.revokesForeign(c, g) {
		return s.mayRead(c, g)
	}
	if st := g.state(now); st != grantPending && st != grantActive {
		if !party { // a revoker from another host learns nothing of an ended grant
			return s.mayRead(c, g)
		}
		return invalid("the grant is %s already", st)
	}
	g.State, g.EndedBy, g.Ended = grantRevoked, c.id.UID, now
	return nil
}

// mayRead refuses a caller who is no party to g: not its requester, not an
// approver of its policy, not an admin of its key.
func (s *Service) mayRead(c bgCaller, g *grant) error {
	if s.partyTo(c, g) {
		return nil
	}
	return bgDenied(fmt.Sprintf("uid %d is no party to grant %s", c.id.UID, g.id), "no such grant, or not one you are party to")
}

// partyTo: the requester, an approver of the grant's policy, or an admin
// of its key (a caller the rules allow key.disable on it: who can stop
// every use of the key anyway).
//
// On another host than the grant's, uids name other people: its requester
// is nobody there, and its approvers and admins are parties only under the
// table it was asked for under (decidesHere).
func (s *Service) partyTo(c bgCaller, g *grant) bool {
	if c.b.foreign(g) {
		if bp, ok := c.pol.BreakglassNamed(g.Policy); !ok || bp.Digest() != g.PolicyDigest {
			return false
		}
	} else if g.Requester == c.id.UID {
		return true
	}
	return s.approverOrAdmin(c, g)
}

// approverOrAdmin reports whether c is, under this host's current table,
// an approver of g's policy or an admin of its key (key.disable on it).
func (s *Service) approverOrAdmin(c bgCaller, g *grant) bool {
	if bp, ok := c.pol.BreakglassNamed(g.Policy); ok && bp.MayApprove(c.id) {
		return true
	}
	return c.pol.Decide(c.id, policy.Request{Op: policy.OpKeyDisable, Key: g.Key}, s.reserved()).Allowed
}

// BreakglassList lists the grants the caller is party to, newest first,
// in their state at the daemon's clock (the sweeper records expiries),
// from a fresh read for the people a break-glass policy names.
func (s *Service) BreakglassList(ctx context.Context, _ *pb.BreakglassListRequest) (*pb.BreakglassListResponse, error) {
	start := time.Now()
	out := &pb.BreakglassListResponse{}
	c, err := s.bgCaller(ctx)
	if err == nil {
		var view []*grant
		if view, err = c.b.grants.current(ctx, namedByBreakglass(c)); err == nil {
			for _, g := range view {
				if s.partyTo(c, g) {
					out.Grants = append(out.Grants, s.grantPB(g))
				}
			}
			slices.SortFunc(out.Grants, func(a, b *pb.BreakglassGrant) int { return b.Requested.AsTime().Compare(a.Requested.AsTime()) })
		}
	}
	auditOpGrant(ctx, opRecord{op: mBGList.audit}, start, err)
	if err != nil {
		return nil, s.fail(ctx, mBGList.log, err)
	}
	return out, nil
}

// grantPB is g for the wire, in its state at the service's clock.
func (s *Service) grantPB(g *grant) *pb.BreakglassGrant {
	ts := func(t time.Time) *timestamppb.Timestamp {
		if t.IsZero() {
			return nil
		}
		return timestamppb.New(t)
	}
	out := &pb.BreakglassGrant{Id: g.id, Policy: g.Policy, State: g.state(s.bg.now()), RequesterUid: g.Requester, Key: g.Key,
		Operation: g.Op, Context: g.Context, DurationSeconds: uint64(g.DurationS), Reason: g.Reason,
		Requested: ts(g.Requested), RequestExpires: ts(g.RequestExpires), Activated: ts(g.Activated), Expires: ts(g.Expires),
		ApprovalsNeeded: uint32(g.Needed), EndedByUid: g.EndedBy, Ended: ts(g.Ended),
		RequesterName: g.RequesterName, Host: g.Host, OtherHost: s.bg.foreign(g)}
	if out.State == grantExpired && out.Ended == nil {
		out.Ended = ts(g.endedAt())
	}
	for _, a := range g.Approvals {
		out.ApproverUids = append(out.ApproverUids, a.UID)
	}
	return out
}
