package accessreview

import "testing"

// FuzzParseSummary: a refusal summary's reason, whatever it holds, never
// panics the review; one that reads has positive op counts adding up to
// its count.
func FuzzParseSummary(f *testing.F) {
	f.Add("count=5 ops=unwrap:3,wrap:2 first=2026-11-01T00:00:00Z last=2026-11-01T00:00:09.5Z")
	f.Add("callers=3 (more than audit_refusal_max_records or 10000 callers in one interval) count=4 ops=sign:4 first=x last=2026-11-01T00:00:00Z")
	f.Add("count=1 ops=wrap:1 count=1")
	f.Add("count=18446744073709551615 ops=a:18446744073709551615,b:1")
	f.Add("count=1 ops=a:18446744073709551615,b:2")
	f.Fuzz(func(t *testing.T, reason string) {
		s, ok := parseSummary(reason)
		if !ok {
			return
		}
		var sum uint64
		for _, oc := range s.ops {
			if oc.n == 0 || oc.op == "" || oc.n > s.count {
				t.Fatalf("%q: op count %+v of %d", reason, oc, s.count)
			}
			sum += oc.n
		}
		if sum != s.count || s.count == 0 {
			t.Fatalf("%q: ops add up to %d, count %d", reason, sum, s.count)
		}
	})
}
