package accessreview

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keyward/keyward/audit"
	"github.com/keyward/keyward/policy"
)

// fakeUsers is a user database for tests: the review's attribution
// depends on group membership, which the host's database would make vary.
type fakeUsers map[uint32]struct {
	name   string
	groups []uint32
}

func (f fakeUsers) Name(uid uint32) (string, bool) { u, ok := f[uid]; return u.name, ok }
func (f fakeUsers) Groups(uid uint32) []uint32     { return f[uid].groups }

var testUsers = fakeUsers{
	1000: {"alice", []uint32{1000}},
	1001: {"bob", []uint32{1001}},
	1002: {"carol", []uint32{1002, 990}}, // 990 as a supplementary group
}

var t0 = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)

// genRecords makes n records (genRecord).
func genRecords(n int) []audit.Record {
	out := make([]audit.Record, n)
	for i := range out {
		out[i] = genRecord(i)
	}
	return out
}

var (
	genPeers = []audit.Peer{{UID: 1000, GID: 1000}, {UID: 1001, GID: 1001}, {UID: 1002, GID: 1002},
		{UID: 0, GID: 0, Unit: "web.service"}, {UID: 1000, GID: 1000, Unit: "batch.service"}}
	genKeys    = []string{"app/db", "app/api", "ops/signer"}
	genOps     = []string{"wrap", "unwrap", "sign", "key.read"}
	genResults = []string{"OK", "OK", "OK", "PERMISSION_DENIED", "OK", "KEY_NOT_FOUND", "INVALID", "DECRYPTION_FAILED", "STARTED", "OK", "RATE_LIMITED"}
)

// genRecord is record i of a log from a few callers, keys and operations
// with every kind of result, and a refusal summary (as keywardd writes
// them) every 97 records, timed one second apart from t0.
func genRecord(i int) audit.Record {
	p := genPeers[i%len(genPeers)]
	tm := t0.Add(time.Duration(i) * time.Second)
	switch {
	case i%97 == 96:
		reason := fmt.Sprintf("count=%d ops=unwrap:%d,wrap:%d first=%s last=%s", 3+i%5, 1+i%5, 2,
			tm.Add(-time.Minute).Format(time.RFC3339Nano), tm.Add(-time.Second).Format(time.RFC3339Nano))
		return audit.Record{Time: tm, Peer: p, Op: "refused", Result: "RATE_LIMITED", Reason: reason}
	case i%389 == 388:
		reason := fmt.Sprintf("callers=3 (more than audit_refusal_max_records or 10000 callers in one interval) count=4 ops=sign:4 first=%s last=%s",
			tm.Format(time.RFC3339Nano), tm.Format(time.RFC3339Nano))
		return audit.Record{Time: tm, Op: "refused", Result: "MIXED", Reason: reason}
	}
	return audit.Record{Time: tm, Peer: p, Op: genOps[(i/3)%len(genOps)], Key: genKeys[(i/7)%len(genKeys)],
		Result: genResults[(i/2)%len(genResults)], RequestID: strconv.Itoa(i)}
}

// writeLog writes recs through the audit package's writer into a fresh
// directory, rotating at maxFile bytes, and returns the chain's files.
func writeLog(t testing.TB, recs []audit.Record, maxFile int64) []string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := audit.Open(path, audit.Options{MaxFileSize: maxFile, Sync: audit.SyncWrite})
	if err != nil {
		t.Fatal(err)
	}
	for len(recs) > 0 {
		n := min(len(recs), 50) // the writer rotates between batches
		if err := l.AppendAll(context.Background(), recs[:n]); err != nil {
			t.Fatal(err)
		}
		recs = recs[n:]
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	files, _, err := audit.Chain(path)
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// handRow is a row as the test counts it, from the files' bytes.
type handRow struct{ allowed, denied, failed uint64 }

type handKey struct {
	uid           uint32
	folded        bool
	unit, key, op string
}

var summaryRE = regexp.MustCompile(`(?:^|\s)count=(\d+) ops=(\S+) first=\S+ last=\S+$`)

// handCount decodes every record of files with encoding/json, apart from
// the package under test, and counts them as the review's doc says.
func handCount(t *testing.T, files []string, since time.Time) map[handKey]handRow {
	t.Helper()
	out := map[handKey]handRow{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		b = bytes.TrimRight(b, "\x00")
		for _, line := range bytes.Split(b, []byte("\n")) {
			if len(line) == 0 {
				continue
			}
			var r struct {
				Time string
				Peer struct {
					UID  uint32
					Unit string
				}
				Op, Key, Result, Reason string
			}
			if err := json.Unmarshal(line, &r); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			tm, _ := time.Parse(time.RFC3339Nano, r.Time)
			if tm.Before(since) || r.Result == "STARTED" || r.Op == "audit.checkpoint" {
				continue
			}
			k := handKey{uid: r.Peer.UID, unit: r.Peer.Unit, key: r.Key, op: r.Op}
			if r.Op == "refused" {
				if r.Result == "MIXED" {
					k = handKey{folded: true}
				}
				m := summaryRE.FindStringSubmatch(r.Reason)
				if m == nil {
					t.Fatalf("summary %q", r.Reason)
				}
				for _, item := range strings.Split(m[2], ",") {
					op, num, _ := strings.Cut(item, ":")
					n, _ := strconv.ParseUint(num, 10, 64)
					k.op = op
					c := out[k]
					c.denied += n
					out[k] = c
				}
				continue
			}
			c := out[k]
			switch r.Result {
			case "OK", "INVALID":
				c.allowed++
			case "PERMISSION_DENIED", "RATE_LIMITED", "TOO_MANY_REQUESTS":
				c.denied++
			default:
				c.failed++
			}
			out[k] = c
		}
	}
	return out
}

func rowsAsHand(rows []Row) map[handKey]handRow {
	out := map[handKey]handRow{}
	for _, r := range rows {
		out[handKey{uid: r.UID, folded: r.Folded, unit: r.Unit, key: r.Key, op: r.Op}] = handRow{r.Allowed, r.Denied, r.Failed}
	}
	return out
}

func checkCounts(t *testing.T, got []Row, want map[handKey]handRow) {
	t.Helper()
	g := rowsAsHand(got)
	if len(g) != len(got) {
		t.Errorf("%d rows, %d distinct: a group is split", len(got), len(g))
	}
	if !maps.Equal(g, want) {
		for k, w := range want {
			if g[k] != w {
				t.Errorf("%+v: report %+v, hand count %+v", k, g[k], w)
			}
		}
		for k := range g {
			if _, ok := want[k]; !ok {
				t.Errorf("%+v: in the report, not in the hand count", k)
			}
		}
	}
}

// TestCountsEqualHandCount: over a rotated log with every kind of result
// and refusal summaries, the review's counts are those counted by hand
// from the files, its rows sorted by subject, key and operation, and the
// chain verified across every file.
func TestCountsEqualHandCount(t *testing.T) {
	files := writeLog(t, genRecords(3000), 64<<10)
	if len(files) < 4 {
		t.Fatalf("want a rotated log, got %d files", len(files))
	}
	rep, err := Run(Options{Files: files, Users: testUsers})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Chain.Records != 3000 || rep.Chain.Files != len(files) || rep.InWindow != 3000 || rep.UnreadSummaries != 0 {
		t.Fatalf("chain %+v, in window %d, unread %d", rep.Chain, rep.InWindow, rep.UnreadSummaries)
	}
	checkCounts(t, rep.Rows, handCount(t, files, time.Time{}))
	sorted := slices.IsSortedFunc(rep.Rows, func(a, b Row) int {
		return strings.Compare(fmt.Sprintf("%t %010d %s %s %s", a.Folded, a.UID, a.Unit, a.Key, a.Op),
			fmt.Sprintf("%t %010d %s %s %s", b.Folded, b.UID, b.Unit, b.Key, b.Op))
	})
	if !sorted {
		t.Error("rows not sorted by subject, key, operation")
	}
	for _, r := range rep.Rows {
		if want := testUsers[r.UID].name; !r.Folded && r.User != want {
			t.Errorf("uid %d named %q, want %q", r.UID, r.User, want)
		}
		if r.Last.IsZero() || r.Allowed > 0 && r.LastAllowed.IsZero() || r.Allowed == 0 && !r.LastAllowed.IsZero() {
			t.Errorf("row %+v: last times", r)
		}
	}
}

// TestSince: records before --since are verified (the whole chain) but not
// counted; last times fall in the window.
func TestSince(t *testing.T) {
	files := writeLog(t, genRecords(2000), 64<<10)
	since := t0.Add(1500 * time.Second)
	rep, err := Run(Options{Files: files, Users: testUsers, Since: since})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Chain.Records != 2000 || rep.InWindow != 500 {
		t.Fatalf("verified %d, in window %d; want 2000 and 500", rep.Chain.Records, rep.InWindow)
	}
	checkCounts(t, rep.Rows, handCount(t, files, since))
	for _, r := range rep.Rows {
		if r.Last.Before(since.Add(-time.Minute)) { // a summary's last refusal may precede its record
			t.Errorf("row %+v: last use before the window", r)
		}
	}
}

// TestUnusedRules: with the policy, every rule is listed with the allowed
// calls it may have allowed; a rule no allowed call matches, and one that
// an earlier rule always decides before it, are unused. A rule reached
// through a supplementary group is used.
func TestUnusedRules(t *testing.T) {
	pol, err := policy.Compile([]policy.Rule{
		{Name: "apps", UIDs: []uint32{1000, 1001}, Keys: []string{"app/*"}, Operations: []string{"wrap", "unwrap", "sign"}},
		{Name: "shadowed", UIDs: []uint32{1000}, Keys: []string{"app/db"}, Operations: []string{"unwrap"}},
		{Name: "ops", GIDs: []uint32{990}, Keys: []string{"**"}, Operations: []string{"key.read"}},
		{Name: "never", UIDs: []uint32{1003}, Keys: []string{"ops/**"}, Operations: []string{"sign"}},
		{Name: "web", Units: []string{"web.service"}, Keys: []string{"**"}, Operations: []string{"wrap", "unwrap", "sign", "key.read"}},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	recs := []audit.Record{
		{Time: t0, Peer: audit.Peer{UID: 1000, GID: 1000}, Op: "unwrap", Key: "app/db", Result: "OK"},
		{Time: t0.Add(time.Second), Peer: audit.Peer{UID: 1001, GID: 1001}, Op: "sign", Key: "app/api", Result: "INVALID"},
		{Time: t0.Add(2 * time.Second), Peer: audit.Peer{UID: 1002, GID: 1002}, Op: "key.read", Key: "ops/signer", Result: "OK"},
		// Denied and failed calls use nothing.
		{Time: t0.Add(3 * time.Second), Peer: audit.Peer{UID: 1003, GID: 1003}, Op: "sign", Key: "ops/signer", Result: "PERMISSION_DENIED"},
		{Time: t0.Add(4 * time.Second), Peer: audit.Peer{UID: 5, GID: 5, Unit: "web.service"}, Op: "wrap", Key: "x", Result: "KEY_NOT_FOUND"},
	}
	rep, err := Run(Options{Files: writeLog(t, recs, 0), Users: testUsers, Policy: pol})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]uint64{}
	for _, g := range rep.Grants {
		if g.Kind != "rule" {
			t.Errorf("grant %+v: kind", g)
		}
		got[g.Name] = g.Allowed
	}
	want := map[string]uint64{"apps": 2, "shadowed": 0, "ops": 1, "never": 0, "web": 0}
	if !maps.Equal(got, want) {
		t.Fatalf("allowed calls per rule %v, want %v", got, want)
	}
	if names := grantNames(rep.Grants); !slices.Equal(names, []string{"apps", "shadowed", "ops", "never", "web"}) {
		t.Errorf("grants in %v, want config order", names)
	}
	never := rep.Grants[3]
	if never.Used() || !slices.Equal(never.Subjects, []string{"uid 1003"}) || !slices.Equal(never.Keys, []string{"ops/**"}) ||
		!slices.Equal(never.Operations, []string{"sign"}) {
		t.Errorf("unused rule listed as %+v", never)
	}
	if apps := rep.Grants[0]; !apps.LastUse.Equal(t0.Add(time.Second)) || len(apps.Subjects) != 2 {
		t.Errorf("rule apps: %+v", apps)
	}
}

func grantNames(gs []Grant) []string {
	var out []string
	for _, g := range gs {
		out = append(out, g.Name)
	}
	return out
}

// TestBrokenChain: a byte changed mid-file, a rotated file removed, and a
// trail cut at its start are reported as the break (file, line, seq), with
// the records before it counted and none after.
func TestBrokenChain(t *testing.T) {
	recs := genRecords(1200)
	for _, tc := range []struct {
		name   string
		break_ func(t *testing.T, files []string) ([]string, string)
	}{
		{"byte edited mid-file", func(t *testing.T, files []string) ([]string, string) {
			f := files[1]
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			i := bytes.Index(b[len(b)/2:], []byte(`"request_id":"`)) + len(b)/2 + len(`"request_id":"`)
			b[i] = 'x' // a digit of a request id: still valid JSON, the hash no longer matches
			if err := os.WriteFile(f, b, 0o600); err != nil {
				t.Fatal(err)
			}
			return files, f
		}},
		{"rotated file removed", func(t *testing.T, files []string) ([]string, string) {
			if err := os.Remove(files[2]); err != nil {
				t.Fatal(err)
			}
			return slices.Delete(slices.Clone(files), 2, 3), files[3]
		}},
		{"oldest file removed", func(t *testing.T, files []string) ([]string, string) {
			if err := os.Remove(files[0]); err != nil {
				t.Fatal(err)
			}
			return files[1:], files[1]
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files, brokenFile := tc.break_(t, writeLog(t, recs, 64<<10))
			rep, err := Run(Options{Files: files, Users: testUsers})
			var brk *audit.Break
			if !errors.As(err, &brk) || !errors.Is(err, audit.ErrBroken) || rep == nil {
				t.Fatalf("Run: %v, want the break", err)
			}
			if brk.File != brokenFile || brk.Line < 1 || rep.Chain.Broken != brk {
				t.Fatalf("break %+v, want in %s", brk, brokenFile)
			}
			var counted uint64
			for _, r := range rep.Rows {
				counted += r.Allowed + r.Denied + r.Failed
			}
			if rep.InWindow != rep.Chain.Records || rep.Chain.Records >= 1200 || (rep.Chain.Records == 0) != (counted == 0) {
				t.Fatalf("counted %d of %d verified records (in window %d)", counted, rep.Chain.Records, rep.InWindow)
			}
		})
	}
}

// TestEmptyTrail: a trail with no record is refused unless it is known new.
func TestEmptyTrail(t *testing.T) {
	files := writeLog(t, nil, 0)
	if _, err := Run(Options{Files: files}); !errors.Is(err, ErrNoRecords) {
		t.Fatalf("empty trail: %v, want ErrNoRecords", err)
	}
	rep, err := Run(Options{Files: files, AllowEmpty: true})
	if err != nil || len(rep.Rows) != 0 {
		t.Fatalf("empty trail allowed: %+v, %v", rep, err)
	}
}

// TestUnreadSummary: a refusal summary whose counts do not add up is
// counted as one denial and reported, not dropped.
func TestUnreadSummary(t *testing.T) {
	recs := []audit.Record{
		{Time: t0, Peer: audit.Peer{UID: 1000}, Op: "refused", Result: "RATE_LIMITED", Reason: "count=5 ops=wrap:2 first=x last=y"},
	}
	rep, err := Run(Options{Files: writeLog(t, recs, 0), Users: testUsers})
	if err != nil || rep.UnreadSummaries != 1 || len(rep.Rows) != 1 || rep.Rows[0].Denied != 1 || rep.Rows[0].Op != "refused" {
		t.Fatalf("%+v, %v", rep, err)
	}
}

// TestMaxRows: past MaxRows rows, calls that would need a new row are
// counted in their uid and operation's "other keys" row; the rows stay
// bounded and the counts per uid and operation equal the hand count's.
func TestMaxRows(t *testing.T) {
	files := writeLog(t, genRecords(3000), 0)
	const maxRows = 12
	rep, err := Run(Options{Files: files, Users: testUsers, MaxRows: maxRows})
	if err != nil {
		t.Fatal(err)
	}
	type subjOp struct {
		uid    uint32
		folded bool
		op     string
	}
	perOp := func(rows map[handKey]handRow) map[subjOp]handRow {
		out := map[subjOp]handRow{}
		for k, c := range rows {
			so := subjOp{k.uid, k.folded, k.op}
			o := out[so]
			o.allowed, o.denied, o.failed = o.allowed+c.allowed, o.denied+c.denied, o.failed+c.failed
			out[so] = o
		}
		return out
	}
	got, want := map[handKey]handRow{}, handCount(t, files, time.Time{})
	var kept, other int
	var otherCalls uint64
	for _, r := range rep.Rows {
		k := handKey{uid: r.UID, folded: r.Folded, unit: r.Unit, key: r.Key, op: r.Op}
		if r.OtherKeys {
			other++
			otherCalls += r.Allowed + r.Denied + r.Failed
			k.key = "(other)"
		} else {
			kept++
			if want[k] != (handRow{r.Allowed, r.Denied, r.Failed}) {
				t.Errorf("row %+v kept apart, but its counts are not the hand count's %+v", r, want[k])
			}
		}
		got[k] = handRow{r.Allowed, r.Denied, r.Failed}
	}
	if kept != maxRows || other == 0 || otherCalls != rep.OtherKeysCalls || len(want) <= maxRows {
		t.Fatalf("%d rows kept apart, %d other-keys rows of %d calls (report: %d); %d rows in all", kept, other, otherCalls, rep.OtherKeysCalls, len(want))
	}
	if !maps.Equal(perOp(got), perOp(want)) {
		t.Errorf("per subject and operation: %v, hand count %v", perOp(got), perOp(want))
	}
}

// TestBreakglassUse: a call a break-glass grant allowed (its record
// carries the grant's id) counts for the [[breakglass]] tables that may
// have granted it, never for a rule (the rules denied it); a table no
// grant was used under is listed unused.
func TestBreakglassUse(t *testing.T) {
	pol, err := policy.Compile([]policy.Rule{
		{Name: "apps", UIDs: []uint32{1000}, Keys: []string{"app/*"}, Operations: []string{"wrap", "unwrap"}},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	bps, err := policy.CompileBreakglass([]policy.Breakglass{
		{Name: "db-emergency", Requesters: policy.Subjects{UIDs: []uint32{1000}}, Approvers: policy.Subjects{UIDs: []uint32{2000}},
			Keys: []string{"payments/**"}, Operations: []string{"unwrap"}, MaxDuration: time.Hour},
		{Name: "signing-emergency", Requesters: policy.Subjects{UIDs: []uint32{1000}}, Approvers: policy.Subjects{UIDs: []uint32{2000}},
			Keys: []string{"signing/**"}, Operations: []string{"sign"}, MaxDuration: time.Hour},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	pol = pol.WithBreakglass(bps)
	recs := []audit.Record{
		{Time: t0, Peer: audit.Peer{UID: 1000, GID: 1000}, Op: "unwrap", Key: "app/db", Result: "OK"},
		{Time: t0.Add(time.Second), Peer: audit.Peer{UID: 1000, GID: 1000}, Op: "unwrap", Key: "payments/db", Result: "OK", Grant: "g-1"},
		{Time: t0.Add(2 * time.Second), Peer: audit.Peer{UID: 1000, GID: 1000}, Op: "unwrap", Key: "payments/db", Result: "OK", Grant: "g-1"},
		// A grant's id on a call the rules would have allowed anyway
		// counts for the table, not the rule.
		{Time: t0.Add(3 * time.Second), Peer: audit.Peer{UID: 1000, GID: 1000}, Op: "unwrap", Key: "app/db", Result: "OK", Grant: "g-2"},
	}
	rep, err := Run(Options{Files: writeLog(t, recs, 0), Users: testUsers, Policy: pol})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]uint64{}
	for _, g := range rep.Grants {
		got[g.Kind+" "+g.Name] = g.Allowed
	}
	want := map[string]uint64{"rule apps": 1, "breakglass db-emergency": 2, "breakglass signing-emergency": 0}
	if !maps.Equal(got, want) {
		t.Fatalf("allowed calls per grant %v, want %v", got, want)
	}
	if db := rep.Grants[1]; !db.LastUse.Equal(t0.Add(2*time.Second)) || !slices.Equal(db.Operations, []string{"unwrap"}) {
		t.Errorf("break-glass table db-emergency: %+v", db)
	}
}
