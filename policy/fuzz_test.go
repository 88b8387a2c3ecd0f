package policy

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/keyward/keyward/keys"
)

// fuzzResolver resolves any name without an 'x' to a small id derived from
// its bytes, so that fuzzed identities sometimes match resolved names.
type fuzzResolver struct{}

func (fuzzResolver) LookupUser(name string) (uint32, error)  { return fuzzID(name) }
func (fuzzResolver) LookupGroup(name string) (uint32, error) { return fuzzID(name) }

func fuzzID(name string) (uint32, error) {
	if strings.Contains(name, "x") {
		return 0, fmt.Errorf("no such name %q", name)
	}
	var id uint32
	for i := 0; i < len(name); i++ {
		id += uint32(name[i])
	}
	return id % 64, nil
}

// parseFuzzRules reads rules from text: one rule per line, space-separated
// fields "n=name u=user g=group U=uid G=gid s=unit k=key o=op c=key:value".
func parseFuzzRules(spec string) []Rule {
	var rules []Rule
	for line := range strings.SplitSeq(spec, "\n") {
		var r Rule
		for f := range strings.SplitSeq(line, " ") {
			kind, v, ok := strings.Cut(f, "=")
			if !ok {
				continue
			}
			switch kind {
			case "n":
				r.Name = v
			case "u":
				r.Users = append(r.Users, v)
			case "g":
				r.Groups = append(r.Groups, v)
			case "U":
				r.UIDs = append(r.UIDs, fuzzNum(v))
			case "G":
				r.GIDs = append(r.GIDs, fuzzNum(v))
			case "s":
				r.Units = append(r.Units, v)
			case "k":
				r.Keys = append(r.Keys, v)
			case "o":
				r.Operations = append(r.Operations, v)
			case "c":
				if r.Context == nil {
					r.Context = map[string]string{}
				}
				ck, cv, _ := strings.Cut(v, ":")
				r.Context[ck] = cv
			}
		}
		rules = append(rules, r)
	}
	return rules
}

func fuzzNum(s string) uint32 {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return uint32(len(s))
	}
	return uint32(n)
}

func parseFuzzContext(s string) map[string]string {
	if s == "" {
		return nil
	}
	m := map[string]string{}
	for kv := range strings.SplitSeq(s, ",") {
		k, v, _ := strings.Cut(kv, ":")
		m[k] = v
	}
	return m
}

// refAllows is an independent reading of the spec for one rule, used to
// check that every allow is justified.
func refAllows(r Rule, res Resolver, id Identity, req Request) bool {
	names := func(list []string, lookup func(string) (uint32, error)) []uint32 {
		var ids []uint32
		for _, s := range list {
			if n, err := strconv.ParseUint(s, 10, 32); err == nil {
				ids = append(ids, uint32(n))
			} else if n, err := lookup(s); err == nil {
				ids = append(ids, n)
			}
		}
		return ids
	}
	uids := append(names(r.Users, res.LookupUser), r.UIDs...)
	gids := append(names(r.Groups, res.LookupGroup), r.GIDs...)
	who := slices.Contains(uids, id.UID) || slices.Contains(gids, id.GID) ||
		slices.ContainsFunc(id.Groups, func(g uint32) bool { return slices.Contains(gids, g) }) ||
		(id.Unit != "" && slices.Contains(r.Units, id.Unit))
	if !who || !slices.Contains(r.Operations, string(req.Op)) || keys.ValidateName(req.Key) != nil {
		return false
	}
	if !slices.ContainsFunc(r.Keys, func(p string) bool { return refMatch(p, req.Key) }) {
		return false
	}
	for k, v := range r.Context {
		if got, ok := req.Context[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// refMatch matches a valid pattern against a valid key name with path.Match
// (whose '*' and '?' do not cross '/' either) and a prefix rule for "/**".
func refMatch(pattern, name string) bool {
	if pattern == "**" {
		return name != ""
	}
	body, deep := strings.CutSuffix(pattern, "/**")
	if !deep {
		ok, err := path.Match(pattern, name)
		return err == nil && ok
	}
	n := strings.Count(body, "/") + 1
	cut := 0
	for range n {
		i := strings.IndexByte(name[cut:], '/')
		if i < 0 {
			return false // no segment below the prefix
		}
		cut += i + 1
	}
	ok, err := path.Match(body, name[:cut-1])
	return err == nil && ok
}

func FuzzCompile(f *testing.F) {
	f.Fuzz(func(t *testing.T, spec, op, key, reqCtx, unit string, uid, gid, group uint32) {
		rules := parseFuzzRules(spec)
		p, err := Compile(rules, fuzzResolver{})
		if err != nil {
			if !errors.Is(err, ErrInvalidPolicy) {
				t.Fatalf("error %v does not wrap ErrInvalidPolicy", err)
			}
			if p != nil {
				t.Fatal("policy with an error")
			}
			return
		}
		if p.Rules() != len(rules) {
			t.Fatalf("Rules() = %d, want %d", p.Rules(), len(rules))
		}
		granted := map[string]bool{}
		byName := map[string]Rule{}
		for i, r := range rules {
			for _, o := range r.Operations {
				granted[o] = true
			}
			name := r.Name
			if name == "" {
				name = fmt.Sprintf("rule #%d", i+1)
			}
			byName[name] = r
		}
		id := Identity{UID: uid, GID: gid, Groups: []uint32{group}, Unit: unit}
		c := parseFuzzContext(reqCtx)
		ops := append([]Operation{Operation(op)}, allOps[:]...)
		for _, o := range ops {
			req := Request{Op: o, Key: key, Context: c}
			d, vs := p.Explain(id, req, Reserved{})
			if d != p.Decide(id, req, Reserved{}) {
				t.Fatal("Explain and Decide disagree")
			}
			if d.Reason == "" {
				t.Fatal("empty reason")
			}
			if !o.CarriesContext() && d.Allowed != p.Decide(id, Request{Op: o, Key: key}, Reserved{}).Allowed {
				t.Fatalf("%s: the request's context changes the decision, but the daemon never passes one", o)
			}
			first := slices.IndexFunc(vs, func(v RuleVerdict) bool { return v.Matched })
			if d.Allowed != (first >= 0) || (first >= 0 && vs[first].Rule != d.Rule) {
				t.Fatalf("decision %+v but verdicts %+v", d, vs)
			}
			if !d.Allowed {
				continue
			}
			if !granted[string(o)] {
				t.Fatalf("%s allowed, but no rule lists it: %+v", o, d)
			}
			r, ok := byName[d.Rule]
			if !ok || !refAllows(r, fuzzResolver{}, id, req) {
				t.Fatalf("rule %q allowed %+v for %+v, but it does not", d.Rule, req, id)
			}
		}
		for _, g := range p.Report() {
			for _, o := range g.Operations {
				if !granted[string(o)] {
					t.Fatalf("report grants %s that no rule lists", o)
				}
			}
		}
	})
}

func FuzzGlob(f *testing.F) {
	f.Fuzz(func(t *testing.T, pattern, name string) {
		g, err := compileGlob(pattern)
		if keys.ValidateName(pattern) == nil && err != nil {
			t.Fatalf("key name %q is not a valid pattern: %v", pattern, err)
		}
		if err != nil {
			return
		}
		if !strings.ContainsAny(pattern, "*?") && keys.ValidateName(pattern) != nil {
			t.Fatalf("pattern %q without wildcards is not a key name", pattern)
		}
		if !strings.ContainsAny(pattern, "*?") && !g.match(pattern) {
			t.Fatalf("%q does not match itself", pattern)
		}
		got := g.match(name)
		if keys.ValidateName(name) != nil {
			return // Decide refuses invalid names before matching
		}
		if want := refMatch(pattern, name); got != want {
			t.Fatalf("%q matches %q = %v, reference says %v", pattern, name, got, want)
		}
	})
}
