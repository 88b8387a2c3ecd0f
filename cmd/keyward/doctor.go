package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/keyward/keyward/hsm"
)

const doctorLong = `Logs in to the token and inspects every keyward object in it: each key
version, the keyring's metadata MAC key and every key record. It reports an
object that is extractable, not sensitive, not private, modifiable, allows a
usage beyond its key type, is missing, or whose record fails its integrity
check ("weak"), and a keyward object that no record references
("housekeeping": left by a crash; review, then destroy). Findings are printed
as a table, or as JSON with --json. Doctor opens read-only sessions and
changes nothing in the token, not even on a token keyward has never used. It
does not need the daemon.

The token is found in the module's slots by label (--token) or by an RFC 7512
URI (--uri "pkcs11:token=keyward;serial=..."). SoftHSM2 reads its
configuration from $SOFTHSM2_CONF.

Exit status 0 means no weak object (housekeeping findings are printed but do
not fail), 1 means at least one weak object.`

type doctorOptions struct {
	Module  string
	Token   string
	URI     string
	PINFile string
	JSON    bool
}

func (a *app) doctorCmd() *cobra.Command {
	var o doctorOptions
	c := &cobra.Command{
		Use:   "doctor (--token LABEL | --uri URI) [--module PATH] [--pin-file FILE] [--json]",
		Short: "check every keyward object in a PKCS#11 token for weak protection and leftovers",
		Long:  doctorLong,
		Example: `  keyward token doctor --module /usr/lib/softhsm/libsofthsm2.so \
      --token keyward --pin-file /etc/keyward/pin`,
		Annotations: localOnly,
		Args:        noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := o.check(); err != nil {
				return err
			}
			return tokenDoctor(c.Context(), a.stdout, o)
		},
	}
	f := c.Flags()
	f.StringVar(&o.Module, "module", os.Getenv(envModule), "PKCS#11 module `PATH` (default $"+envModule+"; required when that is unset)")
	f.StringVar(&o.Token, "token", "", "token `LABEL`")
	f.StringVar(&o.URI, "uri", "", "RFC 7512 `URI` selecting the token (instead of --token)")
	f.StringVar(&o.PINFile, "pin-file", "", "user PIN, in a `FILE` of mode 0600 or 0400 (default $CREDENTIALS_DIRECTORY/pin, a systemd credential)")
	f.BoolVar(&o.JSON, "json", false, "print the report as JSON")
	return c
}

// check validates the options once the flags are parsed.
func (o *doctorOptions) check() error {
	const cmd = "token doctor"
	if o.Module == "" {
		return usagef(cmd, "--module is required ($%s is not set)", envModule)
	}
	if (o.Token == "") == (o.URI == "") {
		return usagef(cmd, "give exactly one of --token and --uri")
	}
	if o.PINFile == "" && os.Getenv("CREDENTIALS_DIRECTORY") == "" {
		return usagef(cmd, "--pin-file is required when $CREDENTIALS_DIRECTORY is not set")
	}
	if o.URI != "" {
		if _, err := hsm.ParseURI(o.URI); err != nil {
			return usagef(cmd, "--uri: %v", err)
		}
	}
	return nil
}

// tokenDoctor opens the token, runs Doctor and prints the report. It
// returns an error wrapping errWeak when any finding is weak.
func tokenDoctor(ctx context.Context, w io.Writer, o doctorOptions) error {
	tok, err := hsm.Open(ctx, hsm.Config{Module: o.Module, TokenLabel: o.Token, URI: o.URI, PINFile: o.PINFile, ReadOnly: true})
	if err != nil {
		return fmt.Errorf("token doctor: open token: %w", err)
	}
	defer tok.Close()
	rep, err := tok.Doctor(ctx)
	if err != nil {
		return fmt.Errorf("token doctor: %w", err)
	}
	if o.JSON {
		if rep.Findings == nil {
			rep.Findings = []hsm.Finding{}
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else if err := printReport(w, rep); err != nil {
		return err
	}
	if rep.Weak() {
		n := 0
		for _, f := range rep.Findings {
			if f.Weak {
				n++
			}
		}
		return fmt.Errorf("token doctor: %d weak finding(s) in token %s: %w", n, rep.Token, errWeak)
	}
	return nil
}

// printReport writes the summary line and, when there are findings, a table.
func printReport(w io.Writer, rep hsm.Report) error {
	if _, err := fmt.Fprintln(w, doctorSummary(rep)); err != nil {
		return err
	}
	if len(rep.Findings) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SEVERITY\tKEY\tVERSION\tCLASS\tLABEL\tID\tPROBLEM")
	for _, f := range rep.Findings {
		ver := "-"
		if f.Version > 0 {
			ver = strconv.FormatUint(uint64(f.Version), 10)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", severity(f), dash(f.Key), ver, dash(f.Class), dash(f.Label), dash(f.ID), f.Problem)
	}
	return tw.Flush()
}

func severity(f hsm.Finding) string {
	if f.Weak {
		return "weak"
	}
	return "housekeeping"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// doctorSummary is the one-line verdict: what was checked and what was found.
func doctorSummary(rep hsm.Report) string {
	weak := 0
	for _, f := range rep.Findings {
		if f.Weak {
			weak++
		}
	}
	s := fmt.Sprintf("token %s: %s, %s checked, ", rep.Token, plural(rep.Keys, "key"), plural(rep.Objects, "object"))
	switch {
	case len(rep.Findings) == 0:
		return s + "no findings"
	case weak == 0:
		return s + fmt.Sprintf("%s (housekeeping only, no weak objects)", plural(len(rep.Findings), "finding"))
	}
	return s + fmt.Sprintf("%s: %d weak, %d housekeeping", plural(len(rep.Findings), "finding"), weak, len(rep.Findings)-weak)
}

// findingSubject names the object of a finding in one short phrase.
func findingSubject(f hsm.Finding) string {
	switch {
	case f.Key != "" && f.Version > 0:
		return fmt.Sprintf("%s %s v%d", severity(f), f.Key, f.Version)
	case f.Key != "":
		return fmt.Sprintf("%s %s record", severity(f), f.Key)
	}
	return fmt.Sprintf("%s %s %s", severity(f), dash(f.Class), dash(f.Label))
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return strconv.Itoa(n) + " " + word + "s"
}
