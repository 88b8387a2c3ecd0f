package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const breakglassFile = `
[backend]
token = "keyward"

[[breakglass]]
name = "db-emergency"
requesters = { uids = [1000], groups = ["0"] }
approvers = { uids = [1001, 1002] }
keys = ["payments/*"]
operations = ["unwrap", "sign"]
max_duration = "1h"
approvals = 2
request_ttl = "20m"
`

// TestBreakglassConfig: [[breakglass]] tables decode strictly and compile
// into the policy CheckConfig returns; a bad table is an error naming it.
func TestBreakglassConfig(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keyward.toml")
	if err := os.WriteFile(path, []byte(breakglassFile), 0o600); err != nil {
		t.Fatal(err)
	}
	_, pol, err := CheckConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	bp, ok := pol.BreakglassNamed("db-emergency")
	if !ok || bp.MaxDuration() != time.Hour || bp.Approvals() != 2 || bp.RequestTTL() != 20*time.Minute {
		t.Fatalf("compiled: %+v %v", bp, ok)
	}
	for _, tc := range []struct{ name, edit, want string }{
		{"unknown key", `approvers = { uids = [1001, 1002] }` + "\nadmins = [1]", `"breakglass.admins"`},
		{"unknown subject key", `approvers = { uids = [1001, 1002], units = ["x.service"] }`, "units"},
		{"admin op", `approvers = { uids = [1001, 1002] }` + "\n" + `operations = ["key.destroy"]`, "cannot be granted by break-glass"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := strings.Replace(breakglassFile, `approvers = { uids = [1001, 1002] }`, tc.edit, 1)
			if tc.name == "admin op" {
				body = strings.Replace(body, `operations = ["unwrap", "sign"]`, "", 1)
			}
			if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
			_, _, err := CheckConfig(path)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error with %s", err, tc.want)
			}
		})
	}
}
