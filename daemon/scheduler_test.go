package daemon_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/daemon"
	"github.com/keyward/keyward/policy"
)

// fakeClock is a clock the test moves by hand.
type fakeClock struct{ at atomic.Pointer[time.Time] }

func (c *fakeClock) set(t time.Time) { c.at.Store(&t) }
func (c *fakeClock) now() time.Time  { return *c.at.Load() }

// metricValue returns the value of the series line (name and labels as
// written on the page), or -1 when the page has none.
func metricValue(page, series string) float64 {
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(page)
	if m == nil {
		return -1
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

// waitMetric scrapes until cond holds for the series' value (30 s ends a hang).
func waitMetric(t *testing.T, sock, series string, cond func(float64) bool) float64 {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		v := metricValue(scrape(t, sock), series)
		if cond(v) {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("metric %s = %v: condition not met in 30s", series, v)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type schedAuditLine struct {
	Peer struct {
		UID  uint32 `json:"uid"`
		Unit string `json:"unit"`
	} `json:"peer"`
	Op      string `json:"op"`
	Key     string `json:"key"`
	Version uint32 `json:"version"`
	Result  string `json:"result"`
	Reason  string `json:"reason"`
}

// schedulerRecords returns the audit records the scheduler wrote for key.
func schedulerRecords(t *testing.T, path, key string) []schedAuditLine {
	t.Helper()
	var out []schedAuditLine
	for _, a := range readAuditAs[schedAuditLine](t, path) {
		if a.Peer.Unit == daemon.SchedulerUnit && a.Key == key {
			out = append(out, a)
		}
	}
	return out
}

// TestScheduledRotation: a key with a rotation period is rotated by the
// daemon once its injected clock reaches the due time, exactly once,
// audited as the scheduler; the metrics give the next rotation; a period
// out of bounds is refused with a reason; setting one needs
// key.set-rotation.
func TestScheduledRotation(t *testing.T) {
	metricsSock := filepath.Join(t.TempDir(), "metrics.sock")
	clock := &fakeClock{}
	clock.set(time.Now())
	rules := []policy.Rule{
		{Name: "root", UIDs: []uint32{0}, Keys: []string{"**"}, Operations: append(append([]string{"key.set-rotation"}, allData...), allAdmin...)},
		{Name: "ops without set-rotation", UIDs: []uint32{opsUID}, Keys: []string{"**"}, Operations: allAdmin},
	}
	var auditPath string
	r := startOpts(t, rules, func(c *config.Config) {
		c.MetricsSocket = metricsSock
		c.RotationCheckInterval = config.Duration{Duration: time.Second}
		auditPath = c.AuditLog
	}, nil, func(o *daemon.Options) { o.SchedulerClock = clock.now })
	ctx := context.Background()
	c := dial(t, r.sock)
	const key = "sched/a"
	ki, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: key, KeyType: "aes-256-gcm"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: "sched/none", KeyType: "aes-256-gcm"}); err != nil {
		t.Fatal(err)
	}
	for _, secs := range []uint64{60, 3599, 3650*86400 + 1, 1 << 62} {
		if _, err := c.SetRotationPolicy(ctx, &pb.SetRotationPolicyRequest{Key: key, RotationPeriodSeconds: secs}); reason(err) != "InvalidArgument INVALID_REQUEST" {
			t.Errorf("period of %ds: %v, want INVALID_REQUEST", secs, err)
		}
	}
	const period = 90 * 24 * time.Hour
	ki, err = c.SetRotationPolicy(ctx, &pb.SetRotationPolicyRequest{Key: key, RotationPeriodSeconds: uint64(period / time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	v1 := ki.GetVersions()[0].GetCreated().AsTime()
	if ki.GetRotationPeriodSeconds() != uint64(period/time.Second) || !ki.GetNextRotation().AsTime().Equal(v1.Add(period)) {
		t.Fatalf("after SetRotationPolicy: %v", ki)
	}
	due := v1.Add(period)
	// Versions are created in whole seconds: let v2's be after v1's, or
	// v2 would be due at the same fake time.
	for !time.Now().UTC().Truncate(time.Second).After(v1) {
		time.Sleep(50 * time.Millisecond)
	}

	nextSeries := fmt.Sprintf(`keyward_key_next_rotation_timestamp_seconds{key=%q}`, key)
	overdueSeries := fmt.Sprintf(`keyward_key_rotation_overdue{key=%q}`, key)
	checks := func() float64 { return metricValue(scrape(t, metricsSock), "keyward_rotation_checks_total") }
	// A second before it is due: checked, not rotated.
	clock.set(due.Add(-time.Second))
	n := checks()
	waitMetric(t, metricsSock, "keyward_rotation_checks_total", func(v float64) bool { return v >= n+2 })
	page := scrape(t, metricsSock)
	if got := metricValue(page, nextSeries); got != float64(due.Unix()) || metricValue(page, overdueSeries) != 0 {
		t.Fatalf("before due: next %v overdue %v, want %d and 0", got, metricValue(page, overdueSeries), due.Unix())
	}
	if metricValue(page, `keyward_key_next_rotation_timestamp_seconds{key="sched/none"}`) != -1 {
		t.Error("a key without a period has a next rotation series")
	}
	if ki, _ := c.DescribeKey(ctx, &pb.DescribeKeyRequest{Key: key}); len(ki.GetVersions()) != 1 {
		t.Fatalf("rotated before due: %v", ki)
	}

	// Due: rotated once.
	clock.set(due)
	waitMetric(t, metricsSock, `keyward_scheduled_rotations_total{result="rotated"}`, func(v float64) bool { return v == 1 })
	n = checks()
	waitMetric(t, metricsSock, "keyward_rotation_checks_total", func(v float64) bool { return v >= n+2 })
	ki, err = c.DescribeKey(ctx, &pb.DescribeKeyRequest{Key: key})
	if err != nil || len(ki.GetVersions()) != 2 {
		t.Fatalf("after the due time and two more checks: %v %v, want 2 versions", ki, err)
	}
	v2 := ki.GetVersions()[1].GetCreated().AsTime()
	page = scrape(t, metricsSock)
	if metricValue(page, nextSeries) != float64(v2.Add(period).Unix()) || metricValue(page, overdueSeries) != 0 ||
		metricValue(page, `keyward_scheduled_rotations_total{result="rotated"}`) != 1 {
		t.Fatalf("after the rotation: %s", grepLines(page, "rotation"))
	}
	recs := schedulerRecords(t, auditPath, key)
	if len(recs) != 2 || recs[0].Result != daemon.ResultStarted || recs[1].Result != "OK" || recs[1].Version != 2 ||
		recs[1].Op != "key.rotate" || recs[1].Peer.UID != uint32(os.Getuid()) || !strings.Contains(recs[1].Reason, "every 90d") {
		t.Fatalf("scheduler's audit records: %+v; want STARTED, then OK v2 key.rotate", recs)
	}

	// Stopped: no series, never due.
	if ki, err = c.SetRotationPolicy(ctx, &pb.SetRotationPolicyRequest{Key: key}); err != nil || ki.GetNextRotation() != nil {
		t.Fatalf("period 0: %v %v", ki, err)
	}
	clock.set(due.Add(10 * period))
	n = checks()
	waitMetric(t, metricsSock, "keyward_rotation_checks_total", func(v float64) bool { return v >= n+2 })
	if v := metricValue(scrape(t, metricsSock), nextSeries); v != -1 {
		t.Errorf("a stopped schedule still has its series (%v)", v)
	}
	if ki, _ := c.DescribeKey(ctx, &pb.DescribeKeyRequest{Key: key}); len(ki.GetVersions()) != 2 {
		t.Fatalf("rotated with its period 0: %v", ki)
	}

	// key.set-rotation is an operation of its own.
	ops := as(t, r.sock, opsUID)
	if got := ops.do("set-rotation " + key + " 7776000"); got != "PermissionDenied PERMISSION_DENIED" {
		t.Errorf("ops without key.set-rotation: %q, want PERMISSION_DENIED", got)
	}
}
