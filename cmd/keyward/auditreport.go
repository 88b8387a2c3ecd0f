package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/keyward/keyward/accessreview"
	"github.com/keyward/keyward/audit"
	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/keys"
)

const auditReportLong = `The access review from actual use: reads keywardd's audit log (its rotated
files, oldest first, then the current file) and prints, per subject (uid,
the uid's user name on this host, systemd unit) x key x operation, the calls
allowed, denied and failed, and the time of the last one.

The chain is verified in the same pass, as "keyward audit verify" verifies
it (checkpoint signatures too with --checkpoint-key; --from-seq and
--from-hash for a trail whose older files were removed on purpose). A broken
chain is reported as "broken: FILE:LINE (seq S): WHY" and the command exits
1: the counts printed then cover only the records before the break.

--since PERIOD (30d, 12h, 90m) or an RFC 3339 time counts only the records
from then on; every record is still verified. Allowed: result OK, or INVALID
(a signature or MAC checked and found wrong). Denied: refused by the policy
(PERMISSION_DENIED) or by a limit (RATE_LIMITED, TOO_MANY_REQUESTS...),
including keywardd's refusal summaries (op "refused"), counted by the
operations they name, without a key. Failed: any other result (the key does
not exist, the blob did not decrypt, the device was unavailable). Intent
records (STARTED) and checkpoints are not counted.

With --config FILE (keywardd's configuration, checked as
"keywardd --check-config" checks it), the policy's rules no allowed call in
the window may have come through are listed: candidates to remove. A record
holds the caller's uid, gid and unit, but not its context (a digest) nor its
supplementary groups (taken from this host's user database): a call is
attributed to every rule that names the caller, lists the operation and
matches the key, in config order, up to the first rule without context
pairs (where the daemon's decision stops at the latest).

Without --dir, the log is in the directory of --config's audit_log, else of
the default audit_log (/var/log/keyward). Callers choose the key names they
ask for, so a log may name more keys than memory should hold: past
--max-rows rows, a call that would need a new row is counted in its uid and
operation's "(other keys)" row (a note says how many). --json prints the review as one
JSON object (its fields: docs/access-review.md).

Exit status 0 when the chain holds; 1 when it is broken, or holds no record
(unless --allow-empty), or when --checkpoint-key was given and no checkpoint
was found (nothing on stderr); 2 for a bad command line, a config file
keywardd would refuse, or a DIR holding several logs; 3 when a file may not
be read; 4 when a FILE or DIR does not exist, or DIR holds no log.`

const auditReportExample = `  keyward audit report --since 30d --config /etc/keyward/keyward.toml
  keyward audit report --dir /var/log/keyward --since 2026-11-01T00:00:00Z --json > review.json
  keyward audit report --since 30d --config /etc/keyward/keyward.toml --json | jq -r '.grants[] | select(.used | not) | .name'`

// auditReportFlags are audit report's flags.
type auditReportFlags struct {
	verify auditVerifyFlags
	since  string
	config string
	json   bool
	rows   int
}

func (a *app) auditReportCmd() *cobra.Command {
	var f auditReportFlags
	c := &cobra.Command{
		Use:         "report [FILE... | --dir DIR] [--since PERIOD] [--config FILE] [--json]",
		Short:       "access review from actual use: calls per subject, key and operation, and the rules no call used (verifies the chain as it reads)",
		Long:        auditReportLong,
		Example:     auditReportExample,
		Annotations: localOnly,
		Args:        cobra.ArbitraryArgs,
		RunE: func(c *cobra.Command, args []string) error {
			return a.auditReport(cmdName(c), c.Flags().Changed("from-seq"), f, args)
		},
	}
	fl := c.Flags()
	fl.StringVar(&f.verify.dir, "dir", "", "the audit `DIR`ectory (default: that of --config's audit_log, else /var/log/keyward)")
	fl.StringVar(&f.since, "since", "", "count the records of the last `PERIOD` (30d, 12h, 90m) or from an RFC 3339 time (default: all)")
	fl.StringVar(&f.config, "config", "", "keywardd's configuration `FILE`: list the rules no allowed call used")
	fl.BoolVar(&f.json, "json", false, "print the review as JSON")
	fl.IntVar(&f.rows, "max-rows", accessreview.DefaultMaxRows, "keep at most `N` rows apart; past them, a call that would need a new row counts in its uid and operation's (other keys) row")
	fl.StringArrayVar(&f.verify.keyFiles, "checkpoint-key", nil, "check checkpoint signatures with the PEM public key in `FILE` (repeat for each key version)")
	fl.BoolVar(&f.verify.allowEmpty, "allow-empty", false, "a trail with no record at all is a new log, not a broken one")
	fl.Uint64Var(&f.verify.fromSeq, "from-seq", 0, "the trail starts at seq `N` (older files removed on purpose); needs --from-hash")
	fl.StringVar(&f.verify.fromHash, "from-hash", "", "the hash of seq N-1, the last record removed (64 hex digits)")
	return c
}

// auditReport runs audit report.
func (a *app) auditReport(cmd string, seqGiven bool, f auditReportFlags, args []string) error {
	o, torn, err := reviewOptions(cmd, seqGiven, f, args)
	if err != nil {
		return err
	}
	rep, err := accessreview.Run(o)
	var brk *audit.Break
	switch {
	case errors.As(err, &brk), errors.Is(err, accessreview.ErrNoRecords):
	case err != nil:
		return fmt.Errorf("%s: %w", cmd, err)
	}
	out := reviewOutcome{rep: rep, err: err, keysGiven: len(f.verify.keyFiles) > 0, torn: torn}
	out.noCheckpoint = err == nil && out.keysGiven && rep.Chain.Checkpoints == 0
	if f.json {
		err = writeJSON(a.stdout, out.json())
	} else {
		err = out.print(a.stdout)
	}
	switch {
	case err != nil:
		return err
	case out.err != nil || out.noCheckpoint:
		return errBroken
	}
	return nil
}

// reviewOptions turns the command line into the review's options and the
// torn tails found beside the log.
func reviewOptions(cmd string, seqGiven bool, f auditReportFlags, args []string) (accessreview.Options, []string, error) {
	var o accessreview.Options
	var err error
	if f.rows <= 0 {
		return o, nil, usagef(cmd, "--max-rows %d: want 1 or more", f.rows)
	}
	if o.Since, err = parseSince(cmd, f.since, time.Now()); err != nil {
		return o, nil, err
	}
	o.AllowEmpty, o.MaxRows = f.verify.allowEmpty, f.rows
	dir := f.verify.dir
	if f.config != "" {
		cfg, pol, err := loadConfig(cmd, f.config)
		if err != nil {
			return o, nil, err
		}
		o.Policy = pol
		if dir == "" && len(args) == 0 {
			if cfg.AuditLog == "off" {
				return o, nil, usagef(cmd, "%s has audit_log = \"off\": give --dir DIR", f.config)
			}
			dir = filepath.Dir(cfg.AuditLog)
		}
	}
	if dir == "" && len(args) == 0 {
		dir = filepath.Dir(config.Defaults().AuditLog)
	}
	var torn []string
	if o.Files, torn, err = auditFiles(cmd, dir, args); err != nil {
		return o, nil, err
	}
	o.Verify, err = verifyOptions(cmd, seqGiven, f.verify)
	return o, torn, err
}

// verifyOptions reads the verification flags audit report shares with
// audit verify.
func verifyOptions(cmd string, seqGiven bool, f auditVerifyFlags) (audit.VerifyOptions, error) {
	var opts audit.VerifyOptions
	var err error
	if opts.From, err = startFlags(cmd, seqGiven, f.fromSeq, f.fromHash); err != nil {
		return opts, err
	}
	for _, kf := range f.keyFiles {
		pub, err := readPublicKeyPEM(kf)
		if err != nil {
			return opts, usagef(cmd, "--checkpoint-key %s: %v", kf, err)
		}
		opts.CheckpointKeys = append(opts.CheckpointKeys, pub)
	}
	return opts, nil
}

// parseSince reads --since: a period back from now, or an RFC 3339 time.
// "" and "0": every record.
func parseSince(cmd, s string, now time.Time) (time.Time, error) {
	if s == "" || s == "0" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	d, err := keys.ParsePeriod(s)
	if err != nil {
		return time.Time{}, usagef(cmd, "--since %q: want a period (30d, 12h, 90m) or an RFC 3339 time (2026-11-01T00:00:00Z)", strings.ToValidUTF8(s, "?"))
	}
	return now.Add(-d), nil
}
