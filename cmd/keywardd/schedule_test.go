package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
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

// testClockBin is keywardd built with -tags keywardtest: its scheduled
// rotation reads a fixed time from KEYWARD_TEST_SCHEDULER_NOW
// (schedclock_keywardtest.go). No package ships that build.
var testClockBin = sync.OnceValues(func() (string, error) {
	p := filepath.Join(filepath.Dir(bin), "keywardd-testclock")
	out, err := exec.Command("go", "build", "-tags", "keywardtest", "-o", p, ".").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build keywardd -tags keywardtest: %v\n%s", err, out)
	}
	return p, nil
})

// scheduledDaemon is a keywardd whose scheduler's clock stands at now,
// checking every second, with its metrics on a socket in dir.
type scheduledDaemon struct {
	sock, metrics, audit string
	c                    pb.KeywardClient
	cmd                  *exec.Cmd
	stderr               *testutil.SyncBuffer // keywardd's log
}

func startScheduled(t *testing.T, dir, backend string, now time.Time) *scheduledDaemon {
	t.Helper()
	return startScheduledN(t, backend, now, dir)[0]
}

// startScheduledN starts one daemon per directory, all at once (each
// process started before any is waited for), so that their first checks
// come close together.
func startScheduledN(t *testing.T, backend string, now time.Time, dirs ...string) []*scheduledDaemon {
	t.Helper()
	tb, err := testClockBin()
	if err != nil {
		t.Fatal(err)
	}
	var ds []*scheduledDaemon
	var cmds []*exec.Cmd
	for _, dir := range dirs {
		d := &scheduledDaemon{sock: filepath.Join(dir, "k.sock"), metrics: filepath.Join(dir, "metrics.sock"), audit: filepath.Join(dir, "audit.log")}
		conf := filepath.Join(dir, "keyward.toml")
		body := fmt.Sprintf(`socket = %q
audit_log = %q
metrics_socket = %q
rotation_check_interval = "1s"
%s
[[rule]]
name = "root"
uids = [0]
keys = ["**"]
operations = ["key.create", "key.rotate", "key.read", "key.set-rotation", "key.set-disable-after"]
`, d.sock, d.audit, d.metrics, backend)
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(tb, "--config", conf)
		cmd.Env = append(os.Environ(), "KEYWARD_TEST_SCHEDULER_NOW="+now.UTC().Format(time.RFC3339))
		out, _ := cmd.StdoutPipe()
		d.stderr = &testutil.SyncBuffer{}
		cmd.Stderr = d.stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go io.Copy(io.Discard, out)
		t.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
		ds, cmds = append(ds, d), append(cmds, cmd)
	}
	for i, d := range ds {
		deadline := time.Now().Add(30 * time.Second)
		for !answers(d.sock) {
			if time.Now().After(deadline) {
				t.Fatalf("keywardd on %s did not come up:\n%s", d.sock, d.stderr.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
		d.c, d.cmd = dial(t, d.sock), cmds[i]
	}
	return ds
}

// metric scrapes the daemon's metrics page for one series (-1: absent).
func (d *scheduledDaemon) metric(t *testing.T, series string) float64 {
	t.Helper()
	hc := http.Client{Transport: &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", d.metrics)
	}}}
	resp, err := hc.Get("http://keyward/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	page, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindSubmatch(page)
	if m == nil {
		return -1
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}

// waitChecks waits until the daemon has made n more rotation checks.
func (d *scheduledDaemon) waitChecks(t *testing.T, n float64) {
	t.Helper()
	start := d.metric(t, "keyward_rotation_checks_total")
	deadline := time.Now().Add(30 * time.Second) // ends a hang only
	for d.metric(t, "keyward_rotation_checks_total") < start+n {
		if time.Now().After(deadline) {
			t.Fatalf("%s: fewer than %v rotation checks in 30s", d.sock, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// schedulerResults counts the results of the scheduler's outcome records.
func schedulerResults(t *testing.T, path, key string) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, r := range schedulerRecords(t, path, key, "key.rotate") {
		out[r.Result]++
	}
	return out
}

// schedRecord is what the tests read of a scheduler's audit record.
type schedRecord struct {
	Peer    struct{ Unit string } `json:"peer"`
	Op      string                `json:"op"`
	Key     string                `json:"key"`
	Version uint32                `json:"version"`
	Result  string                `json:"result"`
}

// schedulerRecords are the scheduler's records of op on key in the audit
// log at path.
func schedulerRecords(t *testing.T, path, key, op string) []schedRecord {
	t.Helper()
	lines, err := audit.FileLines(path) // complete records: never the free space
	if err != nil {
		t.Fatal(err)
	}
	var out []schedRecord
	for _, line := range lines {
		var r schedRecord
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatal(err)
		}
		if r.Peer.Unit == "scheduler" && r.Key == key && r.Op == op {
			out = append(out, r)
		}
	}
	return out
}

// setUpDueKeys creates keys through a daemon on backend (whose scheduler
// never finds them due), gives them a rotation period and stops the
// daemon; it returns when the keys are due, once the second of the last
// v1 has passed (creation times are whole seconds: a v2 made in v1's
// second would be due at that same time again).
func setUpDueKeys(t *testing.T, backend string, period time.Duration, names ...string) time.Time {
	t.Helper()
	d := startScheduled(t, t.TempDir(), backend, time.Now())
	ctx := context.Background()
	var due, last time.Time
	for _, key := range names {
		if _, err := d.c.CreateKey(ctx, &pb.CreateKeyRequest{Key: key, KeyType: "aes-256-gcm"}); err != nil {
			t.Fatal(err)
		}
		ki, err := d.c.SetRotationPolicy(ctx, &pb.SetRotationPolicyRequest{Key: key, RotationPeriodSeconds: uint64(period / time.Second)})
		if err != nil {
			t.Fatal(err)
		}
		if n := ki.GetNextRotation().AsTime(); n.After(due) {
			due, last = n, ki.GetVersions()[0].GetCreated().AsTime()
		}
	}
	d.waitChecks(t, 1)
	if v := d.metric(t, fmt.Sprintf("keyward_key_next_rotation_timestamp_seconds{key=%q}", names[len(names)-1])); v != float64(due.Unix()) {
		t.Fatalf("next rotation metric %v, want %d", v, due.Unix())
	}
	d.cmd.Process.Signal(syscall.SIGTERM) // and wait: the next daemon takes the TPM's state directory
	d.cmd.Wait()
	for !time.Now().UTC().Truncate(time.Second).After(last) {
		time.Sleep(50 * time.Millisecond)
	}
	return due
}

// TestScheduledRotationShared: two keywardd on one SoftHSM2 token,
// started together, their schedulers' clocks at the moment 16 keys are
// due, both checking every second: each key is rotated exactly once, by
// one of them, which audits it as the scheduler (the other finds it not
// due, or never sees it due); both then give the new version's next
// rotation.
func TestScheduledRotationShared(t *testing.T) {
	softhsmtest.Need(t, tok)
	backend := fmt.Sprintf("[backend]\nmodule = %q\ntoken = %q\npin_file = %q\n", tok.Module, tok.Label, tok.PINFile)
	const period = 90 * 24 * time.Hour
	var names []string
	for i := range 16 {
		names = append(names, fmt.Sprintf("sched/shared-%d", i))
	}
	due := setUpDueKeys(t, backend, period, names...)
	ds := startScheduledN(t, backend, due, t.TempDir(), t.TempDir())
	a, b := ds[0], ds[1]
	// Wait for the rotations, then for two more checks of each daemon.
	deadline := time.Now().Add(30 * time.Second)
	// A series is absent (-1) until its daemon has counted one: the
	// other daemon may have made every rotation.
	rotatedBy := func(d *scheduledDaemon) float64 {
		return max(0, d.metric(t, `keyward_scheduled_rotations_total{result="rotated"}`))
	}
	for rotatedBy(a)+rotatedBy(b) < float64(len(names)) {
		if time.Now().After(deadline) {
			t.Fatal("not all rotated in 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	a.waitChecks(t, 2)
	b.waitChecks(t, 2)
	rotated := 0.0
	for _, d := range ds {
		rotated += rotatedBy(d)
	}
	if rotated != float64(len(names)) {
		t.Errorf("%v scheduled rotations counted, want %d", rotated, len(names))
	}
	for _, key := range names {
		ki, err := b.c.DescribeKey(context.Background(), &pb.DescribeKeyRequest{Key: key})
		if err != nil || len(ki.GetVersions()) != 2 {
			t.Fatalf("%s after both daemons checked twice more: %v %v, want exactly 2 versions", key, ki, err)
		}
		next := float64(ki.GetNextRotation().AsTime().Unix())
		for _, d := range ds {
			if v := d.metric(t, fmt.Sprintf("keyward_key_next_rotation_timestamp_seconds{key=%q}", key)); v != next {
				t.Errorf("%s: %s: next rotation %v, want v2's %v", d.sock, key, v, next)
			}
			if v := d.metric(t, fmt.Sprintf("keyward_key_rotation_overdue{key=%q}", key)); v != 0 {
				t.Errorf("%s: %s: overdue %v", d.sock, key, v)
			}
		}
		ra, rb := schedulerResults(t, a.audit, key), schedulerResults(t, b.audit, key)
		t.Logf("%s: daemon a's scheduler records: %v, b's: %v", key, ra, rb)
		if ra["OK"]+rb["OK"] != 1 || ra["STARTED"]+rb["STARTED"] != ra["OK"]+rb["OK"]+ra["NOT_DUE"]+rb["NOT_DUE"] {
			t.Errorf("%s: audited a %v b %v; want one OK in all, each outcome after a STARTED", key, ra, rb)
		}
	}
}

// TestScheduledRotationTPM: the same on a TPM (swtpm): a due key is
// rotated once by keywardd's scheduler.
func TestScheduledRotationTPM(t *testing.T) {
	sw := swtpmtest.Start(t)
	dir := t.TempDir()
	backend := fmt.Sprintf("[backend]\nkind = \"tpm\"\ndevice = %q\nstate_dir = %q\npin_file = %q\n",
		sw.Device(), filepath.Join(dir, "state"), writeSecret(t, dir, "auth", testAuth))
	const key, period = "sched/tpm", 30 * 24 * time.Hour
	due := setUpDueKeys(t, backend, period, key)
	d := startScheduled(t, t.TempDir(), backend, due)
	deadline := time.Now().Add(30 * time.Second)
	for d.metric(t, `keyward_scheduled_rotations_total{result="rotated"}`) < 1 {
		if time.Now().After(deadline) {
			t.Fatal("not rotated in 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	d.waitChecks(t, 2)
	ki, err := d.c.DescribeKey(context.Background(), &pb.DescribeKeyRequest{Key: key})
	if err != nil || len(ki.GetVersions()) != 2 || ki.GetRotationPeriodSeconds() != uint64(period/time.Second) {
		t.Fatalf("after the rotation and two more checks: %v %v, want 2 versions, period kept", ki, err)
	}
	if r := schedulerResults(t, d.audit, key); r["OK"] != 1 || r["STARTED"] != 1 || len(r) != 2 {
		t.Fatalf("scheduler's audit records: %v, want one STARTED and one OK", r)
	}
}
