package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	keywardv1 "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/client"
	"github.com/keyward/keyward/keys"
)

func (a *app) keyCmd() *cobra.Command {
	return groupCmd("key", "create, rotate, list, show, disable, enable, destroy and adopt keys",
		`  keyward key create payments/db-password --type aes-256-gcm
  keyward key list`,
		a.keyCreateCmd(), a.keyRotateCmd(), a.keyListCmd(), a.keyShowCmd(),
		a.keyStateCmd(false), a.keyStateCmd(true), a.keyDestroyCmd(), a.keySetCmd(), a.keyAdoptCmd(),
	)
}

// typeNames is the list of key types for help and errors.
func typeNames() string {
	var s []string
	for _, t := range keys.Types {
		s = append(s, string(t))
	}
	return strings.Join(s, ", ")
}

// typeFlag adds --type TYPE, completed with the key types.
func typeFlag(c *cobra.Command, typ *string) {
	c.Flags().StringVar(typ, "type", "", "key `TYPE`: "+typeNames())
	c.RegisterFlagCompletionFunc("type", func(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
		var out []cobra.Completion
		for _, t := range keys.Types {
			out = append(out, string(t))
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	})
}

func checkType(c *cobra.Command, typ string) error {
	if typ == "" {
		return usagef(cmdName(c), "--type is required (%s)", typeNames())
	}
	if _, err := keys.ParseType(typ); err != nil {
		return usagef(cmdName(c), "--type: unknown key type %q (want one of %s)", typ, typeNames())
	}
	return nil
}

// versionFlag adds a required --version N.
func versionFlag(c *cobra.Command, v *uint32, what string) {
	c.Flags().Uint32Var(v, "version", 0, "the version `N` to "+what+" (required)")
}

func checkVersion(c *cobra.Command, v uint32) error {
	if v == 0 {
		return usagef(cmdName(c), "--version N is required (versions start at 1)")
	}
	return nil
}

// summary renders a key in one line: "payments/db (aes-256-gcm): v1
// disabled, v2 enabled (minimum decrypt version 2)".
func summary(ki *keywardv1.KeyInfo) string {
	parts := make([]string, 0, len(ki.GetVersions()))
	for _, v := range ki.GetVersions() {
		parts = append(parts, fmt.Sprintf("v%d %s", v.GetVersion(), stateName(v.GetState())))
	}
	s := fmt.Sprintf("%s (%s): %s", ki.GetKey(), ki.GetKeyType(), strings.Join(parts, ", "))
	if len(parts) == 0 {
		s = fmt.Sprintf("%s (%s): no versions", ki.GetKey(), ki.GetKeyType())
	}
	if m := ki.GetMinDecryptVersion(); m > 0 {
		s += fmt.Sprintf(" (minimum decrypt version %d)", m)
	}
	if ki.GetAdopted() {
		s += " (v1 adopted)"
	}
	if n := ki.GetNextRotation(); n != nil {
		s += fmt.Sprintf(" (rotates every %s, next %s)", keys.FormatPeriod(time.Duration(ki.GetRotationPeriodSeconds())*time.Second), n.AsTime().UTC().Format(time.RFC3339))
	}
	return s + disableSummary(ki)
}

func stateName(s keywardv1.VersionState) string {
	switch s {
	case keywardv1.VersionState_ENABLED:
		return "enabled"
	case keywardv1.VersionState_DISABLED:
		return "disabled"
	case keywardv1.VersionState_DESTROYED:
		return "destroyed"
	}
	return "unknown"
}

// adminCmd is the shape of every key lifecycle command: validate, call,
// print "<done> <summary>".
func (a *app) adminCmd(c *cobra.Command, done string, check func(*cobra.Command, string) error,
	call func(context.Context, *client.Client, string) (*keywardv1.KeyInfo, error)) *cobra.Command {
	c.Args = oneName
	c.ValidArgsFunction = a.completeName()
	c.RunE = func(c *cobra.Command, args []string) error {
		if check != nil {
			if err := check(c, args[0]); err != nil {
				return err
			}
		}
		return a.withClient(c, func(ctx context.Context, kc *client.Client) error {
			ki, err := call(ctx, kc, args[0])
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(a.stdout, "%s %s\n", done, summary(ki))
			return err
		})
	}
	return c
}

func (a *app) keyCreateCmd() *cobra.Command {
	var typ string
	c := a.adminCmd(&cobra.Command{
		Use:   "create NAME --type TYPE",
		Short: "create a key; version 1 is generated inside the device",
		Long: `Creates a key. Its version 1 is generated inside the device, not extractable.
Names are segments of [a-z0-9][a-z0-9._-]* joined by "/", at most 128 bytes.
Types: aes-256-gcm (wrap, unwrap, rewrap, datakey), hmac-sha256 (mac,
verify-mac), ecdsa-p256, rsa-3072-pss, ed25519 (sign, verify, pubkey; where
the device supports them).`,
		Example: `  keyward key create payments/db-password --type aes-256-gcm
  keyward key create release/signing --type ed25519`,
	}, "created", func(c *cobra.Command, _ string) error { return checkType(c, typ) },
		func(ctx context.Context, kc *client.Client, name string) (*keywardv1.KeyInfo, error) {
			return kc.CreateKey(ctx, name, typ)
		})
	c.ValidArgsFunction = cobra.NoFileCompletions
	typeFlag(c, &typ)
	return c
}

func (a *app) keyRotateCmd() *cobra.Command {
	return a.adminCmd(&cobra.Command{
		Use:   "rotate NAME",
		Short: "add a version, used from now on for new wraps, signatures and MACs",
		Long: `Adds a version to the key, generated inside the device. New wraps, signatures
and MACs use it; blobs, signatures and MACs made with older versions keep
working while those stay enabled. "keyward rewrap" moves blobs to it.`,
		Example: `  keyward key rotate payments/db-password`,
	}, "rotated", nil, func(ctx context.Context, kc *client.Client, name string) (*keywardv1.KeyInfo, error) {
		return kc.RotateKey(ctx, name)
	})
}

// keyStateCmd is key enable or key disable.
func (a *app) keyStateCmd(enable bool) *cobra.Command {
	var version uint32
	verb, done, short, long := "disable", "disabled", "disable a version (reversible)",
		`Disables a version: nothing can be unwrapped, verified or MAC-checked with it
until it is enabled again. Reversible, unlike destroy.`
	if enable {
		verb, done, short, long = "enable", "enabled", "enable a disabled version again",
			`Enables a disabled version again. If the key has a disable-after delay
(key set --disable-versions-after) and the version is past it, keywardd
disables it again at its next check: a note on stderr says so.`
	}
	c := a.adminCmd(&cobra.Command{
		Use:     verb + " NAME --version N",
		Short:   short,
		Long:    long,
		Example: "  keyward key " + verb + " payments/db-password --version 1",
	}, done, func(c *cobra.Command, _ string) error { return checkVersion(c, version) },
		func(ctx context.Context, kc *client.Client, name string) (*keywardv1.KeyInfo, error) {
			ki, err := kc.SetVersionState(ctx, name, version, enable)
			if err == nil && enable {
				a.noteDisableDue(ki, version)
			}
			return ki, err
		})
	versionFlag(c, &version, verb)
	return c
}

func (a *app) keyDestroyCmd() *cobra.Command {
	var version uint32
	var yes bool
	c := a.adminCmd(&cobra.Command{
		Use:   "destroy NAME --version N --yes",
		Short: "delete a version's key object from the device, for good",
		Long: `Deletes a version's key object from the device. This cannot be undone:
every blob, signature or MAC made with that version becomes useless. Disable
the version first and wait until nothing needs it. Without --yes the command
refuses (exit 2).`,
		Example: `  keyward key disable payments/db-password --version 1
  keyward key destroy payments/db-password --version 1 --yes`,
	}, "destroyed", func(c *cobra.Command, name string) error {
		if err := checkVersion(c, version); err != nil {
			return err
		}
		if !yes {
			return usagef(cmdName(c), "refusing to destroy %s v%d without --yes: its key object is deleted from the device for good, and whatever it wrapped, signed or MAC'd can never be used again", name, version)
		}
		return nil
	}, func(ctx context.Context, kc *client.Client, name string) (*keywardv1.KeyInfo, error) {
		return kc.DestroyVersion(ctx, name, version)
	})
	versionFlag(c, &version, "destroy")
	c.Flags().BoolVar(&yes, "yes", false, "confirm that the version is to be destroyed for good")
	return c
}

func (a *app) keySetCmd() *cobra.Command {
	var f keySetFlags
	c := a.adminCmd(&cobra.Command{
		Use:   "set NAME [--min-decrypt-version N] [--rotation-period PERIOD] [--disable-versions-after DELAY]",
		Short: "set the oldest version that may still unwrap and verify, the rotation period, or when superseded versions are disabled",
		Long: `Sets the key's minimum decrypt version: versions below N can no longer unwrap
or verify, whatever their state (0 lifts the floor). Use it after rewrapping
every blob, to retire old versions in one step.

--rotation-period makes keywardd rotate the key by itself once its newest
version is that old: a whole number and a unit, d (days), h or m, from 1h
to 3650d; 0 stops scheduled rotation. The period is kept in the key's
record in the device, so every daemon sharing it agrees, and one of them
rotates. key show and key list print the next rotation. It needs the
key.set-rotation operation.

--disable-versions-after makes keywardd disable each enabled version once
the next newer version is that old (callers had that long to rewrap their
blobs), never the newest enabled version: written like a period, from 1d
to 3650d; 0 stops it. It is kept in the key's record too; key show and key
list print when the next version is due. A note on stderr names the
versions already past it, which keywardd disables at its next check. It
needs the key.set-disable-after operation.`,
		Example: `  keyward key set payments/db-password --min-decrypt-version 2
  keyward key set payments/db-password --rotation-period 90d
  keyward key set payments/db-password --rotation-period 90d --disable-versions-after 30d
  keyward key set payments/db-password --rotation-period 0`,
	}, "set", f.check, func(ctx context.Context, kc *client.Client, name string) (*keywardv1.KeyInfo, error) {
		ki, err := f.apply(ctx, kc, name)
		if err == nil && f.setAfter {
			a.noteDisableSet(ki)
		}
		return ki, err
	})
	c.Flags().Uint32Var(&f.minVersion, "min-decrypt-version", 0, "the oldest version `N` that may unwrap and verify (0: no floor)")
	c.Flags().StringVar(&f.periodText, "rotation-period", "", "rotate the key by itself every `PERIOD` (90d, 36h, 90m; 0: never)")
	c.Flags().StringVar(&f.afterText, "disable-versions-after", "", "disable a version by itself once the next newer one is `DELAY` old (30d, 48h; 0: never)")
	return c
}

func (a *app) keyAdoptCmd() *cobra.Command {
	var typ, uri string
	c := a.adminCmd(&cobra.Command{
		Use:   "adopt NAME --type TYPE --uri URI",
		Short: "make an existing device object version 1 of a new key",
		Long: `Adopts a key object that a security team generated in the device: it becomes
version 1 of a new key. --uri is an RFC 7512 PKCS#11 URI or the object's
label. Objects the device does not protect (extractable or ever so, not
sensitive or ever not, not private) are refused, and so is, whatever the URI
names it by, an object keyward uses itself (labelled "keyward:") or that
another key already uses. Usages the key type does not need (wrap, unwrap,
derive...) are turned off, or the object is refused when they cannot be. A
modifiable object (as pkcs11-tool makes them) is adopted: PKCS#11 cannot
make it unmodifiable; "keywardd doctor" reports it. The URI must not carry
a PIN.`,
		Example: `  keyward key adopt payments/legacy --type aes-256-gcm --uri 'pkcs11:object=legacy-master;type=secret-key'`,
	}, "adopted", func(c *cobra.Command, _ string) error {
		if err := checkType(c, typ); err != nil {
			return err
		}
		if uri == "" {
			return usagef(cmdName(c), "--uri is required")
		}
		return nil
	}, func(ctx context.Context, kc *client.Client, name string) (*keywardv1.KeyInfo, error) {
		return kc.AdoptKey(ctx, name, typ, uri)
	})
	c.ValidArgsFunction = cobra.NoFileCompletions
	typeFlag(c, &typ)
	c.Flags().StringVar(&uri, "uri", "", "RFC 7512 `URI` or label of the object in the device")
	return c
}

// keyJSON is a key in list and show --json.
type keyJSON struct {
	Key               string        `json:"key"`
	Type              string        `json:"type"`
	Created           *time.Time    `json:"created,omitempty"`
	MinDecryptVersion uint32        `json:"min_decrypt_version"`
	Adopted           bool          `json:"adopted"`
	Versions          []versionJSON `json:"versions"`
	// RotationPeriod ("90d") and NextRotation are set only for a key
	// with scheduled rotation.
	RotationPeriod string     `json:"rotation_period,omitempty"`
	NextRotation   *time.Time `json:"next_rotation,omitempty"`
	// DisableAfter ("30d") is set only for a key whose superseded
	// versions keywardd disables; NextDisable only while one is pending.
	DisableAfter string     `json:"disable_versions_after,omitempty"`
	NextDisable  *time.Time `json:"next_disable,omitempty"`
}

type versionJSON struct {
	Version uint32     `json:"version"`
	State   string     `json:"state"` // enabled, disabled, destroyed
	Created *time.Time `json:"created,omitempty"`
}

func toJSON(ki *keywardv1.KeyInfo) keyJSON {
	k := keyJSON{Key: ki.GetKey(), Type: ki.GetKeyType(), MinDecryptVersion: ki.GetMinDecryptVersion(),
		Adopted: ki.GetAdopted(), Versions: []versionJSON{}}
	if ki.GetCreated() != nil {
		t := ki.GetCreated().AsTime()
		k.Created = &t
	}
	if n := ki.GetNextRotation(); n != nil {
		t := n.AsTime()
		k.RotationPeriod, k.NextRotation = keys.FormatPeriod(time.Duration(ki.GetRotationPeriodSeconds())*time.Second), &t
	}
	k.DisableAfter, k.NextDisable = disableJSON(ki)
	for _, v := range ki.GetVersions() {
		vj := versionJSON{Version: v.GetVersion(), State: stateName(v.GetState())}
		if v.GetCreated() != nil {
			t := v.GetCreated().AsTime()
			vj.Created = &t
		}
		k.Versions = append(k.Versions, vj)
	}
	return k
}

func (a *app) keyListCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "list [--json]",
		Short: "list the keys, their types and versions",
		Long: `Lists every key: name, type and the state of each version. With --json:
{"keys": [{"key", "type", "created", "min_decrypt_version", "adopted",
"versions": [{"version", "state", "created"}], "rotation_period",
"next_rotation", "disable_versions_after", "next_disable"}]}
(rotation_period and next_rotation only for a key with scheduled rotation,
disable_versions_after only for a key whose superseded versions keywardd
disables, next_disable only while one is pending).`,
		Example: `  keyward key list
  keyward key list --json | jq -r '.keys[].key'`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return a.withClient(c, func(ctx context.Context, kc *client.Client) error {
				list, err := kc.ListKeys(ctx)
				if err != nil {
					return err
				}
				if asJSON {
					out := struct {
						Keys []keyJSON `json:"keys"`
					}{Keys: []keyJSON{}}
					for _, ki := range list {
						out.Keys = append(out.Keys, toJSON(ki))
					}
					return writeJSON(a.stdout, out)
				}
				return printList(a.stdout, list)
			})
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print the keys as JSON")
	return c
}

func printList(w io.Writer, list []*keywardv1.KeyInfo) error {
	if len(list) == 0 {
		_, err := fmt.Fprintln(w, "no keys")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tTYPE\tVERSIONS")
	for _, ki := range list {
		_, rest, _ := strings.Cut(summary(ki), ": ")
		fmt.Fprintf(tw, "%s\t%s\t%s\n", ki.GetKey(), ki.GetKeyType(), rest)
	}
	return tw.Flush()
}

func (a *app) keyShowCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "show NAME [--json]",
		Short: "show a key's type, versions and their states",
		Long: `Shows a key: type, creation time, minimum decrypt version, whether v1 was
adopted, and each version's state and creation time. --json prints the
object that key list --json prints for each key.`,
		Example:           `  keyward key show payments/db-password`,
		Args:              oneName,
		ValidArgsFunction: a.completeName(),
		RunE: func(c *cobra.Command, args []string) error {
			return a.withClient(c, func(ctx context.Context, kc *client.Client) error {
				ki, err := kc.DescribeKey(ctx, args[0])
				if err != nil {
					return err
				}
				if asJSON {
					return writeJSON(a.stdout, toJSON(ki))
				}
				return printKey(a.stdout, toJSON(ki))
			})
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print the key as JSON")
	return c
}

func printKey(w io.Writer, k keyJSON) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "key:\t%s\n", k.Key)
	fmt.Fprintf(tw, "type:\t%s\n", k.Type)
	fmt.Fprintf(tw, "created:\t%s\n", timeText(k.Created))
	minText := "none"
	if k.MinDecryptVersion > 0 {
		minText = fmt.Sprintf("v%d", k.MinDecryptVersion)
	}
	fmt.Fprintf(tw, "minimum decrypt version:\t%s\n", minText)
	if k.Adopted {
		fmt.Fprintf(tw, "adopted:\tv1 was adopted from an existing device object\n")
	}
	if k.NextRotation != nil {
		fmt.Fprintf(tw, "rotation:\tevery %s by keywardd; next %s\n", k.RotationPeriod, timeText(k.NextRotation))
	} else {
		fmt.Fprintf(tw, "rotation:\tnot scheduled\n")
	}
	fmt.Fprintf(tw, "disable:\t%s\n", disableText(k))
	for i, v := range k.Versions {
		label := ""
		if i == 0 {
			label = "versions:"
		}
		fmt.Fprintf(tw, "%s\tv%d %s, created %s\n", label, v.Version, v.State, timeText(v.Created))
	}
	return tw.Flush()
}

func timeText(t *time.Time) string {
	if t == nil {
		return "unknown"
	}
	return t.UTC().Format(time.RFC3339)
}
