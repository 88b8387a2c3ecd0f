package tpm

import (
	"encoding/json"
	"errors"
	"strings"
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

// FuzzDecodeManifest: manifest.json is read at every start; decoding either
// yields a manifest whose keys are valid names at or below its counter, or
// fails with ErrIntegrity, and never panics.
func FuzzDecodeManifest(f *testing.F) {
	good := &manifest{Format: manifestFormat, Index: "0x01234567", Counter: 7, Keys: map[string]manifestKey{"app/db": {Seq: 7, SHA256: strings.Repeat("ab", 32)}, "app/old": {}}, MAC: []byte{1}}
	b, _ := json.Marshal(good)
	f.Add(b)
	f.Add([]byte(`{"format":1,"nv_index":"0x1","counter":1,"keys":{}}`))
	f.Add([]byte(`{"format":1,"nv_index":"0x01000000","counter":1,"keys":{"a":{"seq":2,"sha256":""}}}`))
	f.Add([]byte(`{"format":1,"nv_index":"0x01000000","counter":1,"keys":{"../x":{"seq":0}}}`))
	f.Add([]byte(`{"format":1,"nv_index":"0x01000000","counter":1,"keys":{},"grants":{"../x":{"seq":1,"sha256":""}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := decodeManifest(data)
		if err != nil {
			if !errors.Is(err, keys.ErrIntegrity) {
				t.Fatalf("error without ErrIntegrity: %v", err)
			}
			return
		}
		for name, e := range m.Keys {
			if keys.ValidateName(name) != nil || e.Seq > m.Counter || len(e.SHA256) != 64 {
				t.Fatalf("accepted key %q at %+v in a manifest at %d", name, e, m.Counter)
			}
		}
		for id, e := range m.Grants {
			if keys.ValidGrantID(id) != nil || e.Seq > m.Counter || len(e.SHA256) != 64 {
				t.Fatalf("accepted grant %q at %+v in a manifest at %d", id, e, m.Counter)
			}
		}
		if _, err := m.macInput(); err != nil {
			t.Fatalf("macInput of an accepted manifest: %v", err)
		}
	})
}

// FuzzDecodeGrant: a grant file is read from disk at every start; whatever
// it holds, decoding either yields a grant record of the file's id within
// the limits or fails with ErrIntegrity, and never panics.
func FuzzDecodeGrant(f *testing.F) {
	good := &grantFile{Format: grantFormat, ID: "g-1", Gen: 2, Body: []byte(`{"state":"active"}`), Seq: 9, MAC: []byte{3}}
	b, _ := json.Marshal(good)
	f.Add(b)
	f.Add([]byte(`{"format":1,"id":"g-1","gen":0,"body":"","mac":"AQ=="}`))
	f.Add([]byte(`{"format":1,"id":"../g-1","gen":1,"body":"","mac":"AQ=="}`))
	f.Add([]byte(`{"format":1,"name":"g-1","type":"aes-256-gcm","versions":[]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		g, err := decodeGrant("grants/g-1.json", data)
		if err != nil {
			if !errors.Is(err, keys.ErrIntegrity) {
				t.Fatalf("error without ErrIntegrity: %v", err)
			}
			return
		}
		if g.ID != "g-1" || g.Gen == 0 || len(g.Body) > keys.MaxGrantBody || len(g.MAC) == 0 {
			t.Fatalf("accepted an inconsistent grant record: %+v", g)
		}
		if _, err := g.macInput(); err != nil {
			t.Fatalf("macInput of an accepted grant record: %v", err)
		}
	})
}
