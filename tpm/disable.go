package tpm

import (
	"context"
	"errors"
	"time"

	"github.com/keyward/keyward/keys"
)

// SetDisableAfter stores the key's disable-after delay (0: never).
func (b *TPM) SetDisableAfter(ctx context.Context, name string, d time.Duration) (keys.KeyInfo, error) {
	if err := keys.CheckDisableAfter(d); err != nil {
		return keys.KeyInfo{}, err
	}
	return b.update(ctx, "set-disable-after", name, func(_ *device, r *record) error {
		r.DisableAfter = int64(d / time.Second)
		return nil
	})
}

// DisableVersionsIfDue disables, in one record change, the versions that
// its record, read under the TPM's lock for the change, says are due at
// now.
func (b *TPM) DisableVersionsIfDue(ctx context.Context, name string, now time.Time) (keys.KeyInfo, []uint32, error) {
	var due []uint32
	info, err := b.update(ctx, "scheduled-disable", name, func(_ *device, r *record) error {
		ki := r.info()
		if due = ki.DisableDueAt(now); len(due) == 0 {
			return errUnchanged
		}
		for _, v := range due {
			r.Vers[v-1].State = keys.Disabled
		}
		return nil
	})
	if errors.Is(err, errUnchanged) {
		info, err = b.DescribeKey(ctx, name)
		return info, nil, err
	}
	if err != nil {
		return keys.KeyInfo{}, nil, err
	}
	return info, due, nil
}
