package tpm

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/keyward/keyward/keys"
)

// FuzzDecodeRecord: a record file is read from disk at every start; whatever
// it holds, decoding either yields a record that passes check or fails with
// ErrIntegrity, and never panics.
func FuzzDecodeRecord(f *testing.F) {
	good := &record{Format: recordFormat, Name: "app/db", Type: keys.AES256GCM, Created: time.Unix(1e9, 0).UTC(),
		Vers: []recordVer{{Version: 1, State: keys.Enabled, Created: time.Unix(1e9, 0).UTC(), Blob: &blobPair{Public: []byte{1}, Private: []byte{2}}},
			{Version: 2, State: keys.Destroyed, Created: time.Unix(1e9, 0).UTC()}}, MAC: []byte{3}}
	b, _ := json.Marshal(good)
	f.Add(b)
	f.Add([]byte(`{"format":1,"name":"a","type":"hmac-sha256","versions":[]}`))
	f.Add([]byte(`{"format":1,"name":"../x","type":"aes-256-gcm","versions":[{"version":1,"state":"enabled"}]}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := decodeRecord("keys/app%2Fdb.json", data)
		if err != nil {
			if !errors.Is(err, keys.ErrIntegrity) {
				t.Fatalf("error without ErrIntegrity: %v", err)
			}
			return
		}
		if r.Name != "app/db" || len(r.Vers) == 0 || int(r.Min) > len(r.Vers) {
			t.Fatalf("accepted an inconsistent record: %+v", r)
		}
		if _, err := r.macInput(); err != nil {
			t.Fatalf("macInput of an accepted record: %v", err)
		}
		_ = r.info()
	})
}
