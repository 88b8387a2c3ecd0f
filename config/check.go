package config

import (
	"errors"
	"fmt"
	"os/user"
	"strconv"

	"github.com/keyward/keyward/policy"
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
	pol, err := policy.Compile(cfg.Rules, policy.SystemResolver())
	errs = append(errs, inFile(path, err)...)
	if err := errors.Join(errs...); err != nil {
		return Config{}, nil, err
	}
	return cfg, pol, nil
}

// lookupGroup resolves socket_group as socket.Listen will when it binds (a
// number, or a group name), here without the server's packages.
func lookupGroup(s string) (int, error) {
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		return int(n), nil
	}
	g, err := user.LookupGroup(s)
	if err != nil {
		return 0, fmt.Errorf("group %q: %w", s, err)
	}
	n, err := strconv.ParseUint(g.Gid, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("group %q has gid %q: %w", s, g.Gid, err)
	}
	return int(n), nil
}
