package policy

import (
	"cmp"
	"fmt"
	"slices"
)

// Grant is one subject's access under one rule.
type Grant struct {
	// Subject: "user payments (uid 1000)", "uid 1002", "group keyward-ops
	// (gid 990)", "gid 991" or "unit payments.service".
	Subject    string
	Operations []Operation // in the order of DataOperations, then AdminOperations
	// Never lists operations the rule lists that this subject can never
	// use: credential for a user, uid, group or gid (systemd asks as root,
	// and credential is decided by the unit alone). They are not in
	// Operations.
	Never   []Operation
	Keys    []string // key patterns as written
	Context map[string]string
	Rule    string
}

// reportOrder is the order of a Grant's operations.
var reportOrder = append(slices.Clone(DataOperations), AdminOperations...)

// Report lists every subject and what it may do: one Grant per (rule,
// subject), sorted by subject (users by uid, then groups by gid, then units
// by name) and, for one subject, by rule order. It is the access review a
// security team runs; the slices and maps returned are the caller's.
func (p *Policy) Report() []Grant {
	if p == nil {
		return nil
	}
	userNames, groupNames := p.subjectNames()
	var es []reportEntry
	for ri := range p.rules {
		r := &p.rules[ri]
		for _, s := range r.users {
			sub := fmt.Sprintf("uid %d", s.id)
			if n := userNames[s.id]; n != "" {
				sub = fmt.Sprintf("user %s (uid %d)", plain(n), s.id)
			}
			es = append(es, reportEntry{r.grant(sub, false), 0, s.id, ri})
		}
		for _, s := range r.groups {
			sub := fmt.Sprintf("gid %d", s.id)
			if n := groupNames[s.id]; n != "" {
				sub = fmt.Sprintf("group %s (gid %d)", plain(n), s.id)
			}
			es = append(es, reportEntry{r.grant(sub, false), 1, s.id, ri})
		}
		for _, u := range r.units {
			es = append(es, reportEntry{r.grant("unit "+plain(u), true), 2, 0, ri})
		}
	}
	slices.SortStableFunc(es, func(a, b reportEntry) int {
		return cmp.Or(
			cmp.Compare(a.kind, b.kind),
			cmp.Compare(a.id, b.id),
			cmp.Compare(a.g.Subject, b.g.Subject),
			cmp.Compare(a.rule, b.rule),
		)
	})
	out := make([]Grant, len(es))
	for i, e := range es {
		out[i] = e.g
	}
	return out
}

// reportEntry is one subject's grant by one rule, with what Report sorts by.
type reportEntry struct {
	g    Grant
	kind int // 0 user, 1 group, 2 unit
	id   uint32
	rule int
}

// subjectNames gives one spelling per id: a uid named by number in one
// rule and by name in another is one subject, shown with its name.
func (p *Policy) subjectNames() (users, groups map[uint32]string) {
	users, groups = map[uint32]string{}, map[uint32]string{}
	for ri := range p.rules {
		for _, s := range p.rules[ri].users {
			if s.name != "" && users[s.id] == "" {
				users[s.id] = s.name
			}
		}
		for _, s := range p.rules[ri].groups {
			if s.name != "" && groups[s.id] == "" {
				groups[s.id] = s.name
			}
		}
	}
	return users, groups
}

// grant is what r grants subject; credential goes to Never unless the
// subject is a unit (systemd asks for credentials as root: only units can
// be granted it).
func (r *rule) grant(subject string, unit bool) Grant {
	g := Grant{Subject: subject, Rule: r.name}
	for _, op := range reportOrder {
		if i, _ := opIndex(op); r.ops.has(i) {
			if op == OpCredential && !unit {
				g.Never = append(g.Never, op)
			} else {
				g.Operations = append(g.Operations, op)
			}
		}
	}
	for _, gl := range r.globs {
		g.Keys = append(g.Keys, gl.src)
	}
	if len(r.context) > 0 {
		g.Context = make(map[string]string, len(r.context))
		for _, pr := range r.context {
			g.Context[pr.k] = pr.v
		}
	}
	return g
}
