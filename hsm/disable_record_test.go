package hsm

import (
	"errors"
	"testing"
	"time"

	"github.com/keyward/keyward/keys"
)

// TestRecordDisableAfter: a record's disable-after delay outside the
// bounds SetDisableAfter accepts fails the record's check (someone wrote
// it without going through keyward), like an out-of-range rotation period.
func TestRecordDisableAfter(t *testing.T) {
	for _, tc := range []struct {
		secs int64
		ok   bool
	}{
		{0, true}, {86400, true}, {3650 * 86400, true},
		{-1, false}, {1, false}, {3600, false}, {3651 * 86400, false}, {1 << 62, false},
	} {
		r := &metaRecord{Format: 1, Name: "app/db", Type: keys.AES256GCM, DisableAfter: tc.secs,
			Vers: []metaVersion{{Version: 1, State: keys.Enabled, Created: time.Unix(1e9, 0).UTC()}}}
		err := r.validate("app/db")
		if tc.ok && err != nil || !tc.ok && !errors.Is(err, keys.ErrIntegrity) {
			t.Errorf("disable_after_s %d: %v, want ok=%v", tc.secs, err, tc.ok)
		}
		if !tc.ok {
			continue
		}
		if ki := r.info(); ki.DisableAfter != time.Duration(tc.secs)*time.Second {
			t.Errorf("disable_after_s %d: info has %v", tc.secs, ki.DisableAfter)
		}
	}
}
