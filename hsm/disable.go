package hsm

import (
	"context"
	"errors"
	"time"

	"github.com/keyward/keyward/keys"
)

// SetDisableAfter stores the key's disable-after delay (0: never).
func (t *Token) SetDisableAfter(ctx context.Context, name string, d time.Duration) (keys.KeyInfo, error) {
	if err := keys.CheckDisableAfter(d); err != nil {
		return keys.KeyInfo{}, err
	}
	return t.update(ctx, "set-disable-after", name, func(s *sess, rec *metaRecord) error {
		rec.DisableAfter = int64(d / time.Second)
		return nil
	})
}

// DisableVersionsIfDue disables, in one record change, the versions the
// record read for the change says are due at now: a retry after another
// writer's change reads that change, so of several daemons on one token
// only the first disables a version.
func (t *Token) DisableVersionsIfDue(ctx context.Context, name string, now time.Time) (keys.KeyInfo, []uint32, error) {
	var due []uint32
	info, err := t.update(ctx, "scheduled-disable", name, func(s *sess, rec *metaRecord) error {
		ki := rec.info()
		if due = ki.DisableDueAt(now); len(due) == 0 {
			return errNotDue
		}
		for _, v := range due {
			rec.Vers[v-1].State = keys.Disabled
		}
		return nil
	})
	if errors.Is(err, errNotDue) {
		info, err = t.DescribeKey(ctx, name)
		return info, nil, err
	}
	if err != nil {
		return keys.KeyInfo{}, nil, err
	}
	return info, due, nil
}
