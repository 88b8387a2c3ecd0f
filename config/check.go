package config

import (
	"errors"
	"fmt"

	"github.com/keyward/keyward/policy"

	"github.com/keyward/keyward/internal/osuser"
)

// CheckConfig loads and validates path fully: syntax, values, and the
// policy (names resolved), without touching the device. Every problem is
// reported, one per line.
func CheckConfig(path string) (Config, *policy.Policy, error) {
	cfg, err := LoadConfig(path)
	if err != nil && !errors.Is(err, ErrConfig) {
		return Config{}, nil, err // not read
	}
	errs := []error{err}
	if cfg.SocketGroup != "" {
		if _, err := lookupGroup(cfg.SocketGroup); err != nil {
			errs = append(errs, fmt.Errorf("%s: socket_group: %v: %w", path, err, ErrConfig))
		}
	}
	pol, err := CompilePolicy(cfg, policy.SystemResolver())
	errs = append(errs, inFile(path, err)...)
	if err := errors.Join(errs...); err != nil {
		return Config{}, nil, err
	}
	return cfg, pol, nil
}

func lookupGroup(s string) (int, error) { return osuser.LookupGroup(s) }
