package daemon

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/audit"
	"github.com/keyward/keyward/credstore"
	"github.com/keyward/keyward/envelope"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/policy"
)

// The credential RPCs' entries in the method table; all are authorised
// as credential.put on the credential's key.
var (
	mPutCred    = methodOf("PutCredential")
	mListCred   = methodOf("ListCredentials")
	mRmCred     = methodOf("RemoveCredential")
	mRewrapCred = methodOf("RewrapCredentials")
)

// credStoreErr maps the store's errors to the daemon's wire reasons.
func credStoreErr(err error) error {
	switch {
	case errors.Is(err, credstore.ErrName):
		return invalid("%s", err.Error())
	case errors.Is(err, credstore.ErrNotFound):
		return fmt.Errorf("%w: %w", err, keys.ErrKeyNotFound)
	case errors.Is(err, credstore.ErrExists):
		return fmt.Errorf("%w: %w", err, keys.ErrKeyExists)
	case errors.Is(err, credstore.ErrUnsafe), errors.Is(err, credstore.ErrTooLarge):
		return fmt.Errorf("%w: %w", err, keys.ErrIntegrity)
	}
	return err
}

// auditCred records one credential admin operation of the current call:
// like auditOp, with the credential named in the record's reason.
func auditCred(ctx context.Context, m *method, key string, version uint32, unit, id string, started time.Time, err error) {
	cl, ok := ctx.Value(callKey{}).(*call)
	if !ok {
		return
	}
	r := audit.Record{Peer: cl.peer, Op: m.audit, Key: clipText(key, keys.MaxNameLen), Version: version, Result: resultFor(err),
		Reason: m.log + " " + clipText(unit, credstore.MaxUnit) + "/" + clipText(id, credstore.MaxID), Duration: time.Since(started), RequestID: cl.id}
	var d *deniedError
	if errors.As(err, &d) {
		r.Reason += ": " + d.reason
	}
	cl.add(ctx, r)
}

func credInfo(unit, id string, blob []byte, mod time.Time) *pb.CredentialInfo {
	out := &pb.CredentialInfo{Unit: unit, Id: id, Modified: timestamppb.New(mod)}
	if h, _, err := envelope.Decode(blob); err == nil {
		out.Key, out.Version = h.Name, h.Version
	}
	return out
}

// PutCredential wraps the secret under key, bound to {unit, credential},
// and stores it. The secret is cleared with the request (clearSecrets).
func (s *Service) PutCredential(ctx context.Context, req *pb.PutCredentialRequest) (*pb.CredentialInfo, error) {
	start := time.Now()
	unit, id, key := req.GetUnit(), req.GetId(), req.GetKey()
	info, err := s.putCredential(ctx, req)
	auditCred(ctx, mPutCred, key, info.GetVersion(), unit, id, start, err)
	if err != nil {
		return nil, s.fail(ctx, mPutCred.log, err)
	}
	s.credLifecycle(ctx, mPutCred, unit, id, key)
	return info, nil
}

func (s *Service) putCredential(ctx context.Context, req *pb.PutCredentialRequest) (*pb.CredentialInfo, error) {
	unit, id, key := req.GetUnit(), req.GetId(), req.GetKey()
	if err := s.checkCredName(unit, id); err != nil {
		return nil, err
	}
	if err := s.checkKey(key); err != nil {
		return nil, err
	}
	if len(req.GetSecret()) == 0 {
		return nil, invalid("the secret is empty: keyward never serves an empty credential")
	}
	if err := s.checkData("secret", req.GetSecret()); err != nil {
		return nil, err
	}
	if err := s.authorize(ctx, policy.OpCredentialPut, key, nil); err != nil {
		return nil, err
	}
	displaced, err := s.mayDisplace(ctx, unit, id, key, "")
	if err != nil {
		return nil, err
	}
	if err := s.auditIntent(ctx, mPutCred.audit, key, 0); err != nil {
		return nil, err
	}
	blob, err := s.be.Wrap(ctx, key, req.GetSecret(), credstore.Context(unit, id))
	if err != nil {
		return nil, err
	}
	s.credMu.Lock()
	defer s.credMu.Unlock()
	// Another put may have changed the store since the check above.
	if _, err := s.mayDisplace(ctx, unit, id, key, displaced); err != nil {
		return nil, err
	}
	if err := s.creds.Write(unit, id, blob, req.GetReplace()); err != nil {
		return nil, credStoreErr(err)
	}
	return credInfo(unit, id, blob, time.Now()), nil
}

// mayDisplace authorises a put of unit's credential id under key against
// the credential it would take the place of: the unit's own (replaced), or
// for an instance without one, its template's (which the instance would no
// longer get). Either changes what the unit gets, so it needs
// credential.put on that credential's key too, as removing it would. It
// returns that key ("" for none); checked: a key already authorised.
func (s *Service) mayDisplace(ctx context.Context, unit, id, key, checked string) (string, error) {
	units := []string{unit}
	if t, ok := credstore.Template(unit); ok {
		units = append(units, t)
	}
	for _, u := range units {
		e, err := s.storedCredential(u, id)
		if errors.Is(err, credstore.ErrNotFound) {
			continue
		}
		if err != nil {
			return "", err
		}
		old := credInfo(u, id, e.Blob, e.Modified).GetKey()
		if old != key && old != checked {
			if err := s.authorize(ctx, policy.OpCredentialPut, old, nil); err != nil {
				return "", err
			}
		}
		return old, nil
	}
	return "", nil
}

// checkCredName refuses a unit or id the store would not take, and a
// daemon without a store.
func (s *Service) checkCredName(unit, id string) error {
	if s.creds == nil {
		return fmt.Errorf("credentials: no store: %w", keys.ErrUnsupported)
	}
	if err := credstore.CheckUnit(unit); err != nil {
		return credStoreErr(err)
	}
	return credStoreErr(credstore.CheckID(id))
}

// credLifecycle logs a change to the store.
func (s *Service) credLifecycle(ctx context.Context, m *method, unit, id, key string) {
	who, _ := identityFrom(ctx)
	s.log.Info("credential lifecycle", "op", m.audit, "unit", unit, "credential", id, "key", key, "uid", who.UID, "pid", who.PID)
}

// ListCredentials lists the stored credentials whose key the caller may
// credential.put; others, and entries that cannot be read, are left out
// (the latter logged). Values are never read.
func (s *Service) ListCredentials(ctx context.Context, req *pb.ListCredentialsRequest) (*pb.ListCredentialsResponse, error) {
	if s.creds == nil {
		return nil, s.fail(ctx, mListCred.log, fmt.Errorf("credentials: no store: %w", keys.ErrUnsupported))
	}
	if u := req.GetUnit(); u != "" {
		if err := credstore.CheckUnit(u); err != nil {
			return nil, s.fail(ctx, mListCred.log, credStoreErr(err))
		}
	}
	es, err := s.creds.List(req.GetUnit())
	if err != nil {
		return nil, s.fail(ctx, mListCred.log, credStoreErr(err))
	}
	id, ok := identityFrom(ctx)
	if !ok {
		return nil, statusFor(ErrDenied)
	}
	pol, out := s.pol.Load(), &pb.ListCredentialsResponse{}
	for _, e := range es {
		if e.Err != nil {
			s.log.Warn("credential store entry unreadable", "unit", e.Unit, "credential", e.ID, "err", e.Err.Error())
			continue
		}
		ci := credInfo(e.Unit, e.ID, e.Blob, e.Modified)
		if ci.Key != "" && pol.Decide(id, policy.Request{Op: policy.OpCredentialPut, Key: ci.Key}, s.reserved()).Allowed {
			out.Credentials = append(out.Credentials, ci)
		}
	}
	return out, nil
}

// RemoveCredential deletes a stored credential (of that unit exactly: never
// its template's).
func (s *Service) RemoveCredential(ctx context.Context, req *pb.RemoveCredentialRequest) (*pb.CredentialInfo, error) {
	start := time.Now()
	unit, id := req.GetUnit(), req.GetId()
	info, err := s.removeCredential(ctx, unit, id)
	auditCred(ctx, mRmCred, info.GetKey(), info.GetVersion(), unit, id, start, err)
	if err != nil {
		return nil, s.fail(ctx, mRmCred.log, err)
	}
	s.credLifecycle(ctx, mRmCred, unit, id, info.GetKey())
	return info, nil
}

func (s *Service) removeCredential(ctx context.Context, unit, id string) (*pb.CredentialInfo, error) {
	e, err := s.storedCredential(unit, id)
	if err != nil {
		return nil, err
	}
	info := credInfo(unit, id, e.Blob, e.Modified)
	if err := s.authorize(ctx, policy.OpCredentialPut, info.Key, nil); err != nil {
		return info, err
	}
	if err := s.auditIntent(ctx, mRmCred.audit, info.Key, info.Version); err != nil {
		return info, err
	}
	s.credMu.Lock()
	defer s.credMu.Unlock()
	// A put may have replaced it since, under a key the caller may not
	// manage: authorised again for what is removed.
	if e, err = s.storedCredential(unit, id); err != nil {
		return info, err
	}
	if now := credInfo(unit, id, e.Blob, e.Modified); now.Key != info.Key {
		if err := s.authorize(ctx, policy.OpCredentialPut, now.Key, nil); err != nil {
			return now, err
		}
		info = now
	}
	return info, credStoreErr(s.creds.Remove(unit, id))
}

// storedCredential reads unit's own credential id.
func (s *Service) storedCredential(unit, id string) (credstore.Entry, error) {
	if err := s.checkCredName(unit, id); err != nil {
		return credstore.Entry{}, err
	}
	es, err := s.creds.List(unit)
	if err != nil {
		return credstore.Entry{}, credStoreErr(err)
	}
	for _, e := range es {
		if e.ID == id {
			if e.Err != nil {
				return credstore.Entry{}, credStoreErr(e.Err)
			}
			if _, _, err := envelope.Decode(e.Blob); err != nil {
				return credstore.Entry{}, fmt.Errorf("%s/%s: %w", unit, id, err)
			}
			return e, nil
		}
	}
	return credstore.Entry{}, credStoreErr(fmt.Errorf("%s/%s: %w", unit, id, credstore.ErrNotFound))
}
