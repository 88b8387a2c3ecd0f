package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/audit"
	"github.com/keyward/keyward/internal/testutil"
	softhsmtest "github.com/keyward/keyward/softhsm-test"
	"github.com/keyward/keyward/tpm/swtpmtest"
)

// These tests run the real keywardd (the keywardtest build, whose
// break-glass clock is a file) on the device backends' grant stores, with
// the keyward command as each party under its own uid.

const (
	bgGID          = 4747
	bgRequesterUID = 14011
	bgApproverUID  = 14012
)

// keywardBin is the keyward command, built once, in a directory other uids
// may read.
var keywardBin = sync.OnceValues(func() (string, error) {
	p := filepath.Join(filepath.Dir(bin), "keyward")
	out, err := exec.Command("go", "build", "-o", p, "../keyward").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build keyward: %v\n%s", err, out)
	}
	return p, os.Chmod(filepath.Dir(bin), 0o755)
})

// bgd is one keywardd with break-glass, its clock in a file.
type bgd struct {
	dir, sock, conf, clock, audit string
	cmd                           *exec.Cmd
	log                           *testutil.SyncBuffer
	stop                          func() // SIGTERM, and wait for the exit
}

const bgTables = `
[[rule]]
name = "root sets up"
uids = [0]
keys = ["db/**"]
operations = ["wrap", "key.create"]

[[breakglass]]
name = "db-emergency"
requesters = { uids = [%d] }
approvers = { uids = [%d, %d] }
keys = ["db/*"]
operations = ["unwrap"]
max_duration = "1h"
`

// newBGD writes the config (backend: the [backend] table) and the clock.
func newBGD(t *testing.T, backend string, now time.Time) *bgd {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root, to run keyward as other uids")
	}
	dir, err := os.MkdirTemp("", "kwdbg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	d := &bgd{dir: dir, sock: filepath.Join(dir, "k.sock"), conf: filepath.Join(dir, "keyward.toml"), clock: filepath.Join(dir, "clock"),
		audit: filepath.Join(dir, "audit.log")}
	body := fmt.Sprintf("socket = %q\nsocket_group = \"%d\"\naudit_log = %q\nbreakglass_state = %q\n%s\n", d.sock, bgGID, d.audit,
		filepath.Join(dir, "breakglass-seen.json"), backend) +
		fmt.Sprintf(bgTables, bgRequesterUID, bgRequesterUID, bgApproverUID)
	if err := os.WriteFile(d.conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	d.setClock(t, now)
	return d
}

func (d *bgd) setClock(t *testing.T, at time.Time) {
	t.Helper()
	if err := os.WriteFile(d.clock, []byte(at.UTC().Format(time.RFC3339)), 0o600); err != nil {
		t.Fatal(err)
	}
}

// start runs keywardd until it answers, or returns its exit status when it
// exits first.
func (d *bgd) start(t *testing.T) (int, string) {
	t.Helper()
	tb, err := testClockBin()
	if err != nil {
		t.Fatal(err)
	}
	d.cmd = exec.Command(tb, "--config", d.conf)
	d.cmd.Env = append(os.Environ(), "KEYWARD_TEST_BREAKGLASS_CLOCK="+d.clock)
	d.log = &testutil.SyncBuffer{}
	d.cmd.Stderr = d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- d.cmd.Wait() }()
	cmd := d.cmd
	t.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); <-exited })
	deadline := time.Now().Add(30 * time.Second) // ends a hang only
	for !answers(d.sock) {
		select {
		case err := <-exited:
			exited <- err
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				return ee.ExitCode(), d.log.String()
			}
			t.Fatalf("keywardd: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("keywardd did not come up:\n%s", d.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	d.stop = func() { cmd.Process.Signal(syscall.SIGTERM); err := <-exited; exited <- err }
	return 0, ""
}

// kwAs runs keyward as uid against the daemon: exit status and stdout.
func (d *bgd) kwAs(t *testing.T, uid uint32, stdin []byte, args ...string) (int, string, string) {
	t.Helper()
	kb, err := keywardBin()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(kb, append([]string{"--socket", d.sock}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: bgGID}}
	cmd.Dir = "/"
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), out.String(), errb.String()
	} else if err != nil {
		t.Fatal(err)
	}
	return 0, out.String(), errb.String()
}

// TestBreakglassDevice: on each device backend, through the real keywardd:
// self-approval refused; the call allowed only while the grant is active;
// the grant survives a restart; expiry by the (file) clock and revocation
// take effect on the next call; the audit log carries the grant's id.
func TestBreakglassDevice(t *testing.T) {
	for _, b := range bgBackends(t) {
		t.Run(b.name, func(t *testing.T) {
			now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
			d := newBGD(t, b.config(t), now)
			if code, log := d.start(t); code != 0 {
				t.Fatalf("keywardd exited %d:\n%s", code, log)
			}
			c := dial(t, d.sock)
			ctx := context.Background()
			key := uniqueKey(t) // the token is the test binary's: other runs' keys are there
			if _, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: key, KeyType: "aes-256-gcm"}); err != nil {
				t.Fatal(err)
			}
			w, err := c.Wrap(ctx, &pb.WrapRequest{Key: key, Plaintext: []byte("db password")})
			if err != nil {
				t.Fatal(err)
			}
			blob := []byte(base64.StdEncoding.EncodeToString(w.Ciphertext) + "\n")
			unwrap := func() int { code, _, _ := d.kwAs(t, bgRequesterUID, blob, "unwrap"); return code }
			code, out, stderr := d.kwAs(t, bgRequesterUID, nil, "breakglass", "request", "--policy", "db-emergency", "--key", key,
				"--op", "unwrap", "--for", "30m", "--reason", "INC-9")
			id := strings.TrimSpace(out)
			if code != 0 || len(id) != 32 {
				t.Fatalf("request: %d %q %s", code, out, stderr)
			}
			if code, _, _ := d.kwAs(t, bgRequesterUID, nil, "breakglass", "approve", id); code != 3 {
				t.Errorf("self-approval: exit %d, want 3", code)
			}
			if unwrap() != 3 {
				t.Error("unwrap allowed while pending")
			}
			if code, _, stderr := d.kwAs(t, bgApproverUID, nil, "breakglass", "approve", id); code != 0 {
				t.Fatalf("approve: %d %s", code, stderr)
			}
			if unwrap() != 0 {
				t.Fatal("unwrap refused while active")
			}
			d.stop()
			if code, log := d.start(t); code != 0 {
				t.Fatalf("restart: keywardd exited %d:\n%s", code, log)
			}
			if unwrap() != 0 {
				t.Error("the grant did not survive the restart")
			}
			d.setClock(t, now.Add(31*time.Minute))
			if unwrap() != 3 {
				t.Error("unwrap allowed after the grant expired")
			}
			_, out, _ = d.kwAs(t, bgRequesterUID, nil, "breakglass", "request", "--policy", "db-emergency", "--key", key,
				"--op", "unwrap", "--for", "10m", "--reason", "INC-10")
			id2 := strings.TrimSpace(out)
			d.kwAs(t, bgApproverUID, nil, "breakglass", "approve", id2)
			if unwrap() != 0 {
				t.Fatal("unwrap refused under the second grant")
			}
			if code, _, _ := d.kwAs(t, bgApproverUID, nil, "breakglass", "revoke", id2); code != 0 {
				t.Fatal("revoke failed")
			}
			if unwrap() != 3 {
				t.Error("unwrap allowed after revocation")
			}
			d.stop()
			recs, err := audit.ReadRecords(d.audit)
			if err != nil {
				t.Fatal(err)
			}
			uses := map[string]int{}
			for _, r := range recs {
				if r.Op == "unwrap" && r.Result == "OK" {
					uses[r.Grant]++
				}
			}
			if uses[id] != 2 || uses[id2] != 1 || len(uses) != 2 {
				t.Errorf("unwraps recorded by grant: %v, want 2 under %s and 1 under %s", uses, id, id2)
			}
			undo := b.tamper(t, id)
			defer undo()
			// Refused when the backend opens (a TPM checks its grant files
			// then) or when break-glass reads the store (the ERROR line with
			// its MESSAGE_ID): either way exit 5, naming the grant.
			if code, log := d.start(t); code != exitIntegrity || !strings.Contains(log, "grant") {
				t.Errorf("start on a tampered grant store: exit %d, want %d:\n%s", code, exitIntegrity, log)
			}
		})
	}
}

// bgBackend is a device backend for the break-glass tests; tamper alters
// a stored grant record behind keywardd's back and returns what undoes it.
type bgBackend struct {
	name   string
	config func(t *testing.T) string
	tamper func(t *testing.T, id string) func()
}

func bgBackends(t *testing.T) []bgBackend {
	var state string
	return []bgBackend{
		{name: "pkcs11", config: func(t *testing.T) string {
			softhsmtest.Need(t, tok)
			return fmt.Sprintf("[backend]\nmodule = %q\ntoken = %q\npin_file = %q\n", tok.Module, tok.Label, tok.PINFile)
		}, tamper: tamperToken},
		{name: "tpm", config: func(t *testing.T) string {
			sw := swtpmtest.Start(t)
			dir := t.TempDir()
			state = filepath.Join(dir, "state")
			return fmt.Sprintf("[backend]\nkind = \"tpm\"\ndevice = %q\nstate_dir = %q\npin_file = %q\n", sw.Device(), state,
				writeSecret(t, dir, "auth", testAuth))
		}, tamper: func(t *testing.T, id string) func() {
			tamperFiles(t, state, id)
			return func() {}
		}},
	}
}

// TestBreakglassSharedToken: two keywardd on one token. A request made
// through one is approved through the other; the first honours the
// approval, and the second a revocation made through the first, each
// within the view's age (waited for, bounded only to end a hang). An
// approval and a revocation racing through the two daemons end revoked
// on both, whichever stored first (a request revoked before its approval
// is withdrawn: its record is removed, and the approval finds none).
func TestBreakglassSharedToken(t *testing.T) {
	softhsmtest.Need(t, tok)
	backend := fmt.Sprintf("[backend]\nmodule = %q\ntoken = %q\npin_file = %q\n", tok.Module, tok.Label, tok.PINFile)
	now := time.Now().UTC().Truncate(time.Second)
	a, b := newBGD(t, backend, now), newBGD(t, backend, now)
	for _, d := range []*bgd{a, b} {
		if code, log := d.start(t); code != 0 {
			t.Fatalf("keywardd exited %d:\n%s", code, log)
		}
	}
	ctx := context.Background()
	c := dial(t, a.sock)
	key := uniqueKey(t)
	if _, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: key, KeyType: "aes-256-gcm"}); err != nil {
		t.Fatal(err)
	}
	w, err := c.Wrap(ctx, &pb.WrapRequest{Key: key, Plaintext: []byte("shared secret")})
	if err != nil {
		t.Fatal(err)
	}
	blob := []byte(base64.StdEncoding.EncodeToString(w.Ciphertext) + "\n")
	unwrapOn := func(d *bgd) int { code, _, _ := d.kwAs(t, bgRequesterUID, blob, "unwrap"); return code }
	id := bgRequestOn(t, a, key, "INC-11")
	if code, _, stderr := b.kwAs(t, bgApproverUID, nil, "breakglass", "approve", id); code != 0 {
		t.Fatalf("approve through the other daemon: %d %s", code, stderr)
	}
	waitUntil(t, "daemon a to honour b's approval", func() bool { return unwrapOn(a) == 0 })
	if code, _, _ := a.kwAs(t, bgRequesterUID, nil, "breakglass", "revoke", id); code != 0 {
		t.Fatal("revoke failed")
	}
	waitUntil(t, "daemon b to honour a's revocation", func() bool { return unwrapOn(b) == 3 })

	id2 := bgRequestOn(t, a, key, "INC-12")
	done := make(chan int, 1)
	go func() { code, _, _ := a.kwAs(t, bgApproverUID, nil, "breakglass", "approve", id2); done <- code }()
	code, _, stderr := b.kwAs(t, bgRequesterUID, nil, "breakglass", "revoke", id2)
	approved := <-done
	if code != 0 || approved != 0 && approved != 2 && approved != 3 {
		t.Fatalf("racing approve (exit %d) and revoke (exit %d, %s)", approved, code, stderr)
	}
	for _, d := range []*bgd{a, b} {
		_, out, _ := d.kwAs(t, bgRequesterUID, nil, "breakglass", "list")
		if approved == 0 && !strings.Contains(out, id2+"  revoked") || approved != 0 && strings.Contains(out, id2) {
			t.Errorf("%s after the race (approve exit %d):\n%s", d.sock, approved, out)
		}
	}
}

func bgRequestOn(t *testing.T, d *bgd, key, reason string) string {
	t.Helper()
	code, out, stderr := d.kwAs(t, bgRequesterUID, nil, "breakglass", "request", "--policy", "db-emergency", "--key", key,
		"--op", "unwrap", "--for", "10m", "--reason", reason)
	if code != 0 {
		t.Fatalf("request: %d %s", code, stderr)
	}
	return strings.TrimSpace(out)
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second) // ends a hang only
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited 30s for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// uniqueKey is a key name under db/ no other run on the shared token uses.
func uniqueKey(t *testing.T) string {
	b := make([]byte, 6)
	rand.Read(b)
	return fmt.Sprintf("db/bg-%x", b)
}
