package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keyward/keyward/audit"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/policy"
)

// The rules a grant is held to whatever was recorded when it was made: the
// current table (a reload that narrows a policy narrows its grants), the
// host that asked for it, and the bounds of the store one requester may
// take.

// Store quotas: one requester (a uid of one host) holds at most
// maxRecordsPerRequester records, whatever their state (pending, active,
// ended and kept for grantRetention), and new requests stop while the
// store holds storeRequestLimit records: the rest is headroom for the
// requests of daemons on other hosts racing this one, whose counts this
// daemon cannot serialise.
//
// Withdrawn requests take no record, but each is remembered in the
// high-water file until its request expiry plus the longest max_duration
// (and grantPruneSkew): one requester has at most maxWithdrawnPerRequester
// of those remembered, whoever withdrew them, so it cannot grow the file
// without bound by asking and revoking.
const (
	maxRecordsPerRequester   = 32
	maxWithdrawnPerRequester = 32
	grantStoreHeadroom       = 64
	storeRequestLimit        = keys.MaxGrants - grantStoreHeadroom
)

// machineIDPath names the host of a grant (its requesting daemon's).
const machineIDPath = "/etc/machine-id"

// errMachineID: the host has no usable machine id, so a grant could not be
// tied to it.
var errMachineID = errors.New("no usable machine id")

// readMachineID reads a machine id (32 lowercase hex digits and a newline)
// from path: a regular file of root's, not a symlink, that only root may
// write.
func readMachineID(path string) (string, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return "", fmt.Errorf("%s: %w: %w", path, err, errMachineID)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return "", fmt.Errorf("%s: %w: %w", path, err, errMachineID)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Uid != 0 || st.Mode&0o022 != 0 {
		return "", fmt.Errorf("%s: not a regular file of root's that only root may write: %w", path, errMachineID)
	}
	buf := make([]byte, 34)
	n, _ := f.Read(buf)
	id := strings.TrimSuffix(string(buf[:n]), "\n")
	if len(id) != 32 || strings.Trim(id, "0123456789abcdef") != "" {
		return "", fmt.Errorf("%s: not 32 lowercase hex digits: %w", path, errMachineID)
	}
	return id, nil
}

// errNameLookup: the user database did not answer for a caller's uid
// (sssd or LDAP down, for one). A request or an approval then waits:
// without the name, the check against the same person under another uid
// on another host would silently not apply.
var errNameLookup = errors.New("user name lookup failed")

// userName is uid's user name on this host, "" when the user database
// has no such uid (no name links it to another host's uids then).
func userName(uid uint32) (string, error) {
	u, err := (*lookupUID.Load())(strconv.FormatUint(uint64(uid), 10))
	var unknown user.UnknownUserIdError
	switch {
	case errors.As(err, &unknown):
		return "", nil
	case err != nil:
		return "", &detailError{detail: fmt.Sprintf("break-glass: the user name of uid %d could not be looked up (%v); try again", uid, err),
			err: fmt.Errorf("%w: %w", errNameLookup, keys.ErrUnavailable)}
	}
	return u.Username, nil
}

// lookupUID holds user.LookupId; tests replace it while a daemon runs.
var lookupUID atomic.Pointer[func(string) (*user.User, error)]

func init() {
	f := user.LookupId
	lookupUID.Store(&f)
}

// honours reports whether g, found covering a call by id, may allow it
// under bp, the current table of its policy, at now: on the host that
// asked for it, to a requester the table still names, before the end the
// table's current max_duration allows from its activation, and before the
// latest end the table's bounds allow from its request (an approving
// daemon's clock ahead of this one's cannot stretch a grant past it), and
// with as many approvals that still count under bp (approvalCounts) as the
// grant and bp need: an approving daemon on another host that still runs
// an older, wider table cannot activate past a narrowing here.
func (b *breakglass) honours(bp *policy.BreakglassPolicy, g *grant, id policy.Identity, now time.Time) bool {
	return g.Host == b.host && bp.MayRequest(id) &&
		now.Before(g.Activated.Add(bp.MaxDuration())) &&
		now.Before(g.Requested.Add(bp.RequestTTL()+bp.MaxDuration())) &&
		b.countedApprovals(bp, g) >= max(g.Needed, bp.Approvals())
}

// countedApprovals is how many of g's approvals count under bp.
func (b *breakglass) countedApprovals(bp *policy.BreakglassPolicy, g *grant) int {
	n := 0
	for _, a := range g.Approvals {
		if b.approvalCounts(bp, g, a) {
			n++
		}
	}
	return n
}

// checkQuota refuses a new request by uid when it would pass the quotas:
// its pending requests, its records, or the store's room for requests.
func (b *breakglass) checkQuota(view []*grant, uid uint32, now time.Time) error {
	open, mine := 0, 0
	for _, g := range view {
		if g.Requester == uid && g.Host == b.host {
			mine++
			if g.state(now) == grantPending {
				open++
			}
		}
	}
	switch {
	case len(view) >= storeRequestLimit:
		return quota("the break-glass grant store holds %d records; new requests stop at %d: ended grants are removed 30 days after they end", len(view), storeRequestLimit)
	case open >= maxPendingPerRequester:
		return quota("you have %d break-glass requests waiting for approval, at most %d: revoke one", open, maxPendingPerRequester)
	case mine >= maxRecordsPerRequester:
		return quota("you have %d break-glass records (waiting, active, or ended less than 30 days ago), at most %d: ended ones are removed 30 days after they end", mine, maxRecordsPerRequester)
	}
	n, kept := b.grants.seen.withdrawnBy(uid, b.host)
	if n >= maxWithdrawnPerRequester {
		return quota("you have withdrawn %d break-glass requests still remembered (until a day and an hour after their request_ttl), at most %d: ask again once one is forgotten", n, maxWithdrawnPerRequester)
	}
	if kept >= maxSeenEntries {
		return quota("the break-glass high-water file remembers %d grant ids, at most %d before it could outgrow its bound: ask again once some are forgotten", kept, maxSeenEntries)
	}
	return nil
}

func quota(format string, a ...any) error {
	return &detailError{detail: sprintf(format, a...), err: ErrQuota}
}

// name is the caller's user name on this host, "" when it has none.
func (c bgCaller) name() (string, error) { return userName(c.id.UID) }

// foreign reports whether g was asked for on another host.
func (b *breakglass) foreign(g *grant) bool { return g.Host != b.host }

// decidesHere refuses a decision on g under bp when g was asked for on
// another host and bp is not the table it was asked for under: a host's
// table never decides on another host's grants unless both hosts' tables
// are the same.
func (b *breakglass) decidesHere(bp *policy.BreakglassPolicy, g *grant, uid uint32) error {
	if b.foreign(g) && bp.Digest() != g.PolicyDigest {
		return bgDenied(fmt.Sprintf("uid %d: grant %s was asked for on host %s under another break-glass table %s", uid, g.id, g.Host, g.Policy),
			"this grant was asked for on another host whose break-glass table differs from this host's: decide on it there")
	}
	return nil
}

// approvalCounts reports whether a, an approval of g, still counts under
// bp, the table deciding here: an approval made on this host if its
// approver still approves under bp (root only when bp names uid 0); one
// made on another host only while bp is the table g was asked for under.
func (b *breakglass) approvalCounts(bp *policy.BreakglassPolicy, g *grant, a approval) bool {
	if a.Host != b.host {
		return bp.Digest() == g.PolicyDigest
	}
	return bp.MayApprove(policy.Identity{UID: a.UID, GID: a.GID, Groups: a.Groups}) && (a.UID != 0 || bp.NamesApproverUID(0))
}

// revokesForeign reports whether c may revoke g, asked for on another
// host, whatever table it was asked under: as an approver of g's policy
// or an admin of its key under this host's current table. A revocation
// only narrows access, so a table edited on one host never leaves the
// others unable to end that table's grants.
func (s *Service) revokesForeign(c bgCaller, g *grant) bool {
	return c.b.foreign(g) && s.approverOrAdmin(c, g)
}

// sameApprover reports whether a is the approver (uid on host, or user
// name anywhere) of b.
func sameApprover(a, b approval) bool {
	return a.UID == b.UID && a.Host == b.Host || a.Name != "" && a.Name == b.Name
}

// activeUntil is when a grant activated at now under bp ends: its duration,
// cut to the table's current max_duration.
func activeUntil(bp *policy.BreakglassPolicy, g *grant, now time.Time) time.Time {
	return now.Add(min(time.Duration(g.DurationS)*time.Second, bp.MaxDuration()))
}

// removeGrant removes g's record, recorded as STARTED before and with its
// result after, by peer (the caller's, or keywardd's when it prunes).
func (b *breakglass) removeGrant(ctx context.Context, g *grant, trail auditLog, peer audit.Peer, why string) {
	rid := newRequestID()
	rec := audit.Record{Peer: peer, Op: auditBGRemove, Key: g.Key, Result: ResultStarted, Grant: g.id, RequestID: rid, Reason: why}
	if trail != nil {
		if err := trail.Append(context.WithoutCancel(ctx), rec); err != nil {
			b.log.Error("audit log write failed: not removing a break-glass record", "grant", g.id, "err", err.Error())
			return
		}
	}
	err := b.grants.remove(ctx, g)
	rec.Result = "OK"
	if err != nil {
		rec.Result = reasonOf(err).String()
		b.log.Warn("break-glass: could not remove a grant record", "grant", g.id, "err", err.Error())
	}
	if trail != nil {
		if err := trail.Append(context.WithoutCancel(ctx), rec); err != nil {
			b.log.Error("audit log write failed after removing a break-glass record", "grant", g.id, "err", err.Error())
		}
	}
}

// withdrawn reports whether a change ended g before it was ever active (a
// request revoked or denied): its record goes at once, so that withdrawn
// requests take no room in the store.
func withdrawn(g *grant) bool {
	return (g.State == grantRevoked || g.State == grantDenied) && g.Activated.IsZero()
}

// grantExpiryIntent records, durably, that keywardd is about to store g's
// expiry; an error leaves it unstored (expiry by the clock applies anyway).
func grantExpiryIntent(ctx context.Context, trail auditLog, g *grant, rid, what string) error {
	if trail == nil {
		return nil
	}
	return trail.Append(context.WithoutCancel(ctx), audit.Record{Peer: breakglassPeer(), Op: auditBGExpire, Key: g.Key,
		Result: ResultStarted, Grant: g.id, RequestID: rid, Reason: what})
}

// containsApprover reports whether g has an approval by a's approver.
func containsApprover(g *grant, a approval) bool {
	return slices.ContainsFunc(g.Approvals, func(x approval) bool { return sameApprover(x, a) })
}
