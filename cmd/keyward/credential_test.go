package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestCredentialCommands: put, list (never the value), rewrap after a
// rotation, rm, and the usage errors, against the dev daemon.
func TestCredentialCommands(t *testing.T) {
	sock := startDaemon(t)
	key := fresh("creds/k")
	unit := fresh("cli") + ".service"
	secret := "cli-credential-secret"
	if r := kw(t, sock, nil, "key", "create", key, "--type", "aes-256-gcm"); r.code != 0 {
		t.Fatalf("create: %+v", r)
	}
	steps := []struct {
		name  string
		stdin string
		args  []string
		code  int
		out   string // in stdout, or in stderr for a failure
	}{
		{"put", secret, []string{"credential", "put", "--unit", unit, "--id", "db-password", "--key", key}, 0, "stored " + unit + "/db-password under " + key + " v1"},
		{"put again", secret, []string{"credential", "put", "--unit", unit, "--id", "db-password", "--key", key}, exitFailed, "exists"},
		{"put --replace", secret, []string{"credential", "put", "--unit", unit, "--id", "db-password", "--key", key, "--replace"}, 0, "stored"},
		{"no secret", "", []string{"credential", "put", "--unit", unit, "--id", "x", "--key", key}, exitUsage, "no secret on stdin"},
		{"no unit", secret, []string{"credential", "put", "--id", "x", "--key", key}, exitUsage, "--unit UNIT and --id ID are required"},
		{"bad id", secret, []string{"credential", "put", "--unit", unit, "--id", "../x", "--key", key}, exitUsage, "invalid"},
		{"list", "", []string{"credential", "list", "--unit", unit}, 0, unit + "  db-password  " + key + "  v1"},
		{"rotate", "", []string{"key", "rotate", key}, 0, ""},
		{"rewrap", "", []string{"credential", "rewrap", "--unit", unit}, 0, "db-password  " + key + "  v2"},
		{"rm", "", []string{"credential", "rm", "--unit", unit, "--id", "db-password"}, 0, "removed " + unit + "/db-password"},
		{"rm again", "", []string{"credential", "rm", "--unit", unit, "--id", "db-password"}, exitNotFound, "not found"},
	}
	for _, s := range steps {
		r := kw(t, sock, []byte(s.stdin), s.args...)
		if r.code != s.code || !strings.Contains(r.stdout+r.stderr, s.out) {
			t.Fatalf("%s: exit %d, want %d with %q\nstdout: %s\nstderr: %s", s.name, r.code, s.code, s.out, r.stdout, r.stderr)
		}
		if strings.Contains(r.stdout+r.stderr, secret) {
			t.Fatalf("%s: the secret was printed", s.name)
		}
	}
	r := kw(t, sock, nil, "credential", "list", "--json")
	var all []credJSON
	if err := json.Unmarshal([]byte(r.stdout), &all); r.code != 0 || err != nil {
		t.Fatalf("list --json: %v %+v", err, r)
	}
	for _, c := range all {
		if c.Unit == unit {
			t.Fatalf("removed credential still listed: %+v", c)
		}
	}
}
