package policy

// Attribution of recorded use to rules, for an access review from the audit
// log: a record holds the caller's uid, gid and unit, the operation and the
// key, but neither its supplementary groups (the reader supplies them) nor
// its context (only a digest), so which rule allowed it is known only up to
// the rules whose context pairs could have been in the request.

// RuleNames returns the rules' names in config order (an unnamed rule is
// "rule #N", as in decisions and reports).
func (p *Policy) RuleNames() []string {
	if p == nil {
		return nil
	}
	out := make([]string, len(p.rules))
	for i := range p.rules {
		out[i] = p.rules[i].name
	}
	return out
}

// MayHaveAllowed returns the names of the rules, in config order, that may
// have allowed op on key to id in a request whose context is unknown: each
// rule that names id, lists op and matches key, up to and including the
// first that requires no context pairs (Decide, which takes the first rule
// that allows, stops there at the latest); a rule with context pairs before
// it allowed the request if the request carried them. None: no rule can
// have allowed it (the policy changed since, or id lacks a group it had).
// Identity and operation are decided as Decide decides them (credential by
// the unit alone). What Reserved withholds is not considered: it never
// allowed anything.
func (p *Policy) MayHaveAllowed(id Identity, op Operation, key string) []string {
	if p == nil {
		return nil
	}
	id = decisionIdentity(id, op)
	c := check(Request{Op: op, Key: key})
	if !c.opOK || !c.keyOK {
		return nil
	}
	var out []string
	for i := range p.rules {
		r := &p.rules[i]
		if !r.ops.has(c.opIdx) || !r.matchIdentity(id) || !r.matchKey(key) {
			continue
		}
		out = append(out, r.name)
		if len(r.context) == 0 {
			break
		}
	}
	return out
}
