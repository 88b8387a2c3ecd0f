package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	keywardv1 "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/client"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/policy"
)

const breakglassExample = `  id=$(keyward breakglass request --policy db-emergency --key payments/db-password --op unwrap --for 30m --reason "INC-123: restore from backup")
  keyward breakglass approve "$id"     # as an approver, never the requester
  keyward breakglass list
  keyward breakglass revoke "$id"`

func (a *app) breakglassCmd() *cobra.Command {
	return groupCmd("breakglass", "ask for, approve and end time-boxed emergency access to a key (break-glass)", breakglassExample,
		a.bgRequestCmd(), a.bgIDCmd("approve", "approve a pending request (an approver of its policy; never your own)",
			func(ctx context.Context, kc *client.Client, id string) (*keywardv1.BreakglassGrant, error) {
				return kc.BreakglassApprove(ctx, id)
			}),
		a.bgIDCmd("deny", "deny a pending request (an approver of its policy)",
			func(ctx context.Context, kc *client.Client, id string) (*keywardv1.BreakglassGrant, error) {
				return kc.BreakglassDeny(ctx, id)
			}),
		a.bgIDCmd("revoke", "end a pending or active grant (its requester, an approver, or an admin of its key)",
			func(ctx context.Context, kc *client.Client, id string) (*keywardv1.BreakglassGrant, error) {
				return kc.BreakglassRevoke(ctx, id)
			}),
		a.bgListCmd())
}

const bgRequestLong = `Asks keywardd for time-boxed access to one operation on one key under a
[[breakglass]] policy of its config, and prints the request's id on stdout.
The request waits for the policy's approvers (keyward breakglass approve ID,
by other people: a requester never approves their own request) for the
policy's request_ttl, then expires unapproved. Once approved, the grant is
active for --for: your calls of that operation on that key (with the
--context pairs, when given) are allowed even where the rules deny them, and
each is in the audit log with the grant's id. Everything is logged loudly.`

func (a *app) bgRequestCmd() *cobra.Command {
	var pol, key, op, reason string
	var dur time.Duration
	var ctxFlag contextFlag
	c := &cobra.Command{
		Use:     "request --policy NAME --key NAME --op OP [--context k=v]... --for DURATION --reason TEXT",
		Short:   "ask for time-boxed access under a break-glass policy; prints the request's id",
		Long:    bgRequestLong,
		Example: `  keyward breakglass request --policy db-emergency --key payments/db-password --op unwrap --context app=billing --for 30m --reason "INC-123"`,
		Args:    noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cmd := cmdName(c)
			r, err := bgRequestFlags(c, pol, key, op, reason, dur)
			if err != nil {
				return err
			}
			if r.Context, err = ctxFlag.pairs(cmd); err != nil {
				return err
			}
			return a.withClient(c, func(ctx context.Context, kc *client.Client) error {
				g, err := kc.BreakglassRequest(ctx, r)
				if err != nil {
					return err
				}
				fmt.Fprintln(a.stdout, g.GetId())
				fmt.Fprintf(a.stderr, "keyward: %s: pending %d approval(s) until %s: an approver runs \"keyward breakglass approve %s\"\n",
					cmd, g.GetApprovalsNeeded(), g.GetRequestExpires().AsTime().Local().Format(time.RFC3339), g.GetId())
				return nil
			})
		},
	}
	f := c.Flags()
	f.StringVar(&pol, "policy", "", "the [[breakglass]] policy's `NAME`")
	a.keyFlag(c, &key, "key")
	f.StringVar(&op, "op", "", "the operation `OP`: "+strings.Join(bgOps(), ", "))
	f.Var(&ctxFlag, "context", "a context pair the grant requires of every call; repeat for more")
	f.DurationVar(&dur, "for", 0, "how long the grant lasts once approved, `DURATION` (30m; at most the policy's max_duration)")
	f.StringVar(&reason, "reason", "", "why, for the approvers and the audit log: an incident id and a few words (`TEXT`, at most 256 bytes)")
	return c
}

// bgRequestFlags checks request's flags before anything is sent.
func bgRequestFlags(c *cobra.Command, pol, key, op, reason string, dur time.Duration) (client.BreakglassRequest, error) {
	cmd := cmdName(c)
	var r client.BreakglassRequest
	if pol == "" {
		return r, usagef(cmd, "--policy is required (the [[breakglass]] table's name; keyward policy report lists them)")
	}
	if err := checkKey(c, key); err != nil {
		return r, err
	}
	o, err := policy.ParseOperation(op)
	if err != nil || !policy.IsBreakglassOperation(o) {
		return r, usagef(cmd, "--op %q: want one of %s", op, strings.Join(bgOps(), ", "))
	}
	if dur < policy.MinGrantDuration || dur > policy.MaxGrantDuration || dur%time.Second != 0 {
		return r, usagef(cmd, "--for %v: want whole seconds, %v..%v (and at most the policy's max_duration)", dur, policy.MinGrantDuration, policy.MaxGrantDuration)
	}
	if reason == "" || len(reason) > 256 {
		return r, usagef(cmd, "--reason is required: 1 to 256 bytes (an incident id and a few words)")
	}
	return client.BreakglassRequest{Policy: pol, Key: key, Operation: op, Duration: dur, Reason: reason}, nil
}

func bgOps() []string {
	out := make([]string, len(policy.BreakglassOperations))
	for i, o := range policy.BreakglassOperations {
		out[i] = string(o)
	}
	return out
}

// bgIDCmd is approve, deny or revoke: one grant id, its new state printed.
func (a *app) bgIDCmd(name, short string, call func(context.Context, *client.Client, string) (*keywardv1.BreakglassGrant, error)) *cobra.Command {
	return &cobra.Command{
		Use:     name + " ID",
		Short:   short,
		Example: "  keyward breakglass " + name + " 3f0c9d5e8a1b4c7d9e2f6a8b0c1d2e3f",
		Args: func(c *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usagef(cmdName(c), "want exactly one grant ID (keyward breakglass list shows them)")
			}
			if !keys.IsBreakglassID(args[0]) {
				return usagef(cmdName(c), "%q is not a grant id: 32 lowercase hex digits (keyward breakglass list shows them)", args[0])
			}
			return nil
		},
		RunE: func(c *cobra.Command, args []string) error {
			return a.withClient(c, func(ctx context.Context, kc *client.Client) error {
				g, err := call(ctx, kc, args[0])
				if err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "%s %s\n", g.GetId(), bgStateLine(g))
				return nil
			})
		},
	}
}

// bgStateLine says a grant's state and its next moment.
func bgStateLine(g *keywardv1.BreakglassGrant) string {
	switch g.GetState() {
	case "active":
		return "active until " + bgTime(g.GetExpires().AsTime())
	case "pending":
		return fmt.Sprintf("pending (%d of %d approvals) until %s", len(g.GetApproverUids()), g.GetApprovalsNeeded(), bgTime(g.GetRequestExpires().AsTime()))
	}
	return g.GetState()
}

func bgTime(t time.Time) string { return t.Local().Format(time.RFC3339) }

// bgJSON is a grant in list --json's output.
type bgJSON struct {
	ID             string            `json:"id"`
	Policy         string            `json:"policy"`
	State          string            `json:"state"`
	RequesterUID   uint32            `json:"requester_uid"`
	Key            string            `json:"key"`
	Operation      string            `json:"operation"`
	Context        map[string]string `json:"context"`
	Duration       string            `json:"duration"`
	Reason         string            `json:"reason"`
	Requested      time.Time         `json:"requested"`
	RequestExpires time.Time         `json:"request_expires"`
	Activated      *time.Time        `json:"activated,omitempty"`
	Expires        *time.Time        `json:"expires,omitempty"`
	ApproverUIDs   []uint32          `json:"approver_uids"`
	Approvals      uint32            `json:"approvals_needed"`
	EndedByUID     uint32            `json:"ended_by_uid,omitempty"`
	Ended          *time.Time        `json:"ended,omitempty"`
	RequesterName  string            `json:"requester_name"`
	Host           string            `json:"host"`
	OtherHost      bool              `json:"other_host"`
}

func (a *app) bgListCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "list [--json]",
		Short: "list the grants you are party to: pending, active, and ended (denied, revoked, expired)",
		Long: `Lists the break-glass grants you are party to (yours; every grant of a
policy you approve for; every grant on a key you administer), newest first:
id, state, policy, requester (uid and user name, and the host that asked
when it is another host: a grant is used only there), operation and key,
until when (a pending request's expiry, an active grant's end, or when it
ended) and the reason. Ended grants stay listed for 30 days.`,
		Example: "  keyward breakglass list\n  keyward breakglass list --json | jq -r '.[] | select(.state == \"active\") | .id'",
		Args:    noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return a.withClient(c, func(ctx context.Context, kc *client.Client) error {
				gs, err := kc.BreakglassList(ctx)
				if err != nil {
					return err
				}
				if asJSON {
					return writeJSON(a.stdout, bgListJSON(gs))
				}
				return a.printGrants(gs)
			})
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print the list as JSON")
	return c
}

func bgListJSON(gs []*keywardv1.BreakglassGrant) []bgJSON {
	opt := func(t interface{ AsTime() time.Time }, set bool) *time.Time {
		if !set {
			return nil
		}
		v := t.AsTime()
		return &v
	}
	out := make([]bgJSON, 0, len(gs))
	for _, g := range gs {
		j := bgJSON{ID: g.GetId(), Policy: g.GetPolicy(), State: g.GetState(), RequesterUID: g.GetRequesterUid(), Key: g.GetKey(),
			Operation: g.GetOperation(), Context: g.GetContext(), Duration: (time.Duration(g.GetDurationSeconds()) * time.Second).String(),
			Reason: g.GetReason(), Requested: g.GetRequested().AsTime(), RequestExpires: g.GetRequestExpires().AsTime(),
			Activated: opt(g.GetActivated(), g.GetActivated() != nil), Expires: opt(g.GetExpires(), g.GetExpires() != nil),
			ApproverUIDs: g.GetApproverUids(), Approvals: g.GetApprovalsNeeded(), EndedByUID: g.GetEndedByUid(),
			Ended: opt(g.GetEnded(), g.GetEnded() != nil), RequesterName: g.GetRequesterName(), Host: g.GetHost(), OtherHost: g.GetOtherHost()}
		if j.Context == nil {
			j.Context = map[string]string{}
		}
		if j.ApproverUIDs == nil {
			j.ApproverUIDs = []uint32{}
		}
		out = append(out, j)
	}
	return out
}

func (a *app) printGrants(gs []*keywardv1.BreakglassGrant) error {
	if len(gs) == 0 {
		_, err := fmt.Fprintln(a.stdout, "no break-glass grants you are party to")
		return err
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tPOLICY\tREQUESTER\tWHAT\tUNTIL\tREASON")
	for _, g := range gs {
		what := g.GetOperation() + " " + g.GetKey()
		if len(g.GetContext()) > 0 {
			var pairs []string
			for _, k := range slices.Sorted(maps.Keys(g.GetContext())) {
				pairs = append(pairs, cell(k)+"="+cell(g.GetContext()[k]))
			}
			what += " {" + strings.Join(pairs, ",") + "}"
		}
		until := g.GetEnded().AsTime()
		switch g.GetState() {
		case "pending":
			until = g.GetRequestExpires().AsTime()
		case "active":
			until = g.GetExpires().AsTime()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", g.GetId(), g.GetState(), g.GetPolicy(), bgRequester(g), what,
			bgTime(until), cell(g.GetReason()))
	}
	return tw.Flush()
}

// bgRequester names a grant's requester: "uid 1000 (alice)", and where
// the grant was asked for on another host, "uid 1000 (alice) on host
// 3d1219c7": the uid names someone on that host only.
func bgRequester(g *keywardv1.BreakglassGrant) string {
	s := fmt.Sprintf("uid %d", g.GetRequesterUid())
	if n := g.GetRequesterName(); n != "" {
		s += " (" + cell(n) + ")"
	}
	if g.GetOtherHost() {
		s += " on host " + cell(g.GetHost()[:min(8, len(g.GetHost()))])
	}
	return s
}
