package main

import (
	"context"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/keyward/keyward/client"
	"github.com/keyward/keyward/envelope"
	"github.com/keyward/keyward/keys"
)

// withClient dials the daemon and runs fn; --timeout bounds both. Input is
// read before, so that a person typing a secret is not timed.
func (a *app) withClient(c *cobra.Command, fn func(context.Context, *client.Client) error) error {
	ctx := c.Context()
	if a.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, a.timeout)
		defer cancel()
	}
	kc, err := a.dial(ctx)
	if err != nil {
		return err
	}
	defer kc.Close()
	return fn(ctx, kc)
}

// checkKey validates the --key flag.
func checkKey(c *cobra.Command, key string) error {
	if key == "" {
		return usagef(cmdName(c), "--key is required")
	}
	if err := keys.ValidateName(key); err != nil {
		return usagef(cmdName(c), "--key: %v", err)
	}
	return nil
}

// keyFlag adds --key NAME, completed with the daemon's keys of the types
// that fit the command.
func (a *app) keyFlag(c *cobra.Command, key *string, what string, types ...keys.Type) {
	c.Flags().StringVar(key, "key", "", "`NAME` of the "+what)
	c.RegisterFlagCompletionFunc("key", a.completeKeys(types...))
}

// completeKeys completes key names from the daemon (nothing when it does
// not answer within a second).
func (a *app) completeKeys(types ...keys.Type) cobra.CompletionFunc {
	return func(c *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		ctx, cancel := context.WithTimeout(c.Context(), time.Second)
		defer cancel()
		kc, err := a.dial(ctx, client.WithRetry(1, 0))
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		defer kc.Close()
		list, err := kc.ListKeys(ctx)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var out []cobra.Completion
		for _, k := range list {
			if strings.HasPrefix(k.GetKey(), toComplete) && (len(types) == 0 || slices.Contains(types, keys.Type(k.GetKeyType()))) {
				out = append(out, cobra.CompletionWithDesc(k.GetKey(), k.GetKeyType()))
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

// completeName completes a command's one NAME argument.
func (a *app) completeName(types ...keys.Type) cobra.CompletionFunc {
	keysFn := a.completeKeys(types...)
	return func(c *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return keysFn(c, args, toComplete)
	}
}

func (a *app) wrapCmd() *cobra.Command {
	var key string
	var ctxFlag contextFlag
	var binary bool
	c := &cobra.Command{
		Use:   "wrap --key NAME [--context k=v]... [--binary]",
		Short: "encrypt a secret from stdin (at most 64 KiB); the blob goes to stdout",
		Long: `Encrypts the secret read from stdin (at most 64 KiB, binary safe) with the
newest enabled version of an aes-256-gcm key, in the device, and writes the
wrapped blob to stdout as one base64 line (raw bytes with --binary). The blob
names its key and version; store it anywhere.

Each --context pair is bound into the blob: unwrap must be given exactly the
same pairs. Use it to tie a blob to its purpose (app=billing,
field=db-password) so that it cannot be replayed elsewhere. Context values
appear on the command line and in process listings: they are not secrets.

Larger data: make a data key with "keyward datakey" and encrypt the data
with it.`,
		Example: `  printf %s "$DB_PASSWORD" | keyward wrap --key payments/db-password --context app=billing > db-password.kw
  keyward wrap --key backups/tar --binary < secret.bin > secret.kw`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cmd := cmdName(c)
			if err := checkKey(c, key); err != nil {
				return err
			}
			pairs, err := ctxFlag.pairs(cmd)
			if err != nil {
				return err
			}
			pt, err := readInput(cmd, a.stdin, maxMessage, "plaintext")
			if err != nil {
				return err
			}
			defer clear(pt)
			return a.withClient(c, func(ctx context.Context, kc *client.Client) error {
				resp, err := kc.Wrap(ctx, key, pt, pairs)
				if err != nil {
					return err
				}
				return writeBlob(a.stdout, resp.GetCiphertext(), binary)
			})
		},
	}
	a.keyFlag(c, &key, "aes-256-gcm key", keys.AES256GCM)
	c.Flags().Var(&ctxFlag, "context", "encryption context pair, bound into the blob; repeat for more")
	c.Flags().BoolVar(&binary, "binary", false, "write the blob as raw bytes instead of a base64 line")
	return c
}

func (a *app) unwrapCmd() *cobra.Command {
	var ctxFlag contextFlag
	var binary bool
	c := &cobra.Command{
		Use:   "unwrap [--context k=v]... [--binary]",
		Short: "decrypt a blob from stdin; the plaintext goes to stdout",
		Long: `Reads a blob made by wrap (or a datakey ciphertext) from stdin, as one base64
line (surrounding whitespace ignored) or raw bytes with --binary, and writes
the plaintext to stdout, byte for byte. The blob names its key and version.

The --context pairs must be exactly those given to wrap; any difference, a
tampered blob or another key's blob fails as "decryption failed" (exit 1).
A disabled, destroyed or too old version (below the key's minimum decrypt
version) fails too, and says so.`,
		Example: `  keyward unwrap --context app=billing < db-password.kw
  DB_PASSWORD=$(keyward unwrap --context app=billing < db-password.kw)`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			pairs, blob, err := a.blobInput(c, &ctxFlag, binary)
			if err != nil {
				return err
			}
			return a.withClient(c, func(ctx context.Context, kc *client.Client) error {
				resp, err := kc.Unwrap(ctx, blob, pairs)
				if err != nil {
					return nameBlob(err, blob)
				}
				defer clear(resp.Plaintext)
				_, err = a.stdout.Write(resp.GetPlaintext())
				return err
			})
		},
	}
	c.Flags().Var(&ctxFlag, "context", "encryption context pair given to wrap; repeat for more")
	c.Flags().BoolVar(&binary, "binary", false, "read the blob as raw bytes instead of a base64 line")
	return c
}

// blobInput reads what unwrap and rewrap take: the --context pairs and a
// blob from stdin.
func (a *app) blobInput(c *cobra.Command, ctxFlag *contextFlag, binary bool) (map[string]string, []byte, error) {
	cmd := cmdName(c)
	pairs, err := ctxFlag.pairs(cmd)
	if err != nil {
		return nil, nil, err
	}
	blob, err := readBlob(cmd, a.stdin, binary)
	if err != nil {
		return nil, nil, err
	}
	return pairs, blob, nil
}

// nameBlob adds the key and version a blob names to a call's error, so that
// "key version is disabled" says which: the daemon's message need not.
func nameBlob(err error, blob []byte) error {
	var ce *client.Error
	if h, _, derr := envelope.Decode(blob); derr == nil && errors.As(err, &ce) {
		ce.Op = fmt.Sprintf("%s %s v%d", ce.Op, h.Name, h.Version)
	}
	return err
}

func (a *app) rewrapCmd() *cobra.Command {
	var ctxFlag contextFlag
	var binary bool
	c := &cobra.Command{
		Use:   "rewrap [--context k=v]... [--binary]",
		Short: "re-encrypt a blob from stdin with the key's newest version",
		Long: `Reads a blob from stdin (as unwrap does) and writes a new blob, made with the
newest enabled version of the same key under the same context, to stdout in
the same form. The plaintext never leaves the daemon. Run it over stored
blobs after "keyward key rotate"; then the old version can be disabled.`,
		Example: `  keyward key rotate payments/db-password
  keyward rewrap --context app=billing < db-password.kw > db-password.kw.new && mv db-password.kw.new db-password.kw`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			pairs, blob, err := a.blobInput(c, &ctxFlag, binary)
			if err != nil {
				return err
			}
			return a.withClient(c, func(ctx context.Context, kc *client.Client) error {
				resp, err := kc.Rewrap(ctx, blob, pairs)
				if err != nil {
					return nameBlob(err, blob)
				}
				return writeBlob(a.stdout, resp.GetCiphertext(), binary)
			})
		},
	}
	c.Flags().Var(&ctxFlag, "context", "encryption context pair given to wrap; repeat for more")
	c.Flags().BoolVar(&binary, "binary", false, "read and write blobs as raw bytes instead of base64 lines")
	return c
}

// dataKeyJSON is datakey's output.
type dataKeyJSON struct {
	Key        string `json:"key"`
	Version    uint32 `json:"version"`
	Ciphertext string `json:"ciphertext"`          // base64 blob, as wrap prints it
	Plaintext  string `json:"plaintext,omitempty"` // base64 data key
}

func (a *app) datakeyCmd() *cobra.Command {
	var key string
	var ctxFlag contextFlag
	var length int
	var noPlaintext bool
	c := &cobra.Command{
		Use:   "datakey --key NAME [--context k=v]... [--length N] [--no-plaintext]",
		Short: "make a random data key, also wrapped with NAME; JSON to stdout",
		Long: `Asks the daemon for a fresh random data key (--length bytes, default 32) and
the same key wrapped with an aes-256-gcm key under the context, and writes
JSON to stdout:

  {"key": NAME, "version": N, "ciphertext": BASE64, "plaintext": BASE64}

"ciphertext" is a blob exactly like wrap's output: store it beside the data
you encrypt with the key, and "keyward unwrap" gives the data key back.
"plaintext" is the data key itself (omitted with --no-plaintext, to make a
key now and unwrap it later where it is used): use it, never store it.`,
		Example: `  keyward datakey --key backups/master --context host=db1 > dk.json
  jq -r .ciphertext dk.json | keyward unwrap --context host=db1 > dk.bin`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cmd := cmdName(c)
			if err := checkKey(c, key); err != nil {
				return err
			}
			if length < 16 || length > keys.MaxRandom {
				return usagef(cmd, "--length %d: want 16 to %d bytes", length, keys.MaxRandom)
			}
			pairs, err := ctxFlag.pairs(cmd)
			if err != nil {
				return err
			}
			return a.withClient(c, func(ctx context.Context, kc *client.Client) error {
				resp, err := kc.GenerateDataKey(ctx, key, pairs, length, noPlaintext)
				if err != nil {
					return err
				}
				defer clear(resp.Plaintext)
				out := dataKeyJSON{Key: resp.GetKey(), Version: resp.GetVersion(), Ciphertext: base64.StdEncoding.EncodeToString(resp.GetCiphertext())}
				if !noPlaintext {
					out.Plaintext = base64.StdEncoding.EncodeToString(resp.GetPlaintext())
				}
				return writeJSON(a.stdout, out)
			})
		},
	}
	a.keyFlag(c, &key, "aes-256-gcm key that wraps the data key", keys.AES256GCM)
	c.Flags().Var(&ctxFlag, "context", "encryption context pair, bound into the ciphertext; repeat for more")
	c.Flags().IntVar(&length, "length", 32, "data key length in `BYTES` (16 to 1024)")
	c.Flags().BoolVar(&noPlaintext, "no-plaintext", false, "return only the wrapped data key")
	return c
}

// signJSON is sign --json's output.
type signJSON struct {
	Key       string `json:"key"`
	Version   uint32 `json:"version"`
	Signature string `json:"signature"`
}

func (a *app) signCmd() *cobra.Command {
	var key string
	var asJSON bool
	c := &cobra.Command{
		Use:   "sign --key NAME [--json]",
		Short: "sign a message from stdin; the signature goes to stdout as base64",
		Long: `Signs the message read from stdin (at most 64 KiB) with the newest enabled
version of an ecdsa-p256, rsa-3072-pss or ed25519 key, in the device, and
writes the signature as one base64 line; with --json, {"key", "version",
"signature"}. ECDSA and RSA-PSS sign the message's SHA-256 digest (ECDSA
signatures are ASN.1 DER with a low s; RSA-PSS salts are 32 bytes: keyward
verify refuses any other form); Ed25519 signs the message itself. Check with
"keyward verify", or with "keyward pubkey" and any other tool.`,
		Example: `  keyward sign --key release/signing < release.tar.gz > release.tar.gz.sig
  keyward sign --key release/signing --json < release.tar.gz`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cmd := cmdName(c)
			if err := checkKey(c, key); err != nil {
				return err
			}
			msg, err := readInput(cmd, a.stdin, maxMessage, "message")
			if err != nil {
				return err
			}
			return a.withClient(c, func(ctx context.Context, kc *client.Client) error {
				resp, err := kc.Sign(ctx, key, msg)
				if err != nil {
					return err
				}
				sig := base64.StdEncoding.EncodeToString(resp.GetSignature())
				if asJSON {
					return writeJSON(a.stdout, signJSON{Key: resp.GetKey(), Version: resp.GetVersion(), Signature: sig})
				}
				_, err = fmt.Fprintln(a.stdout, sig)
				return err
			})
		},
	}
	a.keyFlag(c, &key, "signing key", keys.ECDSAP256, keys.RSA3072PSS, keys.Ed25519)
	c.Flags().BoolVar(&asJSON, "json", false, "print key, version and signature as JSON")
	return c
}

// verifyJSON is verify's and verify-mac's --json output.
type verifyJSON struct {
	Valid   bool   `json:"valid"`
	Version uint32 `json:"version,omitempty"`
}

// verdict prints "valid" or "invalid" (or JSON) and turns invalid into
// exit status 1.
func (a *app) verdict(valid bool, version uint32, asJSON bool) error {
	var err error
	switch {
	case asJSON:
		err = writeJSON(a.stdout, verifyJSON{Valid: valid, Version: version})
	case valid:
		_, err = fmt.Fprintln(a.stdout, "valid")
	default:
		_, err = fmt.Fprintln(a.stdout, "invalid")
	}
	if err == nil && !valid {
		return errInvalid
	}
	return err
}

func (a *app) verifyCmd() *cobra.Command {
	var key, sigFlag string
	var version uint32
	var asJSON bool
	c := &cobra.Command{
		Use:   "verify --key NAME --signature BASE64 [--version N] [--json]",
		Short: `check a signature over a message from stdin; prints "valid" or "invalid"`,
		Long: `Checks a signature made by "keyward sign" over the message read from stdin.
Prints one word, "valid" (exit 0) or "invalid" (exit 1), or with --json
{"valid", "version"}. Without --version any version that may verify is
tried; a disabled or destroyed --version is an error.`,
		Example: `  keyward verify --key release/signing --signature "$(cat release.tar.gz.sig)" < release.tar.gz`,
		Args:    noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cmd := cmdName(c)
			if err := checkKey(c, key); err != nil {
				return err
			}
			if sigFlag == "" {
				return usagef(cmd, "--signature is required")
			}
			sig, err := decodeB64(cmd, "--signature", sigFlag)
			if err != nil {
				return err
			}
			msg, err := readInput(cmd, a.stdin, maxMessage, "message")
			if err != nil {
				return err
			}
			return a.withClient(c, func(ctx context.Context, kc *client.Client) error {
				valid, v, err := kc.Verify(ctx, key, version, msg, sig)
				if err != nil {
					return err
				}
				return a.verdict(valid, v, asJSON)
			})
		},
	}
	a.keyFlag(c, &key, "signing key", keys.ECDSAP256, keys.RSA3072PSS, keys.Ed25519)
	c.Flags().StringVar(&sigFlag, "signature", "", "the signature, standard `BASE64` as sign prints it")
	c.Flags().Uint32Var(&version, "version", 0, "verify with version `N` only (default: any that may verify)")
	c.Flags().BoolVar(&asJSON, "json", false, "print the verdict as JSON")
	return c
}

// macJSON is mac --json's output.
type macJSON struct {
	Key     string `json:"key"`
	Version uint32 `json:"version"`
	MAC     string `json:"mac"`
	Token   string `json:"token"`
}

func (a *app) macCmd() *cobra.Command {
	var key string
	var asJSON bool
	c := &cobra.Command{
		Use:   "mac --key NAME [--json]",
		Short: "HMAC a message from stdin; prints a kw-mac:vN:BASE64 token",
		Long: `Computes HMAC-SHA256 of the message read from stdin (at most 64 KiB) with the
newest enabled version of an hmac-sha256 key, in the device, and prints one
token:

  kw-mac:v<N>:<base64 MAC>

The token carries the version, so storing that one string is enough:
"keyward verify-mac --mac TOKEN" checks with exactly that version, even
after rotations. With --json: {"key", "version", "mac" (base64), "token"}.

Store only a MAC: to keep API tokens or other secrets that must only be
recognised later, store their MAC token instead of them; a leaked table is
useless without the device.`,
		Example: `  printf %s "$API_TOKEN" | keyward mac --key api/tokens      # prints kw-mac:v1:...
  printf %s "$API_TOKEN" | keyward mac --key api/tokens --json`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cmd := cmdName(c)
			if err := checkKey(c, key); err != nil {
				return err
			}
			msg, err := readInput(cmd, a.stdin, maxMessage, "message")
			if err != nil {
				return err
			}
			defer clear(msg)
			return a.withClient(c, func(ctx context.Context, kc *client.Client) error {
				resp, err := kc.Mac(ctx, key, msg)
				if err != nil {
					return err
				}
				token := formatMacToken(resp.GetVersion(), resp.GetMac())
				if asJSON {
					return writeJSON(a.stdout, macJSON{Key: resp.GetKey(), Version: resp.GetVersion(),
						MAC: base64.StdEncoding.EncodeToString(resp.GetMac()), Token: token})
				}
				_, err = fmt.Fprintln(a.stdout, token)
				return err
			})
		},
	}
	a.keyFlag(c, &key, "hmac-sha256 key", keys.HMACSHA256)
	c.Flags().BoolVar(&asJSON, "json", false, "print key, version, MAC and token as JSON")
	return c
}

func (a *app) verifyMacCmd() *cobra.Command {
	var key, macFlag string
	var version uint32
	var asJSON bool
	c := &cobra.Command{
		Use:   "verify-mac --key NAME --mac TOKEN|BASE64 [--version N] [--json]",
		Short: `check a MAC over a message from stdin; prints "valid" or "invalid"`,
		Long: `Checks a MAC over the message read from stdin, in the device. --mac takes the
kw-mac:vN:BASE64 token that "keyward mac" prints (checked with version N
only), or a bare base64 MAC, checked with --version N when given, else with
any version that may verify. Prints one word, "valid" (exit 0) or "invalid"
(exit 1), or with --json {"valid", "version"}.`,
		Example: `  printf %s "$PRESENTED_TOKEN" | keyward verify-mac --key api/tokens --mac "$STORED_MAC_TOKEN"`,
		Args:    noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cmd := cmdName(c)
			if err := checkKey(c, key); err != nil {
				return err
			}
			if macFlag == "" {
				return usagef(cmd, "--mac is required")
			}
			tokenVersion, mac, err := parseMac(macFlag)
			if err != nil {
				return usagef(cmd, "--mac: %v", err)
			}
			v := version
			switch {
			case tokenVersion != 0 && version != 0 && tokenVersion != version:
				return usagef(cmd, "--version %d differs from the token's v%d", version, tokenVersion)
			case tokenVersion != 0:
				v = tokenVersion
			}
			msg, err := readInput(cmd, a.stdin, maxMessage, "message")
			if err != nil {
				return err
			}
			defer clear(msg)
			return a.withClient(c, func(ctx context.Context, kc *client.Client) error {
				valid, got, err := kc.VerifyMac(ctx, key, v, msg, mac)
				if err != nil {
					return err
				}
				return a.verdict(valid, got, asJSON)
			})
		},
	}
	a.keyFlag(c, &key, "hmac-sha256 key", keys.HMACSHA256)
	c.Flags().StringVar(&macFlag, "mac", "", "the MAC: a kw-mac:vN:BASE64 `TOKEN` from mac, or bare base64")
	c.Flags().Uint32Var(&version, "version", 0, "for a bare base64 MAC: verify with version `N` only")
	c.Flags().BoolVar(&asJSON, "json", false, "print the verdict as JSON")
	return c
}

func (a *app) pubkeyCmd() *cobra.Command {
	var version uint32
	c := &cobra.Command{
		Use:   "pubkey NAME [--version N]",
		Short: "print the public key of a signing key as PEM",
		Long: `Prints the public key (PKIX "PUBLIC KEY" PEM) of an ecdsa-p256, rsa-3072-pss
or ed25519 key's newest enabled version, or of --version N, so that anyone
can verify signatures without keyward. A version below the key's minimum
decrypt version is served (keyward verify refuses it); a disabled or
destroyed version is not.`,
		Example: `  keyward pubkey release/signing > signing.pem
  openssl pkeyutl -verify -pubin -inkey signing.pem -rawin -in msg -sigfile msg.sig   # ed25519`,
		Args:              oneName,
		ValidArgsFunction: a.completeName(keys.ECDSAP256, keys.RSA3072PSS, keys.Ed25519),
		RunE: func(c *cobra.Command, args []string) error {
			return a.withClient(c, func(ctx context.Context, kc *client.Client) error {
				resp, err := kc.PublicKey(ctx, args[0], version)
				if err != nil {
					return err
				}
				out := resp.GetPublicKeyPem()
				if out == "" {
					out = string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: resp.GetPublicKeyDer()}))
				}
				if !strings.HasSuffix(out, "\n") {
					out += "\n"
				}
				_, err = io.WriteString(a.stdout, out)
				return err
			})
		},
	}
	c.Flags().Uint32Var(&version, "version", 0, "version `N` (default: the newest enabled)")
	return c
}
