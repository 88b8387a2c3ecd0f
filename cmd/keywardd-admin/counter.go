package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/keyward/keyward/internal/secretfile"
	"github.com/keyward/keyward/tpm"
)

const defineCounterLong = `Defines the rollback counter of a TPM state directory with the owner
hierarchy's authorisation, for a TPM whose owner authorisation is set:
keywardd cannot define the counter there and refuses to start, naming this
command. The counter is an NV counter index in the TPM (its handle derived
from the state directory's keyring key) that every key change advances, so
that an older copy of the state directory is refused (see docs/tpm.md,
the rollback counter).

Run it once, after keywardd's first start on the state directory (which
pins the parent and makes the keyring key, then stops at the counter), with
the same device, state directory, auth secret and parent handle as
keywardd's configuration. It proves the auth secret on the keyring key
before anything else (the index's own authorisation is derived from it),
sends neither the owner's authorisation nor the auth secret in clear, writes
nothing in the state directory and takes no lock. keywardd's next start
takes the counter into use.

--owner-auth-file holds the owner hierarchy's authorisation value as set
with tpm2_changeauth -c o (the file's bytes, one trailing newline ignored;
mode 0600 or 0400). Exit status 0: defined, or defined already (said so).

--trust-current-state is for a state directory whose records were stamped by
a counter that is gone together with its manifest.json (keywardd refuses to
start and says so: someone removed both, and older records may have been put
back). After finding out why, it accepts the state directory as it is now:
with keywardd stopped (it takes the state directory's lock), it defines the
counter if needed (--owner-auth-file when the owner authorisation is set),
advances it, and writes a manifest for the records present. The protection
holds again from then on.`

type defineCounterOptions struct {
	TPMDevice     string
	StateDir      string
	PINFile       string
	ParentHandle  string
	OwnerAuthFile string
	Trust         bool
}

func (a *app) defineCounterCmd() *cobra.Command {
	var o defineCounterOptions
	c := &cobra.Command{
		Use:   "define-counter --tpm-device DEV --state-dir DIR (--owner-auth-file FILE | --trust-current-state [--owner-auth-file FILE]) [--pin-file FILE] [--parent-handle HANDLE]",
		Short: "define a TPM state directory's rollback counter with the owner's authorisation (TPMs whose owner authorisation is set)",
		Long:  defineCounterLong,
		Example: `  keywardd define-counter --tpm-device /dev/tpmrm0 --state-dir /var/lib/keyward/tpm \
      --pin-file /etc/keyward/pin --parent-handle 0x81000001 --owner-auth-file /root/owner-auth`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			const cmd = "define-counter"
			if o.TPMDevice == "" || o.StateDir == "" || o.OwnerAuthFile == "" && !o.Trust {
				return usagef(cmd, "--tpm-device, --state-dir and --owner-auth-file (or --trust-current-state) are required")
			}
			if o.PINFile == "" && os.Getenv("CREDENTIALS_DIRECTORY") == "" {
				return usagef(cmd, "--pin-file is required when $CREDENTIALS_DIRECTORY is not set")
			}
			parent, err := parseParentHandle(o.ParentHandle)
			if err != nil {
				return usagef(cmd, "--parent-handle: %v", err)
			}
			var owner []byte
			if o.OwnerAuthFile != "" {
				if owner, err = secretfile.Read(o.OwnerAuthFile); err != nil {
					return fmt.Errorf("define-counter: owner authorisation: %w", err)
				}
				defer secretfile.Zero(owner)
			}
			cfg := tpm.Config{Device: o.TPMDevice, StateDir: o.StateDir, PINFile: o.PINFile, ParentHandle: parent}
			if o.Trust {
				cfg.OwnerAuth, cfg.TrustCurrentState = owner, true
				be, err := tpm.Open(c.Context(), cfg)
				if err != nil {
					return fmt.Errorf("define-counter: %w", err)
				}
				status := be.RollbackStatus()
				if err := be.Close(); err != nil {
					return fmt.Errorf("define-counter: %w", err)
				}
				fmt.Fprintf(a.stdout, "rollback counter of %s: %s\n", o.StateDir, status)
				return nil
			}
			index, err := tpm.DefineCounter(c.Context(), cfg, owner)
			switch {
			case errors.Is(err, tpm.ErrCounterDefined):
				fmt.Fprintf(a.stdout, "rollback counter of %s: NV index %s, defined already\n", o.StateDir, index)
				return nil
			case err != nil:
				return fmt.Errorf("define-counter: %w", err)
			}
			fmt.Fprintf(a.stdout, "rollback counter of %s: NV index %s defined; keywardd's next start takes it into use\n", o.StateDir, index)
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&o.TPMDevice, "tpm-device", "", "the TPM `DEV` (/dev/tpmrm0, swtpm:HOST:PORT, swtpm+unix:PATH)")
	f.StringVar(&o.StateDir, "state-dir", "", "the TPM backend's state `DIR` (backend.state_dir)")
	f.StringVar(&o.PINFile, "pin-file", "", "the auth secret, in a `FILE` of mode 0600 or 0400 (default $CREDENTIALS_DIRECTORY/pin)")
	f.StringVar(&o.ParentHandle, "parent-handle", "", "the persistent parent `HANDLE` of backend.parent_handle (0x81000000..0x81ffffff); unset: the default parent")
	f.StringVar(&o.OwnerAuthFile, "owner-auth-file", "", "the owner hierarchy's authorisation, in a `FILE` of mode 0600 or 0400")
	f.BoolVar(&o.Trust, "trust-current-state", false, "accept the state directory as it is (records stamped by a counter that is gone with its manifest); keywardd stopped")
	return c
}

// parseParentHandle reads --parent-handle: empty (the default parent) or a
// persistent handle, hex (0x81000001) or decimal.
func parseParentHandle(s string) (uint32, error) {
	if s == "" {
		return 0, nil
	}
	v, err := strconv.ParseUint(s, 0, 32)
	if err != nil || v>>24 != 0x81 {
		return 0, fmt.Errorf("%q: want a persistent handle, 0x81000000..0x81ffffff", s)
	}
	return uint32(v), nil
}
