package keys

import (
	"context"
	"errors"
	"fmt"
)

// GrantStore is an optional ability of a backend: it keeps break-glass
// grant records, small opaque documents (the daemon's JSON), where the
// device detects tampering (a MAC by a key that never leaves the device)
// and, on a device shared by several daemons, every daemon sees them.
//
// A record is identified by its id and changes by generation: PutGrant
// stores generation gen only if the newest stored generation of id is
// gen-1 (0 when id has none), so of two daemons changing one grant at once
// exactly one wins and the other gets ErrGrantConflict and re-reads.
type GrantStore interface {
	// PutGrant stores body as generation gen of grant id (ValidGrantID;
	// body at most MaxGrantBody bytes). ErrGrantConflict: id's newest
	// stored generation is not gen-1.
	PutGrant(ctx context.Context, id string, gen uint64, body []byte) error
	// Grants returns the newest generation of every stored grant, each
	// verified. A record that fails its check is ErrIntegrity for the
	// whole call: a tampered store is never partly trusted.
	Grants(ctx context.Context) ([]GrantRecord, error)
	// DeleteGrant removes every generation of id (pruning grants long
	// expired). Deleting an id with no record is not an error; an id that
	// fails ValidGrantID is ErrInvalidArgument, as in PutGrant.
	DeleteGrant(ctx context.Context, id string) error
}

// GrantRecord is one stored grant as GrantStore returns it.
type GrantRecord struct {
	ID   string
	Gen  uint64
	Body []byte
}

// Limits of grant records.
const (
	MaxGrantBody = 16 << 10 // bytes of one record's body
	MaxGrantID   = 64       // bytes of an id
	MaxGrants    = 1024     // records a store keeps at once
)

// ErrGrantConflict: a grant changed by someone else since it was read.
var ErrGrantConflict = errors.New("grant changed concurrently")

// BreakglassIDBytes is the random bytes in a break-glass grant's id, which
// keywardd gives as lowercase hex.
const BreakglassIDBytes = 16

// IsBreakglassID reports whether id has the form of the ids keywardd gives
// break-glass grants: 2*BreakglassIDBytes lowercase hex digits (keywardd
// refuses any other; keyward checks before asking).
func IsBreakglassID(id string) bool {
	if len(id) != 2*BreakglassIDBytes {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// CheckGrantPut checks GrantStore.PutGrant's arguments, as every store
// does before anything else: a valid id, a body of at most MaxGrantBody
// bytes, a generation from 1 (0 is ErrGrantConflict).
func CheckGrantPut(id string, gen uint64, body []byte) error {
	if err := ValidGrantID(id); err != nil {
		return err
	}
	if len(body) > MaxGrantBody {
		return fmt.Errorf("grant record of %d bytes, at most %d: %w", len(body), MaxGrantBody, ErrInvalidArgument)
	}
	if gen == 0 {
		return fmt.Errorf("grant %s generation 0 (the first is 1): %w", id, ErrGrantConflict)
	}
	return nil
}

// ValidGrantID checks an id: 1 to MaxGrantID bytes of [a-z0-9-].
func ValidGrantID(id string) error {
	if id == "" || len(id) > MaxGrantID {
		return fmt.Errorf("grant id of %d bytes (1 to %d): %w", len(id), MaxGrantID, ErrInvalidArgument)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("grant id %q: only a-z, 0-9 and '-': %w", id, ErrInvalidArgument)
		}
	}
	return nil
}
