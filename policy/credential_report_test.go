package policy

import (
	"reflect"
	"strings"
	"testing"
)

// TestExplainCredentialAgreesWithDecide: credential is decided for the unit
// alone (systemd asks as root); Explain's verdicts must say the same, for
// a root caller in a unit that a uid rule names and for one that a unit
// rule names.
func TestExplainCredentialAgreesWithDecide(t *testing.T) {
	p := mustCompile(t, []Rule{
		{Name: "root by uid", UIDs: []uint32{0}, Keys: []string{"**"}, Operations: []string{"credential"}},
		{Name: "unit", Units: []string{"app.service"}, Keys: []string{"app/*"}, Operations: []string{"credential"}},
	})
	tests := []struct {
		unit, key string
		allowed   bool
	}{
		{"other.service", "app/k", false}, // only "root by uid" names uid 0
		{"app.service", "app/k", true},
		{"app.service", "other/k", false},
	}
	for _, tt := range tests {
		id := Identity{UID: 0, GID: 0, PID: 9, Unit: tt.unit}
		req := Request{Op: OpCredential, Key: tt.key, Context: map[string]string{"unit": tt.unit, "credential": "db"}}
		d, vs := p.Explain(id, req, Reserved{})
		if d.Allowed != tt.allowed || p.Decide(id, req, Reserved{}).Allowed != tt.allowed {
			t.Fatalf("%s %s: decision %+v, want allowed=%v", tt.unit, tt.key, d, tt.allowed)
		}
		matched := false
		for _, v := range vs {
			if v.Rule == "root by uid" && (v.Matched || !strings.Contains(v.Why, "granted by units alone")) {
				t.Errorf("%s %s: the uid-0 rule's verdict %+v; want a miss saying credential is granted by units alone", tt.unit, tt.key, v)
			}
			matched = matched || v.Matched
		}
		if matched != tt.allowed {
			t.Errorf("%s %s: a verdict matched = %v, decision allowed = %v: %+v", tt.unit, tt.key, matched, tt.allowed, vs)
		}
	}
}

// TestReportCredentialAndOrder: the report lists a grant's operations in
// the order of DataOperations then AdminOperations, and shows credential
// on a user, uid, group or gid as never usable, not as granted.
func TestReportCredentialAndOrder(t *testing.T) {
	p := mustCompile(t, []Rule{
		{Name: "mixed", UIDs: []uint32{7}, GIDs: []uint32{8}, Units: []string{"app.service"}, Keys: []string{"app/*"},
			Operations: []string{"credential.put", "credential", "kms.decrypt", "key.read", "wrap"}},
	})
	userOps := []Operation{OpWrap, OpKMSDecrypt, OpKeyRead, OpCredentialPut}
	unitOps := []Operation{OpWrap, OpKMSDecrypt, OpCredential, OpKeyRead, OpCredentialPut}
	never := []Operation{OpCredential}
	want := []Grant{
		{Subject: "uid 7", Operations: userOps, Never: never, Keys: []string{"app/*"}, Rule: "mixed"},
		{Subject: "gid 8", Operations: userOps, Never: never, Keys: []string{"app/*"}, Rule: "mixed"},
		{Subject: "unit app.service", Operations: unitOps, Keys: []string{"app/*"}, Rule: "mixed"},
	}
	if got := p.Report(); !reflect.DeepEqual(got, want) {
		t.Fatalf("report\n got %+v\nwant %+v", got, want)
	}
}
