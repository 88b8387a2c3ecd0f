package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	keywardv1 "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/client"
	"github.com/keyward/keyward/internal/benchrun"
	"github.com/keyward/keyward/keys"
)

const benchLong = `Measures the daemon under closed-loop load: for each --op and each
--concurrency level in turn, that many workers each make one call, wait for
the answer and make the next, for --duration. Every row reports the rate
(ops/s; with --batch, items/s), the latency of a call at the 50th, 99th and
99.9th percentile (with --batch also per item: the call's latency divided by
the batch size) and the number of failed operations. Failed calls are
counted, not retried, and left out of the rate and the latencies.

Ops: wrap, unwrap (of a blob wrapped once before the run), sign, verify (of a
signature made once before the run), mac, datakey (--payload is the data
key's length), status (the daemon's Status call: no key, no device work, no
audit record; what the socket, gRPC and keywardd's interceptors cost alone,
the floor under every other op; it has no baseline). --batch N sends N
items per call (BatchWrap, BatchUnwrap, BatchMac: wrap, unwrap and mac
only); 0 makes single calls.

Keys: with --key NAME every op uses that key, which must exist and fit the
op. Without it each op uses bench/<op> (aes-256-gcm for wrap, unwrap and
datakey, hmac-sha256 for mac, ecdsa-p256 for sign and verify), created
through the daemon when missing: that needs the key.create permission.

--baseline runs the same op at the same concurrency (and, with --batch, the
same number of items one after the other per "call") directly on the
daemon's PKCS#11 token, with no socket, right after each socket row, and
prints the ratio socket/baseline of the rates. keyward links no PKCS#11
module: it runs "keywardd bench-baseline" for that (--keywardd, default the
keywardd beside keyward, else in $PATH), which opens the token as keywardd
does (--module, default $KEYWARD_PKCS11_MODULE; --token;
--pin-file, default $CREDENTIALS_DIRECTORY/pin), so it must run where the
token and the PIN are readable; SoftHSM2 reads its configuration from
$SOFTHSM2_CONF. It uses the same key names.

The run is bounded: each level stops issuing calls at --duration and waits at
most --timeout (10s when 0) for the calls in flight. Ctrl-C stops at once and
prints the rows measured so far (the current one marked interrupted), then
exits 1. A table goes to stdout, or with --json an array of objects with the
fields op, concurrency, batch, connections, payload, key, seconds, calls,
ops, errors, ops_per_s, calls_per_s, p50_us, p99_us, p999_us, item_p50_us,
item_p99_us, item_p999_us, baseline (null, or an object with the same
measurement fields), ratio (null without --baseline), interrupted and
first_error. On a terminal a progress line is updated on stderr.

Any failed operation makes the exit status that of the first failure (after
the table is printed).`

// benchOptions are the command's flags.
type benchOptions struct {
	ops         []string
	concurrency []int
	duration    time.Duration
	payload     int
	batch       int
	key         string
	connections int
	json        bool

	baseline bool
	module   string
	token    string
	pinFile  string
	keywardd string
}

// benchOps are the operations bench knows, in help order, with the key type
// of their default key and whether a batch RPC exists.
var benchOps = []benchOp{
	{"wrap", keys.AES256GCM, true},
	{"unwrap", keys.AES256GCM, true},
	{"sign", keys.ECDSAP256, false},
	{"verify", keys.ECDSAP256, false},
	{"mac", keys.HMACSHA256, true},
	{"datakey", keys.AES256GCM, false},
	{"status", "", false},
}

type benchOp struct {
	name  string
	ty    keys.Type
	batch bool
}

// benchContext is the encryption context of every wrap, unwrap and datakey.
var benchContext = map[string]string{"bench": "keyward"}

func (a *app) benchCmd() *cobra.Command {
	var o benchOptions
	c := &cobra.Command{
		Use:   "bench [--op OP]... [--concurrency N,...] [--duration D] [--payload BYTES] [--batch N] [--key NAME] [--connections N] [--json] [--baseline --token LABEL [--module PATH] [--pin-file FILE] [--keywardd PATH]]",
		Short: "measure the daemon's rate and latency under load, optionally against the token in-process",
		Long:  benchLong,
		Example: `  keyward bench --op wrap --concurrency 1,8,64 --duration 5s
  keyward bench --op wrap,mac --batch 100 --json > bench.json
  SOFTHSM2_CONF=/var/lib/keyward/softhsm2.conf keyward bench --op wrap --concurrency 1,8,64 \
      --baseline --module /usr/lib/softhsm/libsofthsm2.so --token keyward --pin-file /etc/keyward/pin`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := o.check(c); err != nil {
				return err
			}
			return a.bench(c.Context(), o)
		},
	}
	f := c.Flags()
	f.StringSliceVar(&o.ops, "op", []string{"wrap"}, "`OP` to measure: wrap, unwrap, sign, verify, mac, datakey, status (repeat or comma-separate for several)")
	f.IntSliceVar(&o.concurrency, "concurrency", []int{1, 8, 64}, "numbers of concurrent workers `N,...`, one level after the other")
	f.DurationVar(&o.duration, "duration", 5*time.Second, "run each level for `D`")
	f.IntVar(&o.payload, "payload", 32, "plaintext or message size in `BYTES` (datakey: the data key's length, 16 to 1024)")
	f.IntVar(&o.batch, "batch", 0, "`N` items per call through the batch RPC (wrap, unwrap, mac; at most 1000); 0: single calls")
	a.keyFlag(c, &o.key, "key every op uses (default: bench/OP, created when missing; needs key.create)")
	f.IntVar(&o.connections, "connections", 1, "spread the workers over `N` connections to the daemon")
	f.BoolVar(&o.json, "json", false, "print the results as a JSON array")
	f.BoolVar(&o.baseline, "baseline", false, "also run each row in-process on the token, and print the ratio")
	f.StringVar(&o.module, "module", os.Getenv(envModule), "with --baseline: PKCS#11 module `PATH` (default $"+envModule+")")
	f.StringVar(&o.token, "token", "", "with --baseline: the daemon's token `LABEL`")
	f.StringVar(&o.pinFile, "pin-file", "", "with --baseline: user PIN, in a `FILE` of mode 0600 or 0400 (default $CREDENTIALS_DIRECTORY/pin)")
	f.StringVar(&o.keywardd, "keywardd", "", "with --baseline: the keywardd `PATH` that measures in-process (default: beside keyward, else in $PATH)")
	return c
}

// check validates the flags once parsed.
func (o *benchOptions) check(c *cobra.Command) error {
	const cmd = "bench"
	var ops []string
	for _, name := range o.ops {
		name = strings.TrimSpace(name)
		i := slices.IndexFunc(benchOps, func(b benchOp) bool { return b.name == name })
		if i < 0 {
			return usagef(cmd, "--op %q: want wrap, unwrap, sign, verify, mac, datakey or status", name)
		}
		if o.batch > 0 && !benchOps[i].batch {
			return usagef(cmd, "--batch: %s has no batch call (batch works with wrap, unwrap and mac)", name)
		}
		if !slices.Contains(ops, name) {
			ops = append(ops, name)
		}
	}
	if len(ops) == 0 {
		return usagef(cmd, "--op: no operation given")
	}
	o.ops = ops
	if len(o.concurrency) == 0 {
		return usagef(cmd, "--concurrency: no level given")
	}
	for _, n := range o.concurrency {
		if n < 1 || n > 4096 {
			return usagef(cmd, "--concurrency %d: want 1 to 4096", n)
		}
	}
	if o.duration <= 0 || o.duration > time.Hour {
		return usagef(cmd, "--duration %v: want more than 0 and at most 1h", o.duration)
	}
	if o.payload < 1 || o.payload > maxMessage {
		return usagef(cmd, "--payload %d: want 1 to %d bytes", o.payload, maxMessage)
	}
	if slices.Contains(o.ops, "datakey") && (o.payload < 16 || o.payload > keys.MaxRandom) {
		return usagef(cmd, "--payload %d: datakey takes 16 to %d bytes", o.payload, keys.MaxRandom)
	}
	if o.batch < 0 || o.batch > 1000 {
		return usagef(cmd, "--batch %d: want 0 (single calls) to 1000", o.batch)
	}
	if o.connections < 1 || o.connections > 1024 {
		return usagef(cmd, "--connections %d: want 1 to 1024", o.connections)
	}
	if o.key != "" {
		if err := keys.ValidateName(o.key); err != nil {
			return usagef(cmd, "--key: %v", err)
		}
	}
	if !o.baseline {
		for _, fl := range []string{"module", "token", "pin-file", "keywardd"} {
			if c.Flags().Changed(fl) {
				return usagef(cmd, "--%s needs --baseline", fl)
			}
		}
		return nil
	}
	if o.module == "" {
		return usagef(cmd, "--baseline needs --module ($%s is not set)", envModule)
	}
	if o.token == "" {
		return usagef(cmd, "--baseline needs --token, the label of the daemon's token")
	}
	if o.pinFile == "" && os.Getenv("CREDENTIALS_DIRECTORY") == "" {
		return usagef(cmd, "--baseline needs --pin-file when $CREDENTIALS_DIRECTORY is not set")
	}
	return nil
}

// benchStats is one measured run: over the socket, or in-process.
type benchStats = benchrun.Stats

// benchResult is one row: an (op, concurrency, batch) measured over the
// socket and, with --baseline, in-process.
type benchResult struct {
	Op          string `json:"op"`
	Concurrency int    `json:"concurrency"`
	Batch       int    `json:"batch"`
	Connections int    `json:"connections"`
	Payload     int    `json:"payload"`
	Key         string `json:"key"`
	benchStats
	Baseline    *benchStats `json:"baseline"`
	Ratio       *float64    `json:"ratio"`
	Interrupted bool        `json:"interrupted"`
	FirstError  string      `json:"first_error"`
}

// benchTarget makes one call (of batch items, or a single op) for worker w.
type benchTarget = benchrun.Target

// prepared is what an op needs beyond its key: a blob to unwrap, a
// signature to verify.
type prepared struct {
	key     string
	payload []byte
	blob    []byte
	sig     []byte
	version uint32
}

func (a *app) bench(ctx context.Context, o benchOptions) error {
	grace := a.timeout
	if grace == 0 {
		grace = 10 * time.Second
	}
	r := &benchRun{o: o, grace: grace, progress: a.progressWriter()}
	defer r.close()
	if err := r.open(ctx, a); err != nil {
		return err
	}
	results, runErr := r.run(ctx)
	var werr error
	if o.json {
		if results == nil {
			results = []benchResult{}
		}
		werr = writeJSON(a.stdout, results)
	} else if len(results) > 0 {
		werr = writeBenchTable(a.stdout, results)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("bench: interrupted; %d rows measured", len(results))
	}
	if runErr != nil {
		return runErr
	}
	return werr
}

// benchRun is one keyward bench: its connections to the daemon and, with
// --baseline, the token it measures in-process.
type benchRun struct {
	o        benchOptions
	grace    time.Duration // each set-up step (dial, open, prepare, the first call) gets this
	progress func(string)
	conns    []*client.Client
	base     *baseline // nil without --baseline
}

// open dials the connections and finds keywardd for the baseline.
func (r *benchRun) open(ctx context.Context, a *app) error {
	dialCtx, cancel := context.WithTimeout(ctx, r.grace)
	defer cancel()
	for range r.o.connections {
		// No retries: every failure is counted as it happened.
		kc, err := a.dial(dialCtx, client.WithRetry(1, 0))
		if err != nil {
			return err
		}
		r.conns = append(r.conns, kc)
	}
	if r.o.baseline {
		bin, err := findKeywardd(r.o.keywardd)
		if err != nil {
			return err
		}
		r.base = &baseline{bin: bin, o: r.o, grace: r.grace}
	}
	return nil
}

func (r *benchRun) close() {
	for _, kc := range r.conns {
		kc.Close()
	}
}

// run measures every op at every concurrency, until one fails or ctx ends.
// The error is the first failure's.
func (r *benchRun) run(ctx context.Context) ([]benchResult, error) {
	var results []benchResult
	var runErr error
	for _, op := range r.o.ops {
		sock, base, key, err := r.prepare(ctx, op)
		if err != nil {
			return results, err
		}
		for _, n := range r.o.concurrency {
			res, err := r.level(ctx, op, n, key, sock, base)
			if runErr == nil {
				runErr = err
			}
			results = append(results, res)
			if res.Interrupted {
				return results, runErr
			}
		}
	}
	return results, runErr
}

// prepare makes op's key and inputs and its target over the socket, and
// makes one call before timing, and one in-process when there is a
// baseline for op (base): a refusal (policy, a missing token, a wrong PIN)
// fails the command with its own exit status at once.
func (r *benchRun) prepare(ctx context.Context, op string) (sock benchTarget, base bool, key string, err error) {
	setupCtx, cancel := context.WithTimeout(ctx, r.grace)
	defer cancel()
	p, err := benchPrepare(setupCtx, r.conns[0], op, r.o)
	if err != nil {
		return nil, false, "", err
	}
	sock = socketTarget(r.conns, op, r.o.batch, p)
	if _, err := sock(setupCtx, 0); err != nil {
		return nil, false, "", err
	}
	base = r.base != nil && op != "status" // nothing in-process to compare status with
	if base {
		if _, err := r.base.run(setupCtx, op, p.key, 0); err != nil {
			return nil, false, "", err
		}
	}
	return sock, base, p.key, nil
}

// level measures op at concurrency n over the socket and, with a baseline,
// in-process. The error describes the first failed operation, if any.
func (r *benchRun) level(ctx context.Context, op string, n int, key string, sock benchTarget, base bool) (benchResult, error) {
	o := r.o
	res := benchResult{Op: op, Concurrency: n, Batch: o.batch, Connections: o.connections, Payload: o.payload, Key: key}
	res.benchStats = benchrun.RunLevel(ctx, n, o.duration, r.grace, max(o.batch, 1), sock, r.progress, fmt.Sprintf("%s c=%d", op, n))
	if ctx.Err() == nil && base {
		if r.progress != nil {
			r.progress(fmt.Sprintf("bench %s c=%d baseline (keywardd bench-baseline): %v", op, n, o.duration))
		}
		s, err := r.base.run(ctx, op, key, n)
		if r.progress != nil {
			r.progress("")
		}
		if err != nil {
			res.Interrupted = ctx.Err() != nil
			return res, err
		}
		res.Baseline = s
		if s.OpsPerS > 0 {
			ratio := res.OpsPerS / s.OpsPerS
			res.Ratio = &ratio
		}
	}
	res.Interrupted = ctx.Err() != nil
	switch {
	case res.FirstErr != nil:
		res.FirstError = oneLine(res.FirstErr.Error())
		return res, fmt.Errorf("bench: %s at concurrency %d: %d operations failed; the first: %w", op, n, res.Errors, res.FirstErr)
	case res.Baseline != nil && res.Baseline.FirstErr != nil:
		res.FirstError = "baseline: " + oneLine(res.Baseline.FirstErr.Error())
		return res, fmt.Errorf("bench: baseline %s at concurrency %d: %d operations failed; the first: %w", op, n, res.Baseline.Errors, res.Baseline.FirstErr)
	}
	return res, nil
}

// benchPrepare finds or creates the op's key and makes what the op
// consumes (a blob, a signature) through the daemon.
func benchPrepare(ctx context.Context, kc *client.Client, op string, o benchOptions) (prepared, error) {
	var ty keys.Type
	for _, b := range benchOps {
		if b.name == op {
			ty = b.ty
		}
	}
	p := prepared{key: o.key, payload: make([]byte, o.payload)}
	rand.Read(p.payload)
	if op == "status" {
		return prepared{}, nil // no key
	}
	if p.key == "" {
		p.key = "bench/" + op
		info, err := kc.DescribeKey(ctx, p.key)
		switch {
		case errors.Is(err, client.ErrNotFound):
			if _, err := kc.CreateKey(ctx, p.key, string(ty)); err != nil && !errors.Is(err, client.ErrKeyExists) {
				return p, fmt.Errorf("bench: create %s: %w", p.key, err)
			}
		case err != nil:
			return p, err
		case info.GetKeyType() != string(ty):
			return p, usagef("bench", "%s is %s, %s needs %s: remove it or give --key", p.key, info.GetKeyType(), op, ty)
		}
	} else {
		info, err := kc.DescribeKey(ctx, p.key)
		if err != nil {
			return p, err
		}
		kt := keys.Type(info.GetKeyType())
		fits := kt == ty || (ty == keys.ECDSAP256 && kt.Asymmetric())
		if !fits {
			return p, usagef("bench", "--key %s is %s; %s needs %s", p.key, kt, op, ty)
		}
	}
	switch op {
	case "unwrap":
		resp, err := kc.Wrap(ctx, p.key, p.payload, benchContext)
		if err != nil {
			return p, err
		}
		p.blob = resp.GetCiphertext()
	case "verify":
		resp, err := kc.Sign(ctx, p.key, p.payload)
		if err != nil {
			return p, err
		}
		p.sig, p.version = resp.GetSignature(), resp.GetVersion()
	}
	return p, nil
}

// errBenchInvalid: a verify over the bench's own signature said invalid.
var errBenchInvalid = errors.New("verify: the signature made before the run does not verify")

// socketTarget makes calls through the daemon; worker w uses connection
// w mod len(conns).
func socketTarget(conns []*client.Client, op string, batch int, p prepared) benchTarget {
	kcOf := func(w int) *client.Client { return conns[w%len(conns)] }
	if batch > 0 {
		call := batchCall(op, batch, p)
		return func(ctx context.Context, w int) (int, error) {
			errs, err := call(ctx, kcOf(w))
			if err != nil {
				return batch, err
			}
			return countErrs(errs)
		}
	}
	one := singleCall(op, p)
	return func(ctx context.Context, w int) (int, error) {
		if err := one(ctx, kcOf(w)); err != nil {
			return 1, err
		}
		return 0, nil
	}
}

// batchCall makes one batch call of op, batch items, on a connection: the
// items' errors, or the call's.
func batchCall(op string, batch int, p prepared) func(ctx context.Context, kc *client.Client) ([]error, error) {
	var call func(ctx context.Context, kc *client.Client) ([]error, error)
	switch op {
	case "wrap":
		items := make([]*keywardv1.WrapRequest, batch)
		for i := range items {
			items[i] = &keywardv1.WrapRequest{Key: p.key, Plaintext: p.payload, Context: benchContext}
		}
		call = func(ctx context.Context, kc *client.Client) ([]error, error) {
			rs, err := kc.BatchWrap(ctx, items)
			return itemErrs(rs), err
		}
	case "unwrap":
		items := make([]*keywardv1.UnwrapRequest, batch)
		for i := range items {
			items[i] = &keywardv1.UnwrapRequest{Ciphertext: p.blob, Context: benchContext}
		}
		call = func(ctx context.Context, kc *client.Client) ([]error, error) {
			rs, err := kc.BatchUnwrap(ctx, items)
			return itemErrs(rs), err
		}
	case "mac":
		items := make([]*keywardv1.MacRequest, batch)
		for i := range items {
			items[i] = &keywardv1.MacRequest{Key: p.key, Message: p.payload}
		}
		call = func(ctx context.Context, kc *client.Client) ([]error, error) {
			rs, err := kc.BatchMac(ctx, items)
			return itemErrs(rs), err
		}
	}
	return call
}

// singleCall makes one call of op on a connection.
func singleCall(op string, p prepared) func(ctx context.Context, kc *client.Client) error {
	var one func(ctx context.Context, kc *client.Client) error
	switch op {
	case "wrap":
		one = func(ctx context.Context, kc *client.Client) error {
			_, err := kc.Wrap(ctx, p.key, p.payload, benchContext)
			return err
		}
	case "unwrap":
		one = func(ctx context.Context, kc *client.Client) error {
			_, err := kc.Unwrap(ctx, p.blob, benchContext)
			return err
		}
	case "sign":
		one = func(ctx context.Context, kc *client.Client) error {
			_, err := kc.Sign(ctx, p.key, p.payload)
			return err
		}
	case "verify":
		one = func(ctx context.Context, kc *client.Client) error {
			valid, _, err := kc.Verify(ctx, p.key, p.version, p.payload, p.sig)
			if err == nil && !valid {
				err = errBenchInvalid
			}
			return err
		}
	case "mac":
		one = func(ctx context.Context, kc *client.Client) error {
			_, err := kc.Mac(ctx, p.key, p.payload)
			return err
		}
	case "status":
		one = func(ctx context.Context, kc *client.Client) error {
			_, err := kc.Status(ctx)
			return err
		}
	case "datakey":
		one = func(ctx context.Context, kc *client.Client) error {
			_, err := kc.GenerateDataKey(ctx, p.key, benchContext, len(p.payload), false)
			return err
		}
	}
	return one
}

func itemErrs[T any](rs []client.Result[T]) []error {
	out := make([]error, 0, len(rs))
	for _, r := range rs {
		if r.Err != nil {
			out = append(out, r.Err)
		}
	}
	return out
}

func countErrs(errs []error) (int, error) {
	if len(errs) == 0 {
		return 0, nil
	}
	return len(errs), errs[0]
}

// progressWriter returns a function that replaces the progress line on
// stderr, or nil when stderr is not a terminal.
func (a *app) progressWriter() func(string) {
	f, ok := a.stderr.(*os.File)
	if !ok {
		return nil
	}
	if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err != nil {
		return nil
	}
	var mu sync.Mutex
	return func(line string) {
		mu.Lock()
		defer mu.Unlock()
		io.WriteString(f, "\r\x1b[K"+line)
	}
}

// writeBenchTable prints the rows as an aligned table. Batch runs show the
// rate in items/s and latencies per call and per item.
func writeBenchTable(w io.Writer, rs []benchResult) error {
	batched := slices.ContainsFunc(rs, func(r benchResult) bool { return r.Batch > 0 })
	base := slices.ContainsFunc(rs, func(r benchResult) bool { return r.Baseline != nil })
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	head := []string{"op", "conc", "batch"}
	if batched {
		head = append(head, "items/s", "calls/s", "p50/call", "p99/call", "p999/call", "p50/item", "p99/item", "p999/item")
	} else {
		head = append(head, "ops/s", "p50", "p99", "p999")
	}
	head = append(head, "errors")
	switch {
	case base && batched:
		head = append(head, "base items/s", "base p50/call", "base p99/call", "ratio")
	case base:
		head = append(head, "base ops/s", "base p50", "base p99", "ratio")
	}
	fmt.Fprintln(tw, strings.Join(head, "\t")+"\t")
	for _, r := range rs {
		batch := "-"
		if r.Batch > 0 {
			batch = strconv.Itoa(r.Batch)
		}
		row := []string{r.Op, strconv.Itoa(r.Concurrency), batch, fmtRate(r.OpsPerS)}
		if batched {
			row = append(row, fmtRate(r.CallsPerS))
		}
		row = append(row, fmtUS(r.P50US), fmtUS(r.P99US), fmtUS(r.P999US))
		if batched {
			row = append(row, fmtUS(r.ItemP50US), fmtUS(r.ItemP99US), fmtUS(r.ItemP999US))
		}
		row = append(row, strconv.FormatInt(r.Errors, 10))
		if base {
			if r.Baseline == nil {
				row = append(row, "-", "-", "-", "-")
			} else {
				ratio := "-"
				if r.Ratio != nil {
					ratio = fmt.Sprintf("%.2fx", *r.Ratio)
				}
				row = append(row, fmtRate(r.Baseline.OpsPerS), fmtUS(r.Baseline.P50US), fmtUS(r.Baseline.P99US), ratio)
			}
		}
		if r.Interrupted {
			row[0] += " (interrupted)"
		}
		fmt.Fprintln(tw, strings.Join(row, "\t")+"\t")
	}
	return tw.Flush()
}

func fmtRate(v float64) string { return strconv.FormatFloat(math.Round(v), 'f', 0, 64) }

// fmtUS prints a latency given in microseconds with a readable unit.
func fmtUS(us float64) string {
	switch {
	case us < 10:
		return fmt.Sprintf("%.1fµs", us)
	case us < 999.5:
		return fmt.Sprintf("%.0fµs", us)
	case us < 1e6:
		return fmt.Sprintf("%.2fms", us/1e3)
	}
	return fmt.Sprintf("%.2fs", us/1e6)
}
