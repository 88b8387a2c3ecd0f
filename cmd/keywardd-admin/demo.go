package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/keyward/keyward/internal/ctxflag"
	"io"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/keyward/keyward/envelope"
	"github.com/keyward/keyward/hsm"
	"github.com/keyward/keyward/keys"
)

const demoLong = `Walks through keyward's operations on a development SoftHSM2 token, without
the daemon: creates the key if it is missing (aes-256-gcm), wraps a sample
secret, prints the blob and its header, unwraps it, shows that another
context is refused, rotates the key, shows that the older blob still
unwraps, runs the token doctor and lists the keys. Every run rotates once
more: the token keeps its keys between runs.

DIR is a directory made by softhsm-test/provision-token.sh: it holds
softhsm2.conf, pin and tokens/. SOFTHSM2_CONF is set to DIR/softhsm2.conf for
this process. The module is $KEYWARD_PKCS11_MODULE, else the first existing
libsofthsm2.so in the usual Debian/Ubuntu places.`

const demoExample = `  softhsm-test/provision-token.sh --dir .dev/softhsm --label keyward
  keywardd demo --dev-dir .dev/softhsm
  (make run does both)`

// demoPlaintext is what the demo wraps. It is a constant, the only
// plaintext keyward ever prints.
const demoPlaintext = "s3cr3t-api-token (demo value)"

// softhsmModules are the SoftHSM2 module paths tried in order (the
// backend's list; softhsm-test/provision-token.sh has the same).
var softhsmModules = hsm.SoftHSMModules

// envModule overrides the PKCS#11 module path.
const envModule = "KEYWARD_PKCS11_MODULE"

type demoOptions struct {
	DevDir  string
	Key     string
	Token   string
	Context keys.Context
}

func (a *app) demoCmd() *cobra.Command {
	var o demoOptions
	var ctxFlag contextFlag
	c := &cobra.Command{
		Use:     "demo --dev-dir DIR [--key NAME] [--token LABEL] [--context k=v]...",
		Short:   "create, wrap, unwrap, rotate and check a key on a development SoftHSM2 token (what \"make run\" shows)",
		Long:    demoLong,
		Example: demoExample,
		Args:    noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := o.check(ctxFlag.Pairs); err != nil {
				return err
			}
			return demo(c.Context(), a.stdout, o)
		},
	}
	f := c.Flags()
	f.StringVar(&o.DevDir, "dev-dir", "", "provisioned SoftHSM2 directory `DIR` (required)")
	f.StringVar(&o.Key, "key", "demo/app-secret", "key `NAME` to use")
	f.StringVar(&o.Token, "token", "keyward", "token `LABEL`")
	f.Var(&ctxFlag, "context", "encryption context pair; repeat for more (default app=demo)")
	return c
}

// check validates the options once the flags are parsed.
func (o *demoOptions) check(c keys.Context) error {
	if o.DevDir == "" {
		return usagef("demo", "--dev-dir is required")
	}
	if o.Token == "" {
		return usagef("demo", "--token is empty")
	}
	if err := keys.ValidateName(o.Key); err != nil {
		return usagef("demo", "--key: %v", err)
	}
	o.Context = c
	if o.Context == nil {
		o.Context = keys.Context{"app": "demo"}
	}
	if err := keys.CheckContext(o.Context); err != nil {
		return usagef("demo", "--context: %v", err)
	}
	return nil
}

// softhsmModule returns $KEYWARD_PKCS11_MODULE or the first existing default.
func softhsmModule() (string, error) {
	if m := os.Getenv(envModule); m != "" {
		return m, nil
	}
	for _, m := range softhsmModules {
		if _, err := os.Stat(m); err == nil {
			return m, nil
		}
	}
	return "", fmt.Errorf("no SoftHSM2 module in %s (install softhsm2, or set $%s): %w",
		strings.Join(softhsmModules, ", "), envModule, hsm.ErrModule)
}

// formatContext renders a context as sorted k=v pairs. Only the demo prints
// context values: they are the demo's own constants or the user's flags.
func formatContext(c keys.Context) string {
	if len(c) == 0 {
		return "(none)"
	}
	return ctxflag.Format(c)
}

// otherContext returns a context that differs from c in the value of "app".
func otherContext(c keys.Context) keys.Context {
	o := maps.Clone(c)
	o["app"] = "other"
	if c["app"] == "other" {
		o["app"] = "other-app"
	}
	return o
}

// stepf prints one demo step: a fixed-width step name and a message.
func stepf(w io.Writer, step, format string, a ...any) {
	fmt.Fprintf(w, "%-8s %s\n", step+":", fmt.Sprintf(format, a...))
}

// demo runs the walk-through described in demoLong.
func demo(ctx context.Context, w io.Writer, o demoOptions) error {
	start := time.Now()
	tok, err := openDemoToken(ctx, w, o)
	if err != nil {
		return err
	}
	defer tok.Close()
	d := demoRun{w: w, tok: tok, name: o.Key, c: o.Context}
	if err := d.key(ctx); err != nil {
		return err
	}
	blob, hdr, err := d.wrap(ctx)
	if err != nil {
		return err
	}
	if err := d.rotate(ctx, blob, hdr); err != nil {
		return err
	}
	if err := d.check(ctx); err != nil {
		return err
	}
	stepf(w, "done", "in %v; the token keeps its keys in %s, so the next run rotates again",
		time.Since(start).Round(time.Millisecond), o.DevDir)
	return nil
}

// openDemoToken logs in to the token of o.DevDir.
func openDemoToken(ctx context.Context, w io.Writer, o demoOptions) (*hsm.Token, error) {
	conf := filepath.Join(o.DevDir, "softhsm2.conf")
	if _, err := os.Stat(conf); err != nil {
		return nil, fmt.Errorf("demo: %s is not a provisioned token directory (make one with softhsm-test/provision-token.sh --dir %s): %w",
			o.DevDir, o.DevDir, err)
	}
	abs, err := filepath.Abs(conf)
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	if err := os.Setenv("SOFTHSM2_CONF", abs); err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	module, err := softhsmModule()
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	pinFile := filepath.Join(o.DevDir, "pin")
	tok, err := hsm.Open(ctx, hsm.Config{Module: module, TokenLabel: o.Token, PINFile: pinFile})
	if err != nil {
		return nil, fmt.Errorf("demo: open token %q: %w", o.Token, err)
	}
	stepf(w, "token", "logged in to SoftHSM2 token %q (config %s, PIN from %s, module %s)", o.Token, conf, pinFile, module)
	return tok, nil
}

// demoRun is one walk-through: its steps print to w and use key name on
// tok under context c.
type demoRun struct {
	w    io.Writer
	tok  *hsm.Token
	name string
	c    keys.Context
}

// key creates the demo key, or checks that the existing one can wrap.
func (d demoRun) key(ctx context.Context) error {
	info, err := d.tok.DescribeKey(ctx, d.name)
	switch {
	case errors.Is(err, keys.ErrKeyNotFound):
		if info, err = d.tok.CreateKey(ctx, d.name, keys.AES256GCM); err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		stepf(d.w, "key", "created %s (%s, v1), generated inside the token, not extractable", d.name, info.Type)
	case err != nil:
		return fmt.Errorf("demo: %w", err)
	default:
		if info.Type != keys.AES256GCM {
			return fmt.Errorf("demo: key %s is %s; the demo wraps, so it needs an %s key: %w", d.name, info.Type, keys.AES256GCM, keys.ErrWrongKeyType)
		}
		stepf(d.w, "key", "reusing %s (%s, %s)", d.name, info.Type, versionSummary(info))
	}
	return nil
}

// wrap wraps the demo secret, shows the blob, unwraps it, and shows that
// another context is refused.
func (d demoRun) wrap(ctx context.Context) ([]byte, envelope.Header, error) {
	blob, err := d.tok.Wrap(ctx, d.name, []byte(demoPlaintext), d.c)
	if err != nil {
		return nil, envelope.Header{}, fmt.Errorf("demo: %w", err)
	}
	hdr, ct, err := envelope.Decode(blob)
	if err != nil {
		return nil, hdr, fmt.Errorf("demo: decode own blob: %w", err)
	}
	stepf(d.w, "wrap", "%q under context %s with %s v%d", demoPlaintext, formatContext(d.c), d.name, hdr.Version)
	stepf(d.w, "blob", "%s", envelope.EncodeText(blob))
	stepf(d.w, "header", "name=%s version=%d alg=%d nonce=%d bytes, blob %d bytes (ciphertext+tag %d)",
		hdr.Name, hdr.Version, hdr.Alg, len(hdr.Nonce), len(blob), len(ct))

	if err := unwrapCheck(ctx, d.tok, blob, d.c); err != nil {
		return nil, hdr, fmt.Errorf("demo: %w", err)
	}
	stepf(d.w, "unwrap", "context %s: round-trip ok, got %q back", formatContext(d.c), demoPlaintext)

	other := otherContext(d.c)
	_, err = d.tok.Unwrap(ctx, blob, other)
	switch {
	case err == nil:
		return nil, hdr, fmt.Errorf("demo: unwrap under context %s succeeded; it must fail", formatContext(other))
	case !errors.Is(err, keys.ErrDecrypt):
		return nil, hdr, fmt.Errorf("demo: unwrap under another context: want %v, got: %w", keys.ErrDecrypt, err)
	}
	stepf(d.w, "unwrap", "context %s: refused as expected (%v)", formatContext(other), keys.ErrDecrypt)
	return blob, hdr, nil
}

// rotate rotates the key, wraps again with the new version and shows that
// blob, wrapped before (its header hdr), still unwraps.
func (d demoRun) rotate(ctx context.Context, blob []byte, hdr envelope.Header) error {
	info, err := d.tok.RotateKey(ctx, d.name)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	latest, err := info.Latest()
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	stepf(d.w, "rotate", "%s now at v%d; new wraps use v%d", d.name, latest, latest)

	blob2, err := d.tok.Wrap(ctx, d.name, []byte(demoPlaintext), d.c)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	hdr2, _, err := envelope.Decode(blob2)
	if err != nil {
		return fmt.Errorf("demo: decode own blob: %w", err)
	}
	if hdr2.Version != latest {
		return fmt.Errorf("demo: wrap after rotation used v%d, want v%d", hdr2.Version, latest)
	}
	stepf(d.w, "wrap", "same secret again: v%d blob, %d bytes", hdr2.Version, len(blob2))
	if err := unwrapCheck(ctx, d.tok, blob2, d.c); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	if err := unwrapCheck(ctx, d.tok, blob, d.c); err != nil {
		return fmt.Errorf("demo: v%d blob after rotation: %w", hdr.Version, err)
	}
	stepf(d.w, "unwrap", "v%d blob ok, and the v%d blob from before the rotation still unwraps", hdr2.Version, hdr.Version)
	return nil
}

// check runs the token doctor and lists the keys; a weak finding fails the
// demo.
func (d demoRun) check(ctx context.Context) error {
	rep, err := d.tok.Doctor(ctx)
	if err != nil {
		return fmt.Errorf("demo: doctor: %w", err)
	}
	stepf(d.w, "doctor", "%s", doctorSummary(rep))
	for _, f := range rep.Findings {
		stepf(d.w, "doctor", "%s: %s", findingSubject(f), f.Problem)
	}

	list, err := d.tok.ListKeys(ctx)
	if err != nil {
		return fmt.Errorf("demo: list keys: %w", err)
	}
	for _, ki := range list {
		stepf(d.w, "list", "%s %s: %s", ki.Name, ki.Type, versionSummary(ki))
	}
	if rep.Weak() > 0 {
		return fmt.Errorf("demo: token doctor: %w", errWeak)
	}
	return nil
}

// unwrapCheck unwraps blob and checks that it gives back the demo plaintext.
func unwrapCheck(ctx context.Context, tok *hsm.Token, blob []byte, c keys.Context) error {
	u, err := tok.Unwrap(ctx, blob, c)
	if err != nil {
		return err
	}
	defer clear(u.Plaintext)
	if !bytes.Equal(u.Plaintext, []byte(demoPlaintext)) {
		return fmt.Errorf("unwrap %s v%d returned other bytes than were wrapped", u.Name, u.Version)
	}
	return nil
}

// versionSummary renders "v1 enabled, v2 disabled" (and the minimum decrypt
// version when one is set).
func versionSummary(ki keys.KeyInfo) string {
	parts := make([]string, 0, len(ki.Versions))
	for _, v := range ki.Versions {
		parts = append(parts, fmt.Sprintf("v%d %s", v.Version, v.State))
	}
	s := strings.Join(parts, ", ")
	if ki.MinDecryptVersion > 0 {
		s += fmt.Sprintf(" (minimum decrypt version %d)", ki.MinDecryptVersion)
	}
	if ki.Adopted {
		s += " (v1 adopted)"
	}
	return s
}
