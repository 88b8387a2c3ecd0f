package client

import (
	"context"
	"time"

	keywardv1 "github.com/keyward/keyward/api/keyward/v1"
)

// BreakglassRequest is a request for time-boxed access under a
// [[breakglass]] policy of the daemon's config.
type BreakglassRequest struct {
	Policy    string
	Key       string
	Operation string            // a data operation the policy may grant
	Context   map[string]string // when set, the grant covers only calls carrying these pairs
	Duration  time.Duration     // at most the policy's max_duration; whole seconds
	Reason    string            // why: an incident id and a few words
}

// BreakglassRequest asks for a grant and returns it, pending: the
// policy's approvers approve it (BreakglassApprove) or deny it. Never
// retried (a retry would be a second request).
func (c *Client) BreakglassRequest(ctx context.Context, r BreakglassRequest) (*keywardv1.BreakglassGrant, error) {
	return call(ctx, c, named("break-glass request", r.Key), false, c.api.BreakglassRequest,
		&keywardv1.BreakglassRequestRequest{Policy: r.Policy, Key: r.Key, Operation: r.Operation, Context: r.Context,
			DurationSeconds: uint64(r.Duration / time.Second), Reason: r.Reason})
}

// BreakglassApprove approves grant id as one of its policy's approvers
// (never its requester). Never retried.
func (c *Client) BreakglassApprove(ctx context.Context, id string) (*keywardv1.BreakglassGrant, error) {
	return call(ctx, c, named("break-glass approve", id), false, c.api.BreakglassApprove, &keywardv1.BreakglassGrantRequest{Id: id})
}

// BreakglassDeny denies the pending grant id. Never retried.
func (c *Client) BreakglassDeny(ctx context.Context, id string) (*keywardv1.BreakglassGrant, error) {
	return call(ctx, c, named("break-glass deny", id), false, c.api.BreakglassDeny, &keywardv1.BreakglassGrantRequest{Id: id})
}

// BreakglassRevoke ends the pending or active grant id (its requester, an
// approver, or an admin of its key). Never retried.
func (c *Client) BreakglassRevoke(ctx context.Context, id string) (*keywardv1.BreakglassGrant, error) {
	return call(ctx, c, named("break-glass revoke", id), false, c.api.BreakglassRevoke, &keywardv1.BreakglassGrantRequest{Id: id})
}

// BreakglassList lists the grants the caller is party to, newest first.
// Retried on UNAVAILABLE (it changes nothing but recording expiries due).
func (c *Client) BreakglassList(ctx context.Context) ([]*keywardv1.BreakglassGrant, error) {
	resp, err := call(ctx, c, "break-glass list", true, c.api.BreakglassList, &keywardv1.BreakglassListRequest{})
	if err != nil {
		return nil, err
	}
	return resp.GetGrants(), nil
}
