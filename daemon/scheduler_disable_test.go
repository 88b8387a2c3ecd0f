package daemon_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/daemon"
	"github.com/keyward/keyward/internal/testutil"
	"github.com/keyward/keyward/policy"
)

// TestScheduledDisable: with a disable-after delay, the daemon disables a
// superseded version once its injected clock reaches the next newer
// version's creation plus the delay, exactly once, audited as the
// scheduler (key.disable, one OK record per version); it never disables
// the newest enabled version; the metrics give the next disable; a delay
// out of bounds is refused with a reason; setting one needs
// key.set-disable-after, which no other admin operation implies.
func TestScheduledDisable(t *testing.T) {
	metricsSock := filepath.Join(t.TempDir(), "metrics.sock")
	clock := &fakeClock{}
	clock.set(time.Now())
	rules := []policy.Rule{
		{Name: "root", UIDs: []uint32{0}, Keys: []string{"**"}, Operations: append(append([]string{"key.set-disable-after"}, allData...), allAdmin...)},
		{Name: "ops without set-disable-after", UIDs: []uint32{opsUID}, Keys: []string{"**"}, Operations: append([]string{"key.set-rotation"}, allAdmin...)},
	}
	var auditPath string
	var logs testutil.SyncBuffer
	r := startOpts(t, rules, func(c *config.Config) {
		c.MetricsSocket = metricsSock
		c.RotationCheckInterval = config.Duration{Duration: time.Second}
		auditPath = c.AuditLog
	}, &logs, func(o *daemon.Options) { o.SchedulerClock = clock.now })
	ctx := context.Background()
	c := dial(t, r.sock)
	const key = "sched/disable"
	if _, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: key, KeyType: "aes-256-gcm"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RotateKey(ctx, &pb.RotateKeyRequest{Key: key}); err != nil {
		t.Fatal(err)
	}
	for _, secs := range []uint64{1, 3600, 86399, 3650*86400 + 1, 1 << 62} {
		if _, err := c.SetDisableAfter(ctx, &pb.SetDisableAfterRequest{Key: key, DisableAfterSeconds: secs}); reason(err) != "InvalidArgument INVALID_REQUEST" {
			t.Errorf("disable-after of %ds: %v, want INVALID_REQUEST", secs, err)
		}
	}
	const after = 30 * 24 * time.Hour
	ki, err := c.SetDisableAfter(ctx, &pb.SetDisableAfterRequest{Key: key, DisableAfterSeconds: uint64(after / time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	due := ki.GetVersions()[1].GetCreated().AsTime().Add(after)
	if ki.GetDisableAfterSeconds() != uint64(after/time.Second) || !ki.GetNextDisable().AsTime().Equal(due) {
		t.Fatalf("after SetDisableAfter: %v; want next disable at v2's creation + 30d", ki)
	}

	nextSeries := fmt.Sprintf(`keyward_key_next_disable_timestamp_seconds{key=%q}`, key)
	disabledSeries := `keyward_scheduled_disables_total{result="disabled"}`
	twoChecks := func() {
		n := metricValue(scrape(t, metricsSock), "keyward_rotation_checks_total")
		waitMetric(t, metricsSock, "keyward_rotation_checks_total", func(v float64) bool { return v >= n+2 })
	}
	states := func() string {
		ki, err := c.DescribeKey(ctx, &pb.DescribeKeyRequest{Key: key})
		if err != nil {
			t.Fatal(err)
		}
		var s []string
		for _, v := range ki.GetVersions() {
			s = append(s, v.GetState().String())
		}
		return strings.Join(s, " ")
	}

	// A second before it is due: checked, nothing disabled.
	clock.set(due.Add(-time.Second))
	twoChecks()
	if page := scrape(t, metricsSock); metricValue(page, nextSeries) != float64(due.Unix()) || metricValue(page, disabledSeries) != 0 {
		t.Fatalf("before due: %s", grepLines(page, "disable"))
	}
	if got := states(); got != "ENABLED ENABLED" {
		t.Fatalf("before due: versions %s", got)
	}

	// Due: v1 disabled once; v2, the newest, never, however late.
	clock.set(due)
	waitMetric(t, metricsSock, disabledSeries, func(v float64) bool { return v == 1 })
	clock.set(due.Add(100 * after))
	twoChecks()
	if got := states(); got != "DISABLED ENABLED" {
		t.Fatalf("after the due time: versions %s, want v1 disabled and v2 enabled", got)
	}
	page := scrape(t, metricsSock)
	if metricValue(page, disabledSeries) != 1 || metricValue(page, nextSeries) != -1 {
		t.Fatalf("after the disable: %s", grepLines(page, "disable"))
	}
	recs := schedulerRecords(t, auditPath, key)
	if len(recs) != 2 || recs[0].Result != daemon.ResultStarted || recs[1].Result != "OK" || recs[1].Version != 1 ||
		recs[1].Op != "key.disable" || recs[1].Peer.UID != uint32(os.Getuid()) || !strings.Contains(recs[1].Reason, "30d") {
		t.Fatalf("scheduler's audit records: %+v; want STARTED, then OK v1 key.disable", recs)
	}
	if line := grepLines(logs.String(), "scheduled disable"); !strings.Contains(line, "key="+key) || !strings.Contains(line, "versions=[1]") || strings.Count(line, "\n") > 0 {
		t.Errorf("the daemon log's scheduled disable line: %q, want one naming the key and [1]", line)
	}

	// Stopped: a rotation makes v2 superseded, and nothing is due.
	if ki, err = c.SetDisableAfter(ctx, &pb.SetDisableAfterRequest{Key: key}); err != nil || ki.GetNextDisable() != nil || ki.GetDisableAfterSeconds() != 0 {
		t.Fatalf("disable-after 0: %v %v", ki, err)
	}
	if _, err := c.RotateKey(ctx, &pb.RotateKeyRequest{Key: key}); err != nil {
		t.Fatal(err)
	}
	clock.set(due.Add(1000 * after))
	twoChecks()
	if got := states(); got != "DISABLED ENABLED ENABLED" {
		t.Fatalf("disabled with its delay 0: versions %s", got)
	}

	// key.set-disable-after is an operation of its own: key.set-rotation
	// and every other admin operation do not imply it.
	ops := as(t, r.sock, opsUID)
	if got := ops.do("set-disable-after " + key + " 2592000"); got != "PermissionDenied PERMISSION_DENIED" {
		t.Errorf("ops without key.set-disable-after: %q, want PERMISSION_DENIED", got)
	}
}
