package main

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	keywardv1 "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/client"
)

func (a *app) credentialCmd() *cobra.Command {
	return groupCmd("credential", "store secrets that keywardd serves to systemd units (LoadCredential=)",
		`  printf %s "$DB_PASSWORD" | keyward credential put --unit payments.service --id db-password --key payments/creds
  keyward credential list --unit payments.service`,
		a.credPutCmd(), a.credListCmd(), a.credRmCmd(), a.credRewrapCmd(),
	)
}

// credFlags adds --unit and --id; required says whether they must be given.
func credFlags(c *cobra.Command, unit, id *string, required bool) {
	what := "only this"
	if required {
		what = "the (required)"
	}
	c.Flags().StringVar(unit, "unit", "", what+" systemd `UNIT` (payments.service, app@.service)")
	c.Flags().StringVar(id, "id", "", what+" credential `ID`, as in LoadCredential=ID:...")
}

func needCred(c *cobra.Command, unit, id string) error {
	if unit == "" || id == "" {
		return usagef(cmdName(c), "--unit UNIT and --id ID are required")
	}
	return nil
}

func (a *app) credPutCmd() *cobra.Command {
	var unit, id, key string
	var replace bool
	c := &cobra.Command{
		Use:   "put --unit UNIT --id ID --key NAME [--replace]",
		Short: "store a secret from stdin as a unit's credential",
		Long: `Reads a secret from stdin (1 byte to 64 KiB, binary safe, kept exactly:
use printf %s, not echo, unless the newline belongs to it) and has keywardd
wrap it under an aes-256-gcm key, bound to the unit and id, into its
credential store (credentials_dir). keywardd then serves it when systemd
starts the unit with

  LoadCredential=ID:/run/keyward/credentials.sock

if a rule grants the unit the "credential" operation on the key. Storing
needs "credential.put" on the key. A template (app@.service) serves every
instance that has no credential of its own. An existing credential is kept
unless --replace is given. Replacing one stored under another key, or
giving an instance its own where its template has one, also needs
"credential.put" on that credential's key.`,
		Example: `  printf %s "$DB_PASSWORD" | keyward credential put --unit payments.service --id db-password --key payments/creds
  keyward credential put --unit app@.service --id api-token --key app/creds --replace < token.txt`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := needCred(c, unit, id); err != nil {
				return err
			}
			if err := checkKey(c, key); err != nil {
				return err
			}
			secret, err := readInput(cmdName(c), a.stdin, maxMessage, "secret")
			if err != nil {
				return err
			}
			defer clear(secret)
			if len(secret) == 0 {
				return usagef(cmdName(c), "no secret on stdin (an empty credential is never served)")
			}
			return a.withClient(c, func(ctx context.Context, kc *client.Client) error {
				ci, err := kc.PutCredential(ctx, unit, id, key, secret, replace)
				if err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "stored %s/%s under %s v%d\n", ci.GetUnit(), ci.GetId(), ci.GetKey(), ci.GetVersion())
				return nil
			})
		},
	}
	credFlags(c, &unit, &id, true)
	a.keyFlag(c, &key, "aes-256-gcm key")
	c.Flags().BoolVar(&replace, "replace", false, "overwrite an existing credential of that unit and id")
	return c
}

// credJSON is a credential in list --json's output.
type credJSON struct {
	Unit     string    `json:"unit"`
	ID       string    `json:"id"`
	Key      string    `json:"key"`
	Version  uint32    `json:"version"`
	Modified time.Time `json:"modified"`
}

func (a *app) credListCmd() *cobra.Command {
	var unit string
	var asJSON bool
	c := &cobra.Command{
		Use:   "list [--unit UNIT] [--json]",
		Short: "list stored credentials (never their values)",
		Long: `Lists the stored credentials whose key you may manage (credential.put):
unit, id, key, key version and the age of the file. Values are never shown.`,
		Example: `  keyward credential list
  keyward credential list --unit payments.service --json`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return a.withClient(c, func(ctx context.Context, kc *client.Client) error {
				cs, err := kc.ListCredentials(ctx, unit)
				if err != nil {
					return err
				}
				return a.printCreds(cs, asJSON)
			})
		},
	}
	c.Flags().StringVar(&unit, "unit", "", "only this systemd `UNIT`")
	c.Flags().BoolVar(&asJSON, "json", false, "print the list as JSON")
	return c
}

func (a *app) printCreds(cs []*keywardv1.CredentialInfo, asJSON bool) error {
	if asJSON {
		out := make([]credJSON, 0, len(cs))
		for _, ci := range cs {
			out = append(out, credJSON{ci.GetUnit(), ci.GetId(), ci.GetKey(), ci.GetVersion(), ci.GetModified().AsTime()})
		}
		return writeJSON(a.stdout, out)
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "UNIT\tID\tKEY\tVERSION\tAGE")
	for _, ci := range cs {
		age := time.Since(ci.GetModified().AsTime()).Round(time.Second)
		fmt.Fprintf(tw, "%s\t%s\t%s\tv%d\t%s\n", ci.GetUnit(), ci.GetId(), ci.GetKey(), ci.GetVersion(), age)
	}
	return tw.Flush()
}

func (a *app) credRmCmd() *cobra.Command {
	var unit, id string
	c := &cobra.Command{
		Use:   "rm --unit UNIT --id ID",
		Short: "remove a stored credential",
		Long: `Removes a unit's stored credential (never its template's). The unit's next
start fails if its unit file still names the credential.`,
		Example: `  keyward credential rm --unit payments.service --id db-password`,
		Args:    noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := needCred(c, unit, id); err != nil {
				return err
			}
			return a.withClient(c, func(ctx context.Context, kc *client.Client) error {
				ci, err := kc.RemoveCredential(ctx, unit, id)
				if err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "removed %s/%s\n", ci.GetUnit(), ci.GetId())
				return nil
			})
		},
	}
	credFlags(c, &unit, &id, true)
	return c
}

func (a *app) credRewrapCmd() *cobra.Command {
	var unit, id string
	var asJSON bool
	c := &cobra.Command{
		Use:   "rewrap [--unit UNIT] [--id ID] [--json]",
		Short: "wrap stored credentials under their key's newest version",
		Long: `After "keyward key rotate", wraps the stored credentials (all, or those of
--unit and --id) again under the newest version of their key, in place;
those already there are left alone. Units get the same secret as before;
restart them only when the secret itself changed (credential put --replace).
Lists the credentials as they are afterwards.`,
		Example: `  keyward key rotate payments/creds && keyward credential rewrap
  keyward credential rewrap --unit payments.service`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return a.withClient(c, func(ctx context.Context, kc *client.Client) error {
				cs, err := kc.RewrapCredentials(ctx, unit, id)
				if err != nil {
					return err
				}
				return a.printCreds(cs, asJSON)
			})
		},
	}
	credFlags(c, &unit, &id, false)
	c.Flags().BoolVar(&asJSON, "json", false, "print the list as JSON")
	return c
}
