package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestDevAllow: keywardd --dev allows only the invoking uid unless
// --dev-allow-uid or --dev-allow-gid names another caller, which then may
// do everything (a sidecar or container under another uid).
func TestDevAllow(t *testing.T) {
	startDaemon(t) // builds keywardd into binDir
	cred := outsider(t, true)
	inGroup := &syscall.Credential{Uid: cred.Uid, Gid: cred.Gid, Groups: []uint32{4343}}
	for _, tc := range []struct {
		name    string
		flags   []string
		cred    *syscall.Credential
		allowed bool
	}{
		{"not named", nil, cred, false},
		{"by uid", []string{"--dev-allow-uid", strconv.Itoa(int(cred.Uid))}, cred, true},
		{"by gid", []string{"--dev-allow-gid", "4343"}, inGroup, true},
		{"another gid", []string{"--dev-allow-gid", "4344"}, inGroup, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, err := os.MkdirTemp("", "kwa-") // short: a socket path has at most 108 bytes
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
			os.Chmod(dir, 0o755)
			socket := filepath.Join(dir, "k.sock")
			d := exec.Command(filepath.Join(binDir, "keywardd"), append([]string{"--dev", "--socket", socket}, tc.flags...)...)
			d.Env = testEnv(nil)
			d.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
			var stdout strings.Builder
			d.Stdout = &stdout
			if err := d.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { d.Process.Signal(syscall.SIGTERM); d.Wait() })
			if r := kw(t, socket, nil, "status", "--wait"); r.code != 0 {
				t.Fatalf("status --wait: exit %d %s", r.code, r.stderr)
			}
			r := kwAs(t, tc.cred, socket, nil, "key", "create", "dev/"+strings.ReplaceAll(tc.name, " ", "-"), "--type", "aes-256-gcm")
			if tc.allowed && r.code != exitOK || !tc.allowed && r.code != exitPermission {
				t.Errorf("key create as uid %d groups %v: exit %d, %s (allowed: %v)", tc.cred.Uid, tc.cred.Groups, r.code, r.stderr, tc.allowed)
			}
			if r := kw(t, socket, nil, "key", "list"); r.code != exitOK {
				t.Errorf("the invoking uid lost its rule: exit %d, %s", r.code, r.stderr)
			}
		})
	}
}
