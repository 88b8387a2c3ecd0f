package softhsmtest

import (
	"bytes"
	_ "embed"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The latency module: a PKCS#11 module that forwards every call to another
// module after a delay, as a network HSM does (latency/latency.c says how).
// Tests and `keyward bench --baseline` (through keywardd bench-baseline)
// load it like any module, with the settings in the environment
// (Latency.Env).

//go:embed latency/latency.c
var latencySource []byte

// Environment variables the latency module reads when it is loaded.
const (
	EnvLatencyTarget      = "KEYWARD_LATENCY_TARGET"
	EnvLatencyRTT         = "KEYWARD_LATENCY_RTT_US"
	EnvLatencyMaxCalls    = "KEYWARD_LATENCY_MAX_CALLS"
	EnvLatencyMaxSessions = "KEYWARD_LATENCY_MAX_SESSIONS"
	EnvLatencyCounts      = "KEYWARD_LATENCY_COUNTS"
	EnvLatencyShortBuffer = "KEYWARD_LATENCY_SHORT_BUFFER"
	EnvLatencyFail        = "KEYWARD_LATENCY_FAIL"
)

// ErrNoCompiler: the latency module cannot be built without a C compiler
// and p11-kit's PKCS#11 header (Debian: gcc, libp11-kit-dev).
var ErrNoCompiler = errors.New("building the latency module needs gcc and libp11-kit-dev (run `make test`, which installs them)")

// p11kitInclude is where Debian's libp11-kit-dev puts p11-kit/pkcs11.h.
const p11kitInclude = "/usr/include/p11-kit-1"

// BuildLatencyModule compiles the latency module into dir and returns the
// shared object's path.
func BuildLatencyModule(dir string) (string, error) {
	if _, err := exec.LookPath("gcc"); err != nil {
		return "", ErrNoCompiler
	}
	if _, err := os.Stat(filepath.Join(p11kitInclude, "p11-kit", "pkcs11.h")); err != nil {
		return "", ErrNoCompiler
	}
	src := filepath.Join(dir, "latency.c")
	if err := os.WriteFile(src, latencySource, 0o600); err != nil {
		return "", err
	}
	so := filepath.Join(dir, "libkeyward-latency.so")
	cmd := exec.Command("gcc", "-Wall", "-Werror", "-O2", "-shared", "-fPIC", "-I"+p11kitInclude, "-o", so, src, "-ldl", "-lpthread")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("gcc latency.c: %w: %s", err, bytes.TrimSpace(out))
	}
	return so, nil
}

// Latency is how the latency module behaves: the module it forwards to,
// the round trip each call costs, and a partition's caps.
type Latency struct {
	Target      string        // the module forwarded to (SoftHSM2)
	RoundTrip   time.Duration // added to every call, half before and half after the target runs it
	MaxCalls    int           // calls the target runs at once (0: no cap)
	MaxSessions int           // sessions open at once, reported as ulMaxSessionCount (0: the target's)
	CountsFile  string        // where call counts are kept ("" for none; see Counts)
	// ShortBuffer: C_Encrypt, C_Decrypt and C_Sign answer
	// CKR_BUFFER_TOO_SMALL, asking for one byte more than the target
	// needs, to a buffer smaller than that (and keep the operation
	// active): a module that wants more room than the output's size.
	ShortBuffer bool
	// Fail makes one function (C_DecryptInit...) answer FailRV without
	// calling the target, as a failing device does ("": none).
	Fail   string
	FailRV uint
}

// Env returns the environment entries that configure the module for a
// process that loads it.
func (l Latency) Env() []string {
	env := []string{
		EnvLatencyTarget + "=" + l.Target,
		EnvLatencyRTT + "=" + strconv.FormatInt(l.RoundTrip.Microseconds(), 10),
		EnvLatencyMaxCalls + "=" + strconv.Itoa(l.MaxCalls),
		EnvLatencyMaxSessions + "=" + strconv.Itoa(l.MaxSessions),
	}
	if l.ShortBuffer {
		env = append(env, EnvLatencyShortBuffer+"=1")
	}
	if l.Fail != "" {
		env = append(env, EnvLatencyFail+"="+l.Fail+"="+strconv.FormatUint(uint64(l.FailRV), 10))
	}
	if l.CountsFile != "" {
		env = append(env, EnvLatencyCounts+"="+l.CountsFile)
	}
	return env
}

// Setenv sets l's environment in this process (for a module loaded by the
// test binary itself). The module reads it once, when it is first loaded.
func (l Latency) Setenv() error {
	for _, kv := range l.Env() {
		k, v, _ := strings.Cut(kv, "=")
		if err := os.Setenv(k, v); err != nil {
			return err
		}
	}
	return nil
}

// countsOffset is where the counters start in a counts file; the function
// names, one per line, come before.
const countsOffset = 4096

// Counts reads a counts file: the calls made to each PKCS#11 function, by
// every process that loaded the module with it, keyed by function name
// (C_Sign...). Functions never called are absent.
func Counts(path string) (map[string]uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(b) < countsOffset {
		return nil, fmt.Errorf("counts file %s: %d bytes, want at least %d", path, len(b), countsOffset)
	}
	names := strings.Split(strings.TrimRight(string(bytes.TrimRight(b[:countsOffset], "\x00")), "\n"), "\n")
	if len(b) < countsOffset+8*len(names) {
		return nil, fmt.Errorf("counts file %s: too short for %d counters", path, len(names))
	}
	out := map[string]uint64{}
	for i, name := range names {
		if n := binary.NativeEndian.Uint64(b[countsOffset+8*i:]); n > 0 {
			out[name] = n
		}
	}
	return out, nil
}

// Diff returns the calls made between two readings of Counts.
func Diff(before, after map[string]uint64) map[string]uint64 {
	out := map[string]uint64{}
	for name, n := range after {
		if d := n - before[name]; d > 0 {
			out[name] = d
		}
	}
	return out
}
