package keystest

import (
	"context"
	"fmt"
	"sort"

	"github.com/keyward/keyward/keys"
)

var _ keys.GrantStore = (*Mem)(nil)

type memGrant struct {
	gen  uint64
	body []byte
}

// PutGrant implements keys.GrantStore.
func (m *Mem) PutGrant(_ context.Context, id string, gen uint64, body []byte) error {
	if err := keys.CheckGrantPut(id, gen, body); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.grants == nil {
		m.grants = map[string]memGrant{}
	}
	cur, ok := m.grants[id]
	if ok && cur.gen != gen-1 || !ok && gen != 1 {
		return fmt.Errorf("grant %s generation %d: %w", id, gen, keys.ErrGrantConflict)
	}
	if !ok && len(m.grants) >= keys.MaxGrants {
		return fmt.Errorf("grant store holds %d records: %w", keys.MaxGrants, keys.ErrInvalidArgument)
	}
	m.grants[id] = memGrant{gen: gen, body: append([]byte(nil), body...)}
	return nil
}

// Grants implements keys.GrantStore.
func (m *Mem) Grants(context.Context) ([]keys.GrantRecord, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]keys.GrantRecord, 0, len(m.grants))
	for id, g := range m.grants {
		out = append(out, keys.GrantRecord{ID: id, Gen: g.gen, Body: append([]byte(nil), g.body...)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// DeleteGrant implements keys.GrantStore.
func (m *Mem) DeleteGrant(_ context.Context, id string) error {
	if err := keys.ValidGrantID(id); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.grants, id)
	return nil
}
