package main

import (
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	keywardv1 "github.com/keyward/keyward/api/keyward/v1"
)

// TestDisableDue: the note after an enable names the versions the
// scheduler would disable: enabled, older than the newest enabled one,
// superseded at least the delay ago.
func TestDisableDue(t *testing.T) {
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	v := func(n uint32, st keywardv1.VersionState, age time.Duration) *keywardv1.KeyVersion {
		return &keywardv1.KeyVersion{Version: n, State: st, Created: timestamppb.New(now.Add(-age))}
	}
	en, dis := keywardv1.VersionState_ENABLED, keywardv1.VersionState_DISABLED
	tests := []struct {
		name  string
		after time.Duration
		vs    []*keywardv1.KeyVersion
		want  []uint32
	}{
		{"no delay", 0, []*keywardv1.KeyVersion{v(1, en, 30*day), v(2, en, 20*day)}, nil},
		{"superseded long ago", 7 * day, []*keywardv1.KeyVersion{v(1, en, 30*day), v(2, en, 20*day)}, []uint32{1}},
		{"superseded lately", 7 * day, []*keywardv1.KeyVersion{v(1, en, 30*day), v(2, en, 2*day)}, nil},
		{"the newest enabled stays", 7 * day, []*keywardv1.KeyVersion{v(1, en, 30*day), v(2, en, 20*day), v(3, dis, 10*day)}, []uint32{1}},
		{"disabled ones are not listed", 7 * day, []*keywardv1.KeyVersion{v(1, dis, 30*day), v(2, en, 20*day), v(3, en, 10*day)}, []uint32{2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ki := &keywardv1.KeyInfo{DisableAfterSeconds: uint64(tt.after / time.Second), Versions: tt.vs}
			if got := disableDue(ki, now); !slices.Equal(got, tt.want) {
				t.Errorf("disableDue = %v, want %v", got, tt.want)
			}
		})
	}
}
