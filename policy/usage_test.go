package policy

import (
	"slices"
	"testing"
)

// TestMayHaveAllowed: the rules that may have allowed a recorded use are
// those that match it, in config order, up to the first without context
// pairs; a later rule that Decide never reaches is not one of them.
func TestMayHaveAllowed(t *testing.T) {
	p, err := Compile([]Rule{
		{Name: "ctx", UIDs: []uint32{1000}, Keys: []string{"app/**"}, Operations: []string{"unwrap"}, Context: map[string]string{"app": "billing"}},
		{Name: "plain", UIDs: []uint32{1000}, Keys: []string{"app/*"}, Operations: []string{"unwrap", "wrap"}},
		{Name: "shadowed", UIDs: []uint32{1000}, Keys: []string{"app/db"}, Operations: []string{"unwrap"}},
		{Name: "ops-group", GIDs: []uint32{990}, Keys: []string{"**"}, Operations: []string{"key.read"}},
		{Name: "creds", Units: []string{"web.service"}, Keys: []string{"creds/**"}, Operations: []string{"credential"}},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := p.RuleNames(); !slices.Equal(got, []string{"ctx", "plain", "shadowed", "ops-group", "creds"}) {
		t.Fatalf("RuleNames: %v", got)
	}
	for _, tc := range []struct {
		name string
		id   Identity
		op   Operation
		key  string
		want []string
	}{
		{"context rule then the first plain one", Identity{UID: 1000}, OpUnwrap, "app/db", []string{"ctx", "plain"}},
		{"context rule only", Identity{UID: 1000}, OpUnwrap, "app/x/y", []string{"ctx"}},
		{"plain rule only", Identity{UID: 1000}, OpWrap, "app/db", []string{"plain"}},
		{"supplementary group", Identity{UID: 5, GID: 5, Groups: []uint32{990}}, OpKeyRead, "any/key", []string{"ops-group"}},
		{"credential by unit alone", Identity{UID: 0, GID: 990, Unit: "web.service"}, OpCredential, "creds/db", []string{"creds"}},
		{"nobody", Identity{UID: 7}, OpUnwrap, "app/db", nil},
		{"invalid key", Identity{UID: 1000}, OpWrap, "/bad", nil},
		{"unknown operation", Identity{UID: 1000}, "frobnicate", "app/db", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := p.MayHaveAllowed(tc.id, tc.op, tc.key); !slices.Equal(got, tc.want) {
				t.Errorf("MayHaveAllowed = %v, want %v", got, tc.want)
			}
		})
	}
	var nilPol *Policy
	if nilPol.MayHaveAllowed(Identity{}, OpWrap, "k") != nil || nilPol.RuleNames() != nil {
		t.Error("a nil policy attributes nothing")
	}
}
