package keystest

import (
	"context"
	"time"

	"github.com/keyward/keyward/keys"
)

func (m *Mem) SetDisableAfter(_ context.Context, name string, d time.Duration) (keys.KeyInfo, error) {
	if err := keys.CheckDisableAfter(d); err != nil {
		return keys.KeyInfo{}, err
	}
	return m.admin(name, func(k *memKey) error {
		k.info.DisableAfter = d
		return nil
	})
}

func (m *Mem) DisableVersionsIfDue(_ context.Context, name string, now time.Time) (keys.KeyInfo, []uint32, error) {
	var due []uint32
	info, err := m.admin(name, func(k *memKey) error {
		due = k.info.DisableDueAt(now)
		for _, v := range due {
			k.info.Versions[v-1].State = keys.Disabled
		}
		return nil
	})
	if err != nil {
		return keys.KeyInfo{}, nil, err
	}
	return info, due, nil
}
