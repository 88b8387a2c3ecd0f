package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/devmode"
	"github.com/keyward/keyward/policy"
)

// devCallers collects --dev-allow-uid and --dev-allow-gid (repeatable) and
// whether --config was given, for --dev.
type devCallers struct {
	devmode.Callers
	configGiven bool
}

// idList is a repeatable flag of decimal ids.
func idList(ids *[]uint32, what string) func(string) error {
	return func(s string) error {
		n, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			return fmt.Errorf("%q is not a %s (a decimal number)", s, what)
		}
		*ids = append(*ids, uint32(n))
		return nil
	}
}

func (c *devCallers) register(fs *flag.FlagSet) {
	fs.Func("dev-allow-uid", "dev mode: also allow this `UID` every operation on every key (repeatable)", idList(&c.UIDs, "uid"))
	fs.Func("dev-allow-gid", "dev mode: also allow callers in this group `GID` every operation on every key (repeatable)", idList(&c.GIDs, "gid"))
}

// check runs after parsing: the dev flags need --dev; --config with --dev
// is the file the dev policy comes from.
func (c *devCallers) check(fs *flag.FlagSet, dev bool, configPath string) error {
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "config" {
			c.configGiven = true
		}
	})
	if !dev {
		if len(c.UIDs) > 0 || len(c.GIDs) > 0 {
			return fmt.Errorf("--dev-allow-uid and --dev-allow-gid are for --dev; in the config file, write a [[rule]]")
		}
		return nil
	}
	if c.configGiven {
		c.File = configPath
	}
	return nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// devWho is the banner's account of who may call.
func devWho(c devmode.Callers) string {
	who := fmt.Sprintf("uid %d may do everything", os.Getuid())
	if c.File != "" {
		who = "the policy of " + c.File
	}
	for _, u := range c.UIDs {
		who += fmt.Sprintf(", uid %d", u)
	}
	for _, g := range c.GIDs {
		who += fmt.Sprintf(", gid %d", g)
	}
	if len(c.UIDs)+len(c.GIDs) > 0 {
		who += " (--dev-allow: everything)"
	}
	return who
}

// checkDevConfig reads --dev --config's file and compiles its policy, so
// that a bad file fails before the dev device is made; it returns the
// file's content (nil without a file), which devmode's Allow then uses.
func checkDevConfig(c devmode.Callers) (*config.Config, error) {
	if c.File == "" {
		return nil, nil
	}
	cfg, err := config.LoadDevConfig(c.File)
	if err != nil {
		return nil, err
	}
	if _, err := policy.Compile(cfg.Rules, policy.SystemResolver()); err != nil {
		return nil, fmt.Errorf("%s: %w", c.File, err)
	}
	return &cfg, nil
}

// checkDevConfigCmd is --check-config --dev --config FILE: FILE as --dev
// would take it (only rule, limits and log_level; the policy compiled).
func checkDevConfigCmd(c *devCallers, stdout, stderr io.Writer) int {
	if c.File == "" {
		fmt.Fprintln(stderr, "keywardd: --check-config --dev checks the --config FILE that --dev would take its policy from: give --config")
		return exitUsage
	}
	if _, err := checkDevConfig(c.Callers); err != nil {
		printLines(stderr, "keywardd: ", err.Error())
		return exitConfig
	}
	fmt.Fprintf(stdout, "%s: ok for --dev\n", c.File)
	return exitOK
}
