package client

import (
	"context"

	keywardv1 "github.com/keyward/keyward/api/keyward/v1"
)

// PutCredential stores secret as unit's systemd credential id, wrapped
// under key and bound to {unit, credential}; with replace an existing one
// is overwritten. The daemon serves it to systemd's LoadCredential= for
// that unit. Never retried. secret is not cleared: that is the caller's.
func (c *Client) PutCredential(ctx context.Context, unit, id, key string, secret []byte, replace bool) (*keywardv1.CredentialInfo, error) {
	return call(ctx, c, named("put credential", unit+"/"+id), false, c.api.PutCredential,
		&keywardv1.PutCredentialRequest{Unit: unit, Id: id, Key: key, Secret: secret, Replace: replace})
}

// ListCredentials lists the stored credentials of unit ("" for all) whose
// key the caller may manage. Values are never returned. Not retried (an
// admin call).
func (c *Client) ListCredentials(ctx context.Context, unit string) ([]*keywardv1.CredentialInfo, error) {
	resp, err := call(ctx, c, "list credentials", false, c.api.ListCredentials, &keywardv1.ListCredentialsRequest{Unit: unit})
	if err != nil {
		return nil, err
	}
	return resp.GetCredentials(), nil
}

// RemoveCredential deletes unit's stored credential id. Never retried.
func (c *Client) RemoveCredential(ctx context.Context, unit, id string) (*keywardv1.CredentialInfo, error) {
	return call(ctx, c, named("remove credential", unit+"/"+id), false, c.api.RemoveCredential,
		&keywardv1.RemoveCredentialRequest{Unit: unit, Id: id})
}

// RewrapCredentials wraps the matching credentials (unit and id "" match
// all) again under their key's newest version. Never retried.
func (c *Client) RewrapCredentials(ctx context.Context, unit, id string) ([]*keywardv1.CredentialInfo, error) {
	resp, err := call(ctx, c, "rewrap credentials", false, c.api.RewrapCredentials,
		&keywardv1.RewrapCredentialsRequest{Unit: unit, Id: id})
	if err != nil {
		return nil, err
	}
	return resp.GetCredentials(), nil
}
