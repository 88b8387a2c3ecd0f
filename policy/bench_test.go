package policy

import (
	"fmt"
	"strconv"
	"testing"
)

// benchPolicy has 100 rules, one per application uid, each with a context
// condition, like a host serving many services.
func benchPolicy(b *testing.B) *Policy {
	rules := make([]Rule, 100)
	for i := range rules {
		rules[i] = Rule{
			Name:       fmt.Sprintf("app%d", i),
			Users:      []string{strconv.Itoa(10000 + i)},
			Groups:     []string{strconv.Itoa(20000 + i)},
			Units:      []string{fmt.Sprintf("app%d.service", i)},
			Keys:       []string{fmt.Sprintf("app%d/*", i), fmt.Sprintf("shared/app%d-*/**", i)},
			Operations: []string{"wrap", "unwrap", "datakey"},
			Context:    map[string]string{"app": fmt.Sprintf("app%d", i)},
		}
	}
	return mustCompile(b, rules)
}

func BenchmarkDecide(b *testing.B) {
	p := benchPolicy(b)
	groups := []uint32{100, 101, 102, 103, 104, 105, 106, 107}
	cases := []struct {
		name string
		id   Identity
		req  Request
		want bool
	}{
		{"allow-first", Identity{UID: 10000, GID: 10000, Groups: groups}, Request{OpUnwrap, "app0/db", map[string]string{"app": "app0"}}, true},
		{"allow-last", Identity{UID: 10099, GID: 10099, Groups: groups}, Request{OpUnwrap, "shared/app99-x/y/z", map[string]string{"app": "app99"}}, true},
		{"allow-last-by-unit", Identity{UID: 1, GID: 1, Groups: groups, Unit: "app99.service"}, Request{OpWrap, "app99/db", map[string]string{"app": "app99"}}, true},
		{"deny", Identity{UID: 1, GID: 1, Groups: groups}, Request{OpUnwrap, "app50/db", map[string]string{"app": "app50"}}, false},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			if d := p.Decide(c.id, c.req, Reserved{}); d.Allowed != c.want {
				b.Fatalf("Decide = %+v", d)
			}
			b.ReportAllocs()
			for b.Loop() {
				p.Decide(c.id, c.req, Reserved{})
			}
		})
	}
}
