package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/keyward/keyward/hsm"
	"github.com/keyward/keyward/tpm"
)

const doctorLong = `Logs in to the token and inspects every keyward object in it: each key
version, the keyring's metadata MAC key and every key record. It reports an
object that is extractable, not sensitive, not private, modifiable, allows a
usage beyond its key type, is missing, is named by two keys' records, is
keyward's own (the metadata MAC key, another key's version) yet named by a
key's record, or whose record fails its integrity check ("weak"), and a keyward object that no record references
("housekeeping": left by a crash; review, then destroy). Findings are printed
as a table, or as JSON with --json. Doctor opens read-only sessions and
changes nothing in the token, not even on a token keyward has never used. It
does not need the daemon.

The token is found in the module's slots by label (--token) or by an RFC 7512
URI (--uri "pkcs11:token=keyward;serial=..."). SoftHSM2 reads its
configuration from $SOFTHSM2_CONF.

TPM: with --tpm-device (/dev/tpmrm0, swtpm:HOST:PORT or swtpm+unix:PATH) and
--state-dir (backend.state_dir), the auth secret from --pin-file, and
--parent-handle when backend.parent_handle is set, doctor checks the TPM
backend's state directory instead: the pinned parent, the rollback counter
(manifest.json against the TPM's NV counter: a state directory keywardd
would refuse as rolled back is a weak finding), every record's MAC, and,
loading each stored object (the keyring key and every key
version) into the TPM, the attributes the TPM itself reports for it
(fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda, no policy, not
restricted) and that it is the object the record names. It prints one row
per object (key, version, TPM object name, attributes) and the findings, or
the report as JSON with --json. It changes nothing in the state directory
and takes no lock, so it may run beside keywardd on /dev/tpmrm0. swtpm serves
one client at a time: against swtpm, stop keywardd first, or doctor waits
for it (and fails after a minute).

Exit status 0 means no weak object (housekeeping findings are printed but do
not fail), 1 means at least one weak object.`

type doctorOptions struct {
	Module       string
	Token        string
	URI          string
	PINFile      string
	TPMDevice    string
	StateDir     string
	ParentHandle string
	JSON         bool

	moduleSet bool // --module was given (not only $KEYWARD_PKCS11_MODULE)
}

func (a *app) doctorCmd() *cobra.Command {
	var o doctorOptions
	c := &cobra.Command{
		Use:   "doctor (--token LABEL | --uri URI | --tpm-device DEV --state-dir DIR [--parent-handle HANDLE]) [--module PATH] [--pin-file FILE] [--json]",
		Short: "check every keyward object in a PKCS#11 token or a TPM state directory for weak protection and leftovers",
		Long:  doctorLong,
		Example: `  keywardd doctor --module /usr/lib/softhsm/libsofthsm2.so \
      --token keyward --pin-file /etc/keyward/pin
  keywardd doctor --tpm-device /dev/tpmrm0 --state-dir /var/lib/keyward/tpm \
      --pin-file /etc/keyward/pin`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			o.moduleSet = c.Flags().Changed("module")
			if err := o.check(); err != nil {
				return err
			}
			if o.TPMDevice != "" {
				return tpmDoctor(c.Context(), a.stdout, o)
			}
			return tokenDoctor(c.Context(), a.stdout, o)
		},
	}
	f := c.Flags()
	f.StringVar(&o.Module, "module", os.Getenv(envModule), "PKCS#11 module `PATH` (default $"+envModule+"; required when that is unset)")
	f.StringVar(&o.Token, "token", "", "token `LABEL`")
	f.StringVar(&o.URI, "uri", "", "RFC 7512 `URI` selecting the token (instead of --token)")
	f.StringVar(&o.PINFile, "pin-file", "", "user PIN (TPM: the auth secret), in a `FILE` of mode 0600 or 0400 (default $CREDENTIALS_DIRECTORY/pin, a systemd credential)")
	f.StringVar(&o.TPMDevice, "tpm-device", "", "check a TPM backend instead of a token: the TPM `DEV` (/dev/tpmrm0, swtpm:HOST:PORT, swtpm+unix:PATH)")
	f.StringVar(&o.StateDir, "state-dir", "", "with --tpm-device: the TPM backend's state `DIR` (backend.state_dir)")
	f.StringVar(&o.ParentHandle, "parent-handle", "", "with --tpm-device: the persistent parent `HANDLE` of backend.parent_handle (0x81000000..0x81ffffff); unset: the default parent")
	f.BoolVar(&o.JSON, "json", false, "print the report as JSON")
	return c
}

// check validates the options once the flags are parsed.
func (o *doctorOptions) check() error {
	const cmd = "doctor"
	if o.TPMDevice != "" {
		if o.moduleSet || o.Token != "" || o.URI != "" {
			return usagef(cmd, "--tpm-device checks a TPM: it excludes --module, --token and --uri")
		}
		if o.StateDir == "" {
			return usagef(cmd, "--tpm-device needs --state-dir (backend.state_dir)")
		}
		if _, err := parseParentHandle(o.ParentHandle); err != nil {
			return usagef(cmd, "--parent-handle: %v", err)
		}
		if o.PINFile == "" && os.Getenv("CREDENTIALS_DIRECTORY") == "" {
			return usagef(cmd, "--pin-file is required when $CREDENTIALS_DIRECTORY is not set")
		}
		return nil
	}
	if o.StateDir != "" {
		return usagef(cmd, "--state-dir is for a TPM: give --tpm-device too")
	}
	if o.ParentHandle != "" {
		return usagef(cmd, "--parent-handle is for a TPM: give --tpm-device too")
	}
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
		return fmt.Errorf("doctor: open token: %w", err)
	}
	defer tok.Close()
	rep, err := tok.Doctor(ctx)
	if err != nil {
		return fmt.Errorf("doctor: %w", err)
	}
	if err := writeReport(w, o.JSON, rep, printReport); err != nil {
		return err
	}
	if n := rep.Weak(); n > 0 {
		return fmt.Errorf("doctor: %d weak finding(s) in token %s: %w", n, rep.Token, errWeak)
	}
	return nil
}

// writeReport writes rep as indented JSON, or as text does.
func writeReport[R any](w io.Writer, asJSON bool, rep R, text func(io.Writer, R) error) error {
	if !asJSON {
		return text(w, rep)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// tpmDoctor opens the TPM backend read-only, runs Doctor and prints the
// report. It returns an error wrapping errWeak when any finding is weak.
func tpmDoctor(ctx context.Context, w io.Writer, o doctorOptions) error {
	parent, _ := parseParentHandle(o.ParentHandle) // checked by check
	be, err := tpm.Open(ctx, tpm.Config{Device: o.TPMDevice, StateDir: o.StateDir, PINFile: o.PINFile, ParentHandle: parent, ReadOnly: true})
	if err != nil {
		if strings.HasPrefix(o.TPMDevice, "swtpm") && errors.Is(err, tpm.ErrTransport) {
			return fmt.Errorf("doctor: open tpm (swtpm must be running, and serves one client at a time: stop keywardd first): %w", err)
		}
		return fmt.Errorf("doctor: open tpm: %w", err)
	}
	defer be.Close()
	rep, err := be.Doctor(ctx)
	if err != nil {
		return fmt.Errorf("doctor: %w", err)
	}
	if err := writeReport(w, o.JSON, rep, printTPMReport); err != nil {
		return err
	}
	if n := rep.Weak(); n > 0 {
		return fmt.Errorf("doctor: %d weak finding(s) in TPM state directory %s: %w", n, rep.StateDir, errWeak)
	}
	return nil
}

// printTPMReport writes the summary line, the pinned parent, one row per
// object checked and, when there are findings, their table.
func printTPMReport(w io.Writer, rep tpm.Report) error {
	weak := 0
	for _, f := range rep.Findings {
		if f.Weak {
			weak++
		}
	}
	s := fmt.Sprintf("tpm %s, state directory %s: %s, %s checked, ", rep.Device, rep.StateDir, plural(rep.Keys, "key"), plural(len(rep.Objects), "object"))
	switch {
	case len(rep.Findings) == 0:
		s += "no findings"
	case weak == 0:
		s += fmt.Sprintf("%s (housekeeping only, no weak objects)", plural(len(rep.Findings), "finding"))
	default:
		s += fmt.Sprintf("%s: %d weak, %d housekeeping", plural(len(rep.Findings), "finding"), weak, len(rep.Findings)-weak)
	}
	if _, err := fmt.Fprintf(w, "%s\npinned parent %s\nrollback counter: %s\n", s, dash(rep.Parent), dash(rep.Rollback)); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if len(rep.Objects) > 0 {
		fmt.Fprintln(tw, "KEY\tVERSION\tOBJECT NAME\tATTRIBUTES")
		for _, ob := range rep.Objects {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", ob.Key, versionText(ob.Version), ob.Name, dash(ob.Attributes))
		}
	}
	if len(rep.Findings) > 0 {
		if len(rep.Objects) > 0 {
			fmt.Fprintln(tw)
		}
		fmt.Fprintln(tw, "SEVERITY\tKEY\tVERSION\tOBJECT NAME\tPROBLEM")
		for _, f := range rep.Findings {
			sev := "housekeeping"
			if f.Weak {
				sev = "weak"
			}
			key := f.Key
			if key == "" {
				key = "(keyring key)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", sev, key, versionText(f.Version), dash(f.Name), f.Problem)
		}
	}
	return tw.Flush()
}

func versionText(v uint32) string {
	if v == 0 {
		return "-"
	}
	return strconv.FormatUint(uint64(v), 10)
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
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", severity(f), dash(f.Key), versionText(f.Version), dash(f.Class), dash(f.Label), dash(f.ID), f.Problem)
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
