package config

import (
	"errors"

	"github.com/keyward/keyward/policy"
)

// Breakglass is one [[breakglass]] table: who may ask for time-boxed access
// to which keys and operations, who must approve it and within what bounds
// (docs/breakglass.md). policy.CompileBreakglass checks it.
type Breakglass struct {
	Name       string          `toml:"name"`
	Requesters policy.Subjects `toml:"requesters"`
	Approvers  policy.Subjects `toml:"approvers"`
	Keys       []string        `toml:"keys"`
	Operations []string        `toml:"operations"`
	// MaxDuration bounds what a request may ask for (required).
	MaxDuration Duration `toml:"max_duration"`
	// Approvals is how many distinct approvers a grant needs (default 1).
	Approvals int `toml:"approvals"`
	// RequestTTL is how long a request waits for its approvals (default 1h).
	RequestTTL Duration `toml:"request_ttl"`
}

// breakglassPolicies converts the tables for policy.CompileBreakglass.
func breakglassPolicies(in []Breakglass) []policy.Breakglass {
	out := make([]policy.Breakglass, len(in))
	for i, b := range in {
		out[i] = policy.Breakglass{Name: b.Name, Requesters: b.Requesters, Approvers: b.Approvers, Keys: b.Keys,
			Operations: b.Operations, MaxDuration: b.MaxDuration.Duration, Approvals: b.Approvals, RequestTTL: b.RequestTTL.Duration}
	}
	return out
}

// CompilePolicy compiles the file's rules and break-glass tables with r,
// as keywardd runs them: the policy carries its break-glass policies.
func CompilePolicy(cfg Config, r policy.Resolver) (*policy.Policy, error) {
	pol, err := policy.Compile(cfg.Rules, r)
	bps, berr := policy.CompileBreakglass(breakglassPolicies(cfg.Breakglass), r)
	if err != nil || berr != nil {
		return nil, joinErrs(err, berr)
	}
	return pol.WithBreakglass(bps), nil
}

// joinErrs joins two joined error lists into one flat list.
func joinErrs(errs ...error) error {
	var flat []error
	for _, err := range errs {
		flat = append(flat, flatten(err)...)
	}
	return errors.Join(flat...)
}

// flatten is err's joined errors (errors.Join's), err alone if it joins
// none, nothing for nil.
func flatten(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}
