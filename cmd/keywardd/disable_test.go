package main

import (
	"context"
	"fmt"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	pb "github.com/keyward/keyward/api/keyward/v1"
	softhsmtest "github.com/keyward/keyward/softhsm-test"
	"github.com/keyward/keyward/tpm/swtpmtest"
)

// disableResults counts the results of the scheduler's key.disable
// records for key, and the versions its OK records name.
func disableResults(t *testing.T, path, key string) (map[string]int, []uint32) {
	t.Helper()
	out, versions := map[string]int{}, []uint32(nil)
	for _, r := range schedulerRecords(t, path, key, "key.disable") {
		out[r.Result]++
		if r.Result == "OK" {
			versions = append(versions, r.Version)
		}
	}
	return out, versions
}

// setUpDisableDue creates keys with two versions through a daemon on
// backend (whose scheduler never finds v1 due), gives them a disable-after
// delay and stops the daemon; it returns when every key's v1 is due.
func setUpDisableDue(t *testing.T, backend string, after time.Duration, names ...string) time.Time {
	t.Helper()
	d := startScheduled(t, t.TempDir(), backend, time.Now())
	ctx := context.Background()
	var due time.Time
	for _, key := range names {
		if _, err := d.c.CreateKey(ctx, &pb.CreateKeyRequest{Key: key, KeyType: "aes-256-gcm"}); err != nil {
			t.Fatal(err)
		}
		if _, err := d.c.RotateKey(ctx, &pb.RotateKeyRequest{Key: key}); err != nil {
			t.Fatal(err)
		}
		ki, err := d.c.SetDisableAfter(ctx, &pb.SetDisableAfterRequest{Key: key, DisableAfterSeconds: uint64(after / time.Second)})
		if err != nil {
			t.Fatal(err)
		}
		if n := ki.GetNextDisable().AsTime(); n.After(due) {
			due = n
		}
	}
	d.waitChecks(t, 1)
	if v := d.metric(t, fmt.Sprintf("keyward_key_next_disable_timestamp_seconds{key=%q}", names[len(names)-1])); v <= 0 || v > float64(due.Unix()) {
		t.Fatalf("next disable metric %v, want at most %d", v, due.Unix())
	}
	d.cmd.Process.Signal(syscall.SIGTERM) // and wait: the next daemon takes the TPM's state directory
	d.cmd.Wait()
	return due
}

// waitDisabled waits until the daemons have counted n scheduled disables.
func waitDisabled(t *testing.T, n int, ds ...*scheduledDaemon) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second) // ends a hang only
	for {
		got := 0.0
		for _, d := range ds {
			// Absent (-1) until the daemon has disabled one: the other may
			// have made every change.
			got += max(0, d.metric(t, `keyward_scheduled_disables_total{result="disabled"}`))
		}
		if got >= float64(n) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v of %d keys' versions disabled in 30s", got, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestScheduledDisableShared: two keywardd on one SoftHSM2 token, started
// together, their schedulers' clocks at the moment 12 keys' v1 is due to
// be disabled (30 days after v2), both checking every second: each v1 is
// disabled exactly once, by one of them, audited as the scheduler; v2, the
// newest, stays enabled however long both keep checking.
func TestScheduledDisableShared(t *testing.T) {
	softhsmtest.Need(t, tok)
	backend := fmt.Sprintf("[backend]\nmodule = %q\ntoken = %q\npin_file = %q\n", tok.Module, tok.Label, tok.PINFile)
	const after = 30 * 24 * time.Hour
	var names []string
	for i := range 12 {
		names = append(names, fmt.Sprintf("sched/disable-shared-%d", i))
	}
	due := setUpDisableDue(t, backend, after, names...)
	ds := startScheduledN(t, backend, due, t.TempDir(), t.TempDir())
	a, b := ds[0], ds[1]
	waitDisabled(t, len(names), a, b)
	a.waitChecks(t, 2)
	b.waitChecks(t, 2)
	if n := a.metric(t, `keyward_scheduled_disables_total{result="disabled"}`) + b.metric(t, `keyward_scheduled_disables_total{result="disabled"}`); n != float64(len(names)) {
		t.Errorf("%v scheduled disables counted, want %d", n, len(names))
	}
	t.Logf("disables by a: %v (not due %v), by b: %v (not due %v)",
		a.metric(t, `keyward_scheduled_disables_total{result="disabled"}`), a.metric(t, `keyward_scheduled_disables_total{result="not_due"}`),
		b.metric(t, `keyward_scheduled_disables_total{result="disabled"}`), b.metric(t, `keyward_scheduled_disables_total{result="not_due"}`))
	for _, key := range names {
		ki, err := b.c.DescribeKey(context.Background(), &pb.DescribeKeyRequest{Key: key})
		if err != nil || len(ki.GetVersions()) != 2 || ki.GetVersions()[0].GetState() != pb.VersionState_DISABLED ||
			ki.GetVersions()[1].GetState() != pb.VersionState_ENABLED || ki.GetNextDisable() != nil {
			t.Fatalf("%s after both daemons checked twice more: %v %v, want v1 disabled, v2 enabled", key, ki, err)
		}
		for _, d := range ds {
			if v := d.metric(t, fmt.Sprintf("keyward_key_next_disable_timestamp_seconds{key=%q}", key)); v != -1 {
				t.Errorf("%s: %s: next disable %v, want none pending", d.sock, key, v)
			}
		}
		ra, va := disableResults(t, a.audit, key)
		rb, vb := disableResults(t, b.audit, key)
		if ra["OK"]+rb["OK"] != 1 || len(va)+len(vb) != 1 || append(va, vb...)[0] != 1 ||
			ra["STARTED"]+rb["STARTED"] != ra["OK"]+rb["OK"]+ra["NOT_DUE"]+rb["NOT_DUE"] {
			t.Errorf("%s: audited a %v %v b %v %v; want one OK for v1 in all, each outcome after a STARTED", key, ra, va, rb, vb)
		}
	}
}

// TestScheduledDisableTPM: the same on a TPM (swtpm): a due version is
// disabled once by keywardd's scheduler, and the delay survives restarts.
func TestScheduledDisableTPM(t *testing.T) {
	sw := swtpmtest.Start(t)
	dir := t.TempDir()
	backend := fmt.Sprintf("[backend]\nkind = \"tpm\"\ndevice = %q\nstate_dir = %q\npin_file = %q\n",
		sw.Device(), filepath.Join(dir, "state"), writeSecret(t, dir, "auth", testAuth))
	const key, after = "sched/disable-tpm", 7 * 24 * time.Hour
	due := setUpDisableDue(t, backend, after, key)
	d := startScheduled(t, t.TempDir(), backend, due)
	waitDisabled(t, 1, d)
	d.waitChecks(t, 2)
	ki, err := d.c.DescribeKey(context.Background(), &pb.DescribeKeyRequest{Key: key})
	if err != nil || ki.GetVersions()[0].GetState() != pb.VersionState_DISABLED || ki.GetVersions()[1].GetState() != pb.VersionState_ENABLED ||
		ki.GetDisableAfterSeconds() != uint64(after/time.Second) {
		t.Fatalf("after the disable and two more checks: %v %v, want v1 disabled, v2 enabled, delay kept", ki, err)
	}
	if r, v := disableResults(t, d.audit, key); r["OK"] != 1 || r["STARTED"] != 1 || len(r) != 2 || v[0] != 1 {
		t.Fatalf("scheduler's audit records: %v %v, want one STARTED and one OK for v1", r, v)
	}
}
