package daemon

import (
	"bytes"
	"context"
	"time"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/credstore"
	"github.com/keyward/keyward/internal/secretfile"
	"github.com/keyward/keyward/policy"
)

// RewrapCredentials wraps the matching stored credentials again under
// their key's newest version (after key rotate), each authorised as
// credential.put on its key and recorded on its own; one already at the
// newest version is left alone. It answers with every matching credential
// the caller may manage, as stored afterwards; the first failure ends the
// call with its error (the credentials before it stay rewrapped).
func (s *Service) RewrapCredentials(ctx context.Context, req *pb.RewrapCredentialsRequest) (*pb.ListCredentialsResponse, error) {
	if s.creds == nil {
		return s.ListCredentials(ctx, &pb.ListCredentialsRequest{})
	}
	if req.GetId() != "" {
		if err := credstore.CheckID(req.GetId()); err != nil {
			return nil, s.fail(ctx, mRewrapCred.log, credStoreErr(err))
		}
	}
	list, err := s.ListCredentials(ctx, &pb.ListCredentialsRequest{Unit: req.GetUnit()})
	if err != nil {
		return nil, err
	}
	newest := map[string]uint32{}
	out := &pb.ListCredentialsResponse{}
	for _, ci := range list.GetCredentials() {
		if req.GetId() != "" && ci.GetId() != req.GetId() {
			continue
		}
		start := time.Now()
		nci, err := s.rewrapOne(ctx, ci, newest)
		if nci != ci || err != nil {
			auditCred(ctx, mRewrapCred, ci.GetKey(), nci.GetVersion(), ci.GetUnit(), ci.GetId(), start, err)
		}
		if err != nil {
			return nil, s.fail(ctx, mRewrapCred.log, err)
		}
		out.Credentials = append(out.Credentials, nci)
	}
	return out, nil
}

// rewrapOne rewraps one credential unless it is at its key's newest
// version; it returns ci itself when nothing was done.
func (s *Service) rewrapOne(ctx context.Context, ci *pb.CredentialInfo, newest map[string]uint32) (*pb.CredentialInfo, error) {
	key, unit, id := ci.GetKey(), ci.GetUnit(), ci.GetId()
	if err := s.authorize(ctx, policy.OpCredentialPut, key, nil); err != nil {
		return nil, err
	}
	if _, ok := newest[key]; !ok {
		ki, err := s.be.DescribeKey(ctx, key)
		if err != nil {
			return nil, err
		}
		// The version a wrap would use: the newest enabled one. A newer
		// disabled or destroyed version is not something to rewrap to.
		if newest[key], err = ki.Latest(); err != nil {
			return nil, err
		}
	}
	if ci.GetVersion() >= newest[key] {
		return ci, nil
	}
	e, err := s.storedCredential(unit, id)
	if err != nil {
		return nil, err
	}
	bound := credstore.Context(unit, id)
	u, err := s.be.Unwrap(ctx, e.Blob, bound)
	if err != nil {
		return nil, err
	}
	defer secretfile.Zero(u.Plaintext)
	blob, err := s.be.Wrap(ctx, key, u.Plaintext, bound)
	if err != nil {
		return nil, err
	}
	if s.beforeCredReplace != nil {
		s.beforeCredReplace()
	}
	return s.replaceIfUnchanged(unit, id, e.Blob, blob)
}

// replaceIfUnchanged stores blob as unit's credential id only if the store
// still holds old, the blob the rewrap unwrapped: a put --replace or rm
// that ran meanwhile wins, and the credential is answered as it is now.
func (s *Service) replaceIfUnchanged(unit, id string, old, blob []byte) (*pb.CredentialInfo, error) {
	s.credMu.Lock()
	defer s.credMu.Unlock()
	now, err := s.storedCredential(unit, id)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(now.Blob, old) {
		return credInfo(unit, id, now.Blob, now.Modified), nil
	}
	if err := s.creds.Write(unit, id, blob, true); err != nil {
		return nil, credStoreErr(err)
	}
	return credInfo(unit, id, blob, time.Now()), nil
}
