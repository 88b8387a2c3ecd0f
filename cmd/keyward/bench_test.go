package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keyward/keyward/internal/testutil"
)

// benchFields are the documented fields of a bench --json row.
var benchFields = []string{"op", "concurrency", "batch", "connections", "payload", "key", "seconds", "calls", "ops", "errors",
	"ops_per_s", "calls_per_s", "p50_us", "p99_us", "p999_us", "item_p50_us", "item_p99_us", "item_p999_us",
	"baseline", "ratio", "interrupted", "first_error"}

// benchRow is a bench --json row as a script reads it.
type benchRow struct {
	Op          string      `json:"op"`
	Concurrency int         `json:"concurrency"`
	Batch       int         `json:"batch"`
	Connections int         `json:"connections"`
	Payload     int         `json:"payload"`
	Key         string      `json:"key"`
	Interrupted bool        `json:"interrupted"`
	FirstError  string      `json:"first_error"`
	Baseline    *benchStats `json:"baseline"`
	Ratio       *float64    `json:"ratio"`
	benchStats
}

// benchJSON parses bench --json output, checking that every row has
// exactly the documented fields (and a baseline, when present, exactly
// the measurement fields).
func benchJSON(t *testing.T, out string) []benchRow {
	t.Helper()
	var raw []map[string]json.RawMessage
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		t.Fatalf("bench --json output does not parse: %v\n%s", err, out)
	}
	statFields := []string{"seconds", "calls", "ops", "errors", "ops_per_s", "calls_per_s", "p50_us", "p99_us", "p999_us", "item_p50_us", "item_p99_us", "item_p999_us"}
	for i, r := range raw {
		if got := sortedKeys(r); !slices.Equal(got, sorted(benchFields)) {
			t.Errorf("row %d has fields %v, want %v", i, got, sorted(benchFields))
		}
		if b := r["baseline"]; string(b) != "null" {
			var m map[string]json.RawMessage
			if err := json.Unmarshal(b, &m); err != nil {
				t.Fatalf("row %d baseline: %v", i, err)
			}
			if got := sortedKeys(m); !slices.Equal(got, sorted(statFields)) {
				t.Errorf("row %d baseline has fields %v, want %v", i, got, sorted(statFields))
			}
		}
	}
	var rows []benchRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatal(err)
	}
	return rows
}

func sortedKeys(m map[string]json.RawMessage) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return sorted(ks)
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// saneStats checks one measurement: something done, ordered percentiles,
// no error, rates that agree with the counts.
func saneStats(t *testing.T, what string, s benchStats, batch int) {
	t.Helper()
	items := int64(max(batch, 1))
	switch {
	case s.OpsPerS <= 0 || s.Calls <= 0:
		t.Errorf("%s: %v ops/s in %d calls; want > 0", what, s.OpsPerS, s.Calls)
	case !(0 < s.P50US && s.P50US <= s.P99US && s.P99US <= s.P999US):
		t.Errorf("%s: p50 %v, p99 %v, p999 %v µs; want 0 < p50 <= p99 <= p999", what, s.P50US, s.P99US, s.P999US)
	case s.Errors != 0:
		t.Errorf("%s: %d errors", what, s.Errors)
	case s.Ops != s.Calls*items:
		t.Errorf("%s: %d ops in %d calls of %d items", what, s.Ops, s.Calls, items)
	case s.Seconds <= 0 || math.Abs(s.OpsPerS-float64(s.Ops)/s.Seconds) > 0.02*s.OpsPerS+1:
		t.Errorf("%s: %v ops/s, but %d ops in %vs", what, s.OpsPerS, s.Ops, s.Seconds)
	case math.Abs(s.ItemP50US*float64(items)-s.P50US) > 0.01*float64(items)+0.1:
		t.Errorf("%s: item p50 %vµs is not p50 %vµs / %d", what, s.ItemP50US, s.P50US, items)
	}
}

func TestBenchUsageErrors(t *testing.T) {
	socket := "/nonexistent/k.sock" // every case fails before dialing
	tests := []struct {
		name string
		args []string
		want string
	}{
		{name: "batch with sign", args: []string{"--op", "sign", "--batch", "10"}, want: "sign has no batch call"},
		{name: "batch with datakey in a list", args: []string{"--op", "wrap,datakey", "--batch", "10"}, want: "datakey has no batch call"},
		{name: "batch with status", args: []string{"--op", "status", "--batch", "10"}, want: "status has no batch call"},
		{name: "concurrency 0", args: []string{"--concurrency", "1,0"}, want: "--concurrency 0"},
		{name: "concurrency not a number", args: []string{"--concurrency", "many"}, want: "--concurrency"},
		{name: "bad duration", args: []string{"--duration", "soon"}, want: "--duration"},
		{name: "zero duration", args: []string{"--duration", "0s"}, want: "--duration 0s"},
		{name: "unknown op", args: []string{"--op", "encrypt"}, want: `--op "encrypt"`},
		{name: "batch too big", args: []string{"--batch", "1001"}, want: "--batch 1001"},
		{name: "payload 0", args: []string{"--payload", "0"}, want: "--payload 0"},
		{name: "payload over 64 KiB", args: []string{"--payload", "65537"}, want: "--payload 65537"},
		{name: "datakey payload", args: []string{"--op", "datakey", "--payload", "8"}, want: "datakey takes 16"},
		{name: "connections 0", args: []string{"--connections", "0"}, want: "--connections 0"},
		{name: "bad key", args: []string{"--key", "Bench"}, want: "invalid key name"},
		{name: "token without baseline", args: []string{"--token", "t"}, want: "--token needs --baseline"},
		{name: "baseline without token", args: []string{"--baseline", "--module", "/m.so", "--pin-file", "p"}, want: "--baseline needs --token"},
		{name: "baseline without module", args: []string{"--baseline", "--module", "", "--token", "t", "--pin-file", "p"}, want: "--baseline needs --module"},
		{name: "argument", args: []string{"now"}, want: `unexpected argument "now"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := fails(t, socket, nil, exitUsage, []string{tt.want}, append([]string{"bench"}, tt.args...)...)
			if r.stdout != "" {
				t.Errorf("stdout on a usage error: %q", r.stdout)
			}
		})
	}
	// No daemon: exit 5, nothing on stdout.
	r := fails(t, socket, nil, exitUnavailable, []string{"is keywardd running?"}, "bench", "--duration", "100ms")
	if r.stdout != "" {
		t.Errorf("stdout without a daemon: %q", r.stdout)
	}
}

// TestBench: wrap and mac at concurrency 1 and 4 on the default bench keys
// (created on the first run), as JSON and as a table.
func TestBench(t *testing.T) {
	socket := startDaemon(t)
	r := kw(t, socket, nil, "bench", "--op", "wrap", "--op", "mac", "--concurrency", "1,4", "--duration", "200ms", "--json")
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("bench: exit %d, stderr %q", r.code, r.stderr)
	}
	rows := benchJSON(t, r.stdout)
	var got []string
	for _, row := range rows {
		got = append(got, fmt.Sprintf("%s/%d/%d/%s", row.Op, row.Concurrency, row.Batch, row.Key))
		saneStats(t, row.Op+fmt.Sprint(row.Concurrency), row.benchStats, 0)
		if row.Baseline != nil || row.Ratio != nil || row.Interrupted || row.FirstError != "" || row.Connections != 1 || row.Payload != 32 {
			t.Errorf("row %+v: want no baseline, no ratio, not interrupted, 1 connection, 32 bytes", row)
		}
		if row.Seconds < 0.2 || row.Seconds > 5 {
			t.Errorf("%s c=%d ran %vs for --duration 200ms", row.Op, row.Concurrency, row.Seconds)
		}
	}
	want := []string{"wrap/1/0/bench/wrap", "wrap/4/0/bench/wrap", "mac/1/0/bench/mac", "mac/4/0/bench/mac"}
	if !slices.Equal(got, want) {
		t.Errorf("rows %v, want %v", got, want)
	}

	// The table: a header and one line per row; several connections.
	p := fresh("bench")
	ok(t, socket, nil, "key", "create", p+"/sig", "--type", "ed25519")
	out := ok(t, socket, nil, "bench", "--op", "sign,verify", "--key", p+"/sig", "--concurrency", "2", "--duration", "200ms", "--connections", "2")
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 3 || !slices.Equal(strings.Fields(lines[0]), []string{"op", "conc", "batch", "ops/s", "p50", "p99", "p999", "errors"}) {
		t.Fatalf("table:\n%s", out)
	}
	for i, op := range []string{"sign", "verify"} {
		f := strings.Fields(lines[i+1])
		if len(f) != 8 || f[0] != op || f[1] != "2" || f[2] != "-" || f[3] == "0" || f[7] != "0" {
			t.Errorf("table row %q", lines[i+1])
		}
	}
	// A key of the wrong type is a usage error; a missing one is not found.
	fails(t, socket, nil, exitUsage, []string{"wrap needs aes-256-gcm"}, "bench", "--key", p+"/sig", "--duration", "100ms")
	fails(t, socket, nil, exitNotFound, []string{"not found"}, "bench", "--key", p+"/none", "--duration", "100ms")
}

// TestBenchBatch: --batch counts items, and latencies per item are the
// call's over the batch size.
func TestBenchBatch(t *testing.T) {
	socket := startDaemon(t)
	r := kw(t, socket, nil, "bench", "--op", "wrap", "--batch", "10", "--concurrency", "1,4", "--duration", "200ms", "--json")
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("bench: exit %d, stderr %q", r.code, r.stderr)
	}
	rows := benchJSON(t, r.stdout)
	if len(rows) != 2 {
		t.Fatalf("%d rows, want 2", len(rows))
	}
	for _, row := range rows {
		if row.Op != "wrap" || row.Batch != 10 {
			t.Errorf("row %s batch %d", row.Op, row.Batch)
		}
		saneStats(t, fmt.Sprintf("batch wrap c=%d", row.Concurrency), row.benchStats, 10)
		if math.Abs(row.OpsPerS-10*row.CallsPerS) > 1 {
			t.Errorf("%v items/s for %v calls/s of 10 items", row.OpsPerS, row.CallsPerS)
		}
	}
	out := ok(t, socket, nil, "bench", "--op", "mac", "--batch", "10", "--concurrency", "1", "--duration", "200ms")
	if h := strings.Fields(strings.SplitN(out, "\n", 2)[0]); !slices.Contains(h, "items/s") || !slices.Contains(h, "p99/item") {
		t.Errorf("batch table header %v", h)
	}
}

// TestBenchBaseline runs --baseline against a dev daemon of its own, whose
// token directory (and so PIN file and SoftHSM2 configuration) is known.
func TestBenchBaseline(t *testing.T) {
	startDaemon(t) // builds keywardd into binDir
	module, err := softhsmModule()
	if err != nil {
		t.Skip(err)
	}
	dir, err := os.MkdirTemp("", "kwb-") // short: the socket path has at most 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "k.sock")
	cmd := exec.Command(filepath.Join(binDir, "keywardd"), "--dev", "--dev-dir", dir, "--socket", socket)
	cmd.Env = testEnv(nil)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	banner := make(chan []string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		var lines []string
		for len(lines) < 2 && sc.Scan() {
			lines = append(lines, sc.Text())
		}
		banner <- lines
		for sc.Scan() {
		}
		exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("dedicated keywardd: %v\n%s", err, stderr.String())
			}
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			t.Errorf("dedicated keywardd still running 15s after SIGTERM")
		}
	})
	select {
	case lines := <-banner:
		if len(lines) != 2 || lines[0] != "keywardd: serving on "+socket || !strings.Contains(lines[1], "SoftHSM2 token in "+dir+" ") {
			t.Fatalf("banner %q\nstderr:\n%s", lines, stderr.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("no banner within 60s\nstderr:\n%s", stderr.String())
	}

	bench := func(args ...string) result {
		t.Helper()
		c := exec.Command(bin, append([]string{"--socket", socket, "bench", "--baseline", "--module", module, "--token", "keyward-dev",
			"--pin-file", filepath.Join(dir, "pin")}, args...)...)
		c.Env = testEnv(map[string]string{"SOFTHSM2_CONF": filepath.Join(dir, "softhsm2.conf")})
		var out, errOut bytes.Buffer
		c.Stdout, c.Stderr = &out, &errOut
		err := c.Run()
		r := result{stdout: out.String(), stderr: errOut.String()}
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			r.code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return r
	}
	r := bench("--op", "wrap,unwrap", "--concurrency", "1,4", "--duration", "200ms", "--json")
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("bench --baseline: exit %d, stderr %q", r.code, r.stderr)
	}
	rows := benchJSON(t, r.stdout)
	if len(rows) != 4 {
		t.Fatalf("%d rows, want 4", len(rows))
	}
	for _, row := range rows {
		what := fmt.Sprintf("%s c=%d", row.Op, row.Concurrency)
		saneStats(t, what, row.benchStats, 0)
		if row.Baseline == nil || row.Ratio == nil {
			t.Fatalf("%s: no baseline or ratio", what)
		}
		saneStats(t, what+" baseline", *row.Baseline, 0)
		if want := row.OpsPerS / row.Baseline.OpsPerS; math.Abs(*row.Ratio-want) > 0.01*want {
			t.Errorf("%s: ratio %v, want %v", what, *row.Ratio, want)
		}
	}

	// status has no key and nothing in-process to compare with: its rows
	// have no baseline, beside a wrap row that has one.
	r = bench("--op", "status,wrap", "--concurrency", "2", "--duration", "200ms", "--json")
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("bench --op status,wrap --baseline: exit %d, stderr %q", r.code, r.stderr)
	}
	rows = benchJSON(t, r.stdout)
	if len(rows) != 2 || rows[0].Op != "status" || rows[0].Key != "" || rows[0].Baseline != nil || rows[0].Ratio != nil ||
		rows[1].Op != "wrap" || rows[1].Baseline == nil {
		t.Fatalf("rows %+v: want status without a baseline, then wrap with one", rows)
	}
	saneStats(t, "status c=2", rows[0].benchStats, 0)

	// Batch, as a table with the ratio column.
	r = bench("--op", "wrap", "--batch", "10", "--concurrency", "2", "--duration", "200ms")
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("bench --baseline --batch: exit %d, stderr %q", r.code, r.stderr)
	}
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if len(lines) != 2 || !strings.HasSuffix(strings.TrimSpace(lines[0]), "ratio") || !strings.HasSuffix(strings.TrimSpace(lines[1]), "x") {
		t.Errorf("table:\n%s", r.stdout)
	}

	// A wrong PIN file is the token's refusal: exit 3, before any load.
	bad := filepath.Join(dir, "bad-pin")
	if err := os.WriteFile(bad, []byte("00000000"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := exec.Command(bin, "--socket", socket, "bench", "--duration", "100ms", "--baseline", "--module", module, "--token", "keyward-dev", "--pin-file", bad)
	c.Env = testEnv(map[string]string{"SOFTHSM2_CONF": filepath.Join(dir, "softhsm2.conf")})
	out, err := c.Output()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitPermission || len(out) != 0 {
		t.Errorf("bench with a wrong PIN: %v, stdout %q; want exit %d and nothing", err, out, exitPermission)
	}
}

// TestBenchInterrupt: SIGINT stops a long run at once, with the rows so far.
func TestBenchInterrupt(t *testing.T) {
	socket := startDaemon(t)
	cmd := exec.Command(bin, "--socket", socket, "bench", "--op", "wrap", "--concurrency", "1,2", "--duration", "1m", "--json")
	cmd.Env = testEnv(nil)
	// stderr on a terminal, so that bench shows its progress: the signal
	// goes once it has counted an operation, however long that takes.
	ptm, pts := openPTY(t)
	var stdout bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, pts
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pts.Close()
	var stderr testutil.SyncBuffer
	counted := make(chan struct{})
	go func() {
		var once sync.Once
		buf := make([]byte, 4096)
		for {
			n, err := ptm.Read(buf)
			stderr.Write(buf[:n])
			if regexp.MustCompile(`, [1-9][0-9]* ops`).Match(buf[:n]) {
				once.Do(func() { close(counted) })
			}
			if err != nil {
				return
			}
		}
	}()
	select {
	case <-counted:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("no operation counted in 60 s; stderr: %q", stderr.String())
	}
	cmd.Process.Signal(os.Interrupt)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	// The run is two minutes long: stopping within 30 s is stopping at
	// once, whatever the machine's speed.
	var err error
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatal("bench still running 30s after SIGINT")
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitFailed {
		t.Errorf("exit %v, want %d", err, exitFailed)
	}
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(stderr.String(), "interrupted"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) { // the terminal's last bytes may still be on their way
			t.Errorf("stderr %q", stderr.String())
			break
		}
	}
	rows := benchJSON(t, stdout.String())
	if len(rows) != 1 || !rows[0].Interrupted || rows[0].Concurrency != 1 || rows[0].Errors != 0 || rows[0].Ops == 0 {
		t.Errorf("rows after SIGINT: %+v", rows)
	}
}

func TestBenchProgressOnlyOnTTY(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, w := range []any{&bytes.Buffer{}, f} {
		a := &app{}
		switch w := w.(type) {
		case *bytes.Buffer:
			a.stderr = w
		case *os.File:
			a.stderr = w
		}
		if a.progressWriter() != nil {
			t.Errorf("progress on %T", w)
		}
	}
}

// openPTY opens a pseudo-terminal: its controller, and the terminal a child
// writes to.
func openPTY(t *testing.T) (ptm, pts *os.File) {
	t.Helper()
	ptm, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	t.Cleanup(func() { ptm.Close() })
	if err := unix.IoctlSetPointerInt(int(ptm.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(ptm.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	pts, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	return ptm, pts
}
