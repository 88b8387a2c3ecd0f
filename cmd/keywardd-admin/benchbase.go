package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/keyward/keyward/hsm"
	"github.com/keyward/keyward/internal/benchrun"
	"github.com/keyward/keyward/keys"
)

// benchContext is the encryption context of every wrap, unwrap and datakey
// (keyward bench's).
var benchContext = map[string]string{"bench": "keyward"}

const benchBaselineLong = `The in-process half of "keyward bench --baseline", which runs it: the
same operation as the daemon's, called directly on the daemon's token
(opened with its module, label and PIN), by --concurrency workers for
--duration; one JSON object on stdout with the measurement. Without
--concurrency it makes one call and prints nothing: a check that the token
opens and the key works. The key must exist (keyward bench creates it
through the daemon). It is separate from keyward because keyward links no
PKCS#11 module.`

type benchBaselineOptions struct {
	op, key, module, token, pinFile string
	payload, batch, concurrency     int
	duration, grace                 time.Duration
}

func (a *app) benchBaselineCmd() *cobra.Command {
	var o benchBaselineOptions
	c := &cobra.Command{
		Use:     "bench-baseline --op OP --key NAME --token LABEL [--module PATH] [--pin-file FILE] [--payload BYTES] [--batch N] [--concurrency N --duration D]",
		Short:   "measure an operation directly on the token, for keyward bench --baseline",
		Long:    benchBaselineLong,
		Example: "  keywardd bench-baseline --op wrap --key bench/wrap --token keyward --pin-file /etc/keyward/pin --concurrency 8 --duration 2s",
		Args:    noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := o.check(); err != nil {
				return err
			}
			return a.benchBaseline(c.Context(), o)
		},
	}
	f := c.Flags()
	f.StringVar(&o.op, "op", "", "the `OP`: wrap, unwrap, sign, verify, mac or datakey")
	f.StringVar(&o.key, "key", "", "the key `NAME` (it must exist)")
	f.StringVar(&o.module, "module", os.Getenv(envModule), "PKCS#11 module `PATH` (default $"+envModule+")")
	f.StringVar(&o.token, "token", "", "the daemon's token `LABEL`")
	f.StringVar(&o.pinFile, "pin-file", "", "user PIN, in a `FILE` of mode 0600 or 0400 (default $CREDENTIALS_DIRECTORY/pin)")
	f.IntVar(&o.payload, "payload", 256, "plaintext or message size in `BYTES` (datakey: the data key's)")
	f.IntVar(&o.batch, "batch", 0, "`N` operations per call, one after the other, as the daemon runs a batch (0: single)")
	f.IntVar(&o.concurrency, "concurrency", 0, "`N` workers (0: one check call, no measurement)")
	f.DurationVar(&o.duration, "duration", time.Second, "how long to measure, `D`")
	f.DurationVar(&o.grace, "grace", 10*time.Second, "how long calls in flight may run past --duration, `D`")
	return c
}

func (o *benchBaselineOptions) check() error {
	const cmd = "bench-baseline"
	switch o.op {
	case "wrap", "unwrap", "sign", "verify", "mac", "datakey":
	default:
		return usagef(cmd, "--op %q: want wrap, unwrap, sign, verify, mac or datakey", o.op)
	}
	if err := keys.ValidateName(o.key); err != nil {
		return usagef(cmd, "--key: %v", err)
	}
	switch {
	case o.module == "":
		return usagef(cmd, "--module is required ($%s is not set)", envModule)
	case o.token == "":
		return usagef(cmd, "--token is required: the label of the daemon's token")
	case o.pinFile == "" && os.Getenv("CREDENTIALS_DIRECTORY") == "":
		return usagef(cmd, "--pin-file is required when $CREDENTIALS_DIRECTORY is not set")
	case o.payload < 1 || o.payload > keys.MaxPlaintext || o.op == "datakey" && (o.payload < 16 || o.payload > keys.MaxRandom):
		return usagef(cmd, "--payload %d is out of range", o.payload)
	case o.batch < 0 || o.batch > 1000, o.concurrency < 0 || o.concurrency > 4096, o.duration <= 0 || o.duration > time.Hour, o.grace <= 0:
		return usagef(cmd, "--batch, --concurrency, --duration or --grace out of range")
	}
	return nil
}

// benchBaseline opens the token, prepares the op's input, makes one call,
// then (with --concurrency) measures and prints the stats.
func (a *app) benchBaseline(ctx context.Context, o benchBaselineOptions) error {
	setup, cancel := context.WithTimeout(ctx, o.grace)
	defer cancel()
	tok, err := hsm.Open(setup, hsm.Config{Module: o.module, TokenLabel: o.token, PINFile: o.pinFile})
	if err != nil {
		return fmt.Errorf("bench-baseline: open token: %w", err)
	}
	defer tok.Close()
	p := prepared{key: o.key, payload: make([]byte, o.payload)}
	rand.Read(p.payload)
	switch o.op {
	case "unwrap":
		if p.blob, err = tok.Wrap(setup, p.key, p.payload, benchContext); err != nil {
			return fmt.Errorf("bench-baseline: %w", err)
		}
	case "verify":
		sig, err := tok.Sign(setup, p.key, p.payload)
		if err != nil {
			return fmt.Errorf("bench-baseline: %w", err)
		}
		p.sig, p.version = sig.Bytes, sig.Version
	}
	target := baselineTarget(tok, o.op, o.batch, p)
	if _, err := target(setup, 0); err != nil {
		return fmt.Errorf("bench-baseline: %w", err)
	}
	if o.concurrency == 0 {
		return nil
	}
	s := benchrun.RunLevel(ctx, o.concurrency, o.duration, o.grace, max(o.batch, 1), target, nil, "")
	out := struct {
		benchrun.Stats
		FirstError string `json:"first_error"`
	}{Stats: s}
	if s.FirstErr != nil {
		out.FirstError = s.FirstErr.Error()
	}
	return writeJSON(a.stdout, out)
}

// prepared is what an op needs beyond its key: a blob to unwrap, a
// signature to verify.
type prepared struct {
	key     string
	payload []byte
	blob    []byte
	sig     []byte
	version uint32
}

// baselineTarget makes the same operations directly on the token, as the
// daemon's service does (datakey: random bytes, then wrap); a "batch" is
// that many operations one after the other, as the daemon runs a batch.
func baselineTarget(tok *hsm.Token, op string, batch int, p prepared) benchrun.Target {
	var one func(ctx context.Context) error
	switch op { // check refused "status": nothing in-process to compare with
	case "wrap":
		one = func(ctx context.Context) error {
			_, err := tok.Wrap(ctx, p.key, p.payload, benchContext)
			return err
		}
	case "unwrap":
		one = func(ctx context.Context) error {
			_, err := tok.Unwrap(ctx, p.blob, benchContext)
			return err
		}
	case "sign":
		one = func(ctx context.Context) error {
			_, err := tok.Sign(ctx, p.key, p.payload)
			return err
		}
	case "verify":
		one = func(ctx context.Context) error {
			return tok.Verify(ctx, p.key, p.version, p.payload, p.sig)
		}
	case "mac":
		one = func(ctx context.Context) error {
			_, err := tok.MAC(ctx, p.key, p.payload)
			return err
		}
	case "datakey":
		one = func(ctx context.Context) error {
			dk, err := tok.Random(ctx, len(p.payload))
			if err != nil {
				return err
			}
			_, err = tok.Wrap(ctx, p.key, dk, benchContext)
			return err
		}
	}
	n := max(batch, 1)
	return func(ctx context.Context, _ int) (int, error) {
		failed := 0
		var first error
		for range n {
			if err := one(ctx); err != nil {
				if first == nil {
					first = err
				}
				failed++
			}
		}
		return failed, first
	}
}
