package devmode

import (
	"fmt"
	"strconv"

	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/policy"
)

// Callers widens or replaces the dev policy (keywardd --dev --config FILE,
// --dev-allow-uid, --dev-allow-gid).
type Callers struct {
	// File, when set, is a config file whose rules and limits (and log
	// level) replace the dev defaults: the invoking uid then gets only
	// what the file allows. Any other key in it is refused
	// (config.LoadDevConfig).
	File string
	// Loaded, when set, is File as config.LoadDevConfig read it already:
	// Allow uses it rather than reading File again.
	Loaded *config.Config
	// UIDs and GIDs are allowed every operation on every key, as the
	// invoking uid is without File.
	UIDs, GIDs []uint32
}

// allOps is every operation a rule can name.
func allOps() []string {
	var ops []string
	for _, o := range append(append([]policy.Operation{}, policy.DataOperations...), policy.AdminOperations...) {
		ops = append(ops, string(o))
	}
	return ops
}

// load returns File's content: Loaded, or read now.
func (c Callers) load() (config.Config, error) {
	if c.Loaded != nil {
		return *c.Loaded, nil
	}
	return config.LoadDevConfig(c.File)
}

// Allow applies c to the dev configuration and compiles the new policy.
// Without File the invoking uid keeps its rule; the extra callers get one
// rule each.
func (d *Dev) Allow(c Callers) error {
	cfg := d.Config
	if c.File != "" {
		fc, err := c.load()
		if err != nil {
			return err
		}
		cfg.Rules, cfg.Limits = fc.Rules, fc.Limits
		if fc.LogLevel != config.Defaults().LogLevel {
			cfg.LogLevel = fc.LogLevel
		}
	}
	for _, uid := range c.UIDs {
		cfg.Rules = append(cfg.Rules, policy.Rule{Name: "dev: --dev-allow-uid " + strconv.FormatUint(uint64(uid), 10), UIDs: []uint32{uid}, Keys: []string{"**"}, Operations: allOps()})
	}
	for _, gid := range c.GIDs {
		cfg.Rules = append(cfg.Rules, policy.Rule{Name: "dev: --dev-allow-gid " + strconv.FormatUint(uint64(gid), 10), GIDs: []uint32{gid}, Keys: []string{"**"}, Operations: allOps()})
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	pol, err := policy.Compile(cfg.Rules, policy.SystemResolver())
	if err != nil {
		if c.File != "" {
			return fmt.Errorf("%s: %w", c.File, err)
		}
		return err
	}
	d.Config, d.Policy = cfg, pol
	return nil
}
