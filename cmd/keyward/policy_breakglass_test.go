package main

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
)

const breakglassPolicyConfig = policyConfig + `
[[breakglass]]
name = "db-emergency"
requesters = { uids = [1500] }
approvers = { uids = [1501, 1502] }
keys = ["payments/*"]
operations = ["unwrap", "sign"]
max_duration = "30m"
`

// TestPolicyBreakglassPaths: explain and report show break-glass paths
// apart from what the rules allow: explain still says denied (exit 1), then
// what the caller could get with approval; report lists them after the
// grants, and under "breakglass" in --json.
func TestPolicyBreakglassPaths(t *testing.T) {
	cfg := writeConfig(t, breakglassPolicyConfig)
	r := keyward(t, nil, "policy", "explain", "--config", cfg, "--uid", "1500", "--gid", "1500", "--op", "unwrap", "--key", "payments/db")
	path := `could get unwrap on payments/db with approval from uid 1501, uid 1502 (policy "db-emergency", up to 30m, 1 approval)`
	if r.code != exitFailed || !strings.HasPrefix(r.stdout, "denied\n") || !strings.Contains(r.stdout, "break-glass (nothing allowed until approved):\n  "+path+"\n") {
		t.Errorf("explain: exit %d\n%s", r.code, r.stdout)
	}
	r = keyward(t, nil, "policy", "explain", "--config", cfg, "--uid", "1501", "--gid", "1501", "--op", "unwrap", "--key", "payments/db")
	if strings.Contains(r.stdout, "break-glass") {
		t.Errorf("explain for an approver who may not request shows a path:\n%s", r.stdout)
	}
	r = keyward(t, nil, "policy", "report", "--config", cfg)
	want := `uid 1500 could get unwrap,sign on payments/* with approval from uid 1501, uid 1502 (policy "db-emergency", up to 30m, 1 approval)`
	lines := normLines(r.stdout)
	if r.code != exitOK || !slices.Contains(lines, want) || !slices.Contains(lines, "Break-glass (with approval only; nothing is allowed until approved):") {
		t.Errorf("report: exit %d\n%s\nwant a line (spaces folded): %s", r.code, r.stdout, want)
	}
	r = keyward(t, nil, "policy", "report", "--config", cfg, "--json")
	var rep reportJSON
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil || len(rep.Breakglass) != 1 {
		t.Fatalf("--json: %v\n%s", err, r.stdout)
	}
	b := rep.Breakglass[0]
	if b.Policy != "db-emergency" || !slices.Equal(b.Requesters, []string{"uid 1500"}) || !slices.Equal(b.Operations, []string{"unwrap", "sign"}) ||
		b.MaxDuration != "30m" || b.Approvals != 1 || b.RequestTTL != "1h" || len(rep.Grants) != 6 {
		t.Errorf("--json breakglass: %+v", b)
	}
}
