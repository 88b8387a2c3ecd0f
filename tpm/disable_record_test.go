package tpm

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/keyward/keyward/keys"
)

// TestRecordDisableAfter: a record file's disable-after delay outside the
// bounds SetDisableAfter accepts fails its check, and a record written
// without one has no disable_after_s field (its MAC input is unchanged).
func TestRecordDisableAfter(t *testing.T) {
	for _, tc := range []struct {
		secs int64
		ok   bool
	}{
		{0, true}, {86400, true}, {3650 * 86400, true},
		{-1, false}, {1, false}, {3600, false}, {3651 * 86400, false}, {1 << 62, false},
	} {
		body := fmt.Sprintf(`{"format":%d,"name":"app/db","type":"aes-256-gcm","created":"2026-01-01T00:00:00Z",`+
			`"versions":[{"version":1,"state":"enabled","created":"2026-01-01T00:00:00Z","blob":{"public":"AQ==","private":"Ag=="}}],"disable_after_s":%d}`,
			recordFormat, tc.secs)
		r, err := decodeRecord("keys/app%2Fdb.json", []byte(body))
		if tc.ok && err != nil || !tc.ok && !errors.Is(err, keys.ErrIntegrity) {
			t.Errorf("disable_after_s %d: %v, want ok=%v", tc.secs, err, tc.ok)
			continue
		}
		if !tc.ok {
			continue
		}
		if ki := r.info(); ki.DisableAfter != time.Duration(tc.secs)*time.Second {
			t.Errorf("disable_after_s %d: info has %v", tc.secs, ki.DisableAfter)
		}
	}
	in, err := (&record{Format: recordFormat, Name: "app/db"}).macInput()
	if err != nil {
		t.Fatal(err)
	}
	before, _ := labelledDigest(labelKeyring, struct {
		Format  int         `json:"format"`
		Name    string      `json:"name"`
		Type    keys.Type   `json:"type"`
		Created time.Time   `json:"created"`
		Vers    []recordVer `json:"versions"`
	}{Format: recordFormat, Name: "app/db"})
	if string(in) != string(before) {
		t.Error("a record without a delay has a MAC input other than before the field existed")
	}
}
