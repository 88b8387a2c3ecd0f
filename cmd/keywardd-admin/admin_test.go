package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/keyward/keyward/envelope"
	"github.com/keyward/keyward/hsm"
	"github.com/keyward/keyward/internal/secretfile"
	"github.com/keyward/keyward/keys"
	softhsmtest "github.com/keyward/keyward/softhsm-test"
)

// The device commands (keywardd doctor, define-counter, demo,
// bench-baseline) moved here from keyward with their tests: the real
// binary, tokens made by softhsm-test/provision-token.sh.

type result struct {
	stdout, stderr string
	code           int
	took           time.Duration
}

// kwd runs the keywardd binary with args and returns what it did.
func kwd(t *testing.T, env map[string]string, args ...string) result {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = testEnv(env)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String(), took: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("run keywardd %v: %v", args, err)
	}
	return r
}

// testEnv is the environment of child processes: this one's, without the
// variables that would make results depend on the caller's token set-up,
// plus extra.
func testEnv(extra map[string]string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if k == "SOFTHSM2_CONF" || k == "CREDENTIALS_DIRECTORY" {
			continue
		}
		env = append(env, kv)
	}
	for k, v := range extra {
		env = append(env, k+"="+v)
	}
	return env
}

// checkErrLine checks that stderr is exactly one "keywardd " line containing want.
func checkErrLine(t *testing.T, r result, want string) {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(r.stderr, "\n"), "\n")
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "keywardd ") || !strings.HasSuffix(r.stderr, "\n") {
		t.Errorf("stderr is not one \"keywardd ...\" line: %q", r.stderr)
	}
	if !strings.Contains(r.stderr, want) {
		t.Errorf("stderr %q does not contain %q", r.stderr, want)
	}
}

// provision makes a token labelled keyward in a fresh directory with
// softhsm-test/provision-token.sh and returns the directory.
func provision(t *testing.T) string {
	t.Helper()
	softhsmtest.Need(t, tok)
	dir := filepath.Join(t.TempDir(), "softhsm")
	cmd := exec.Command("bash", "../../softhsm-test/provision-token.sh", "--dir", dir, "--label", "keyward")
	cmd.Env = testEnv(nil)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("provision-token.sh: %v\n%s", err, stderr.String())
	}
	return dir
}

// pin returns the user PIN of a provisioned directory, to check it is never printed.
func pin(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "pin"))
	if err != nil || len(b) < 8 {
		t.Fatalf("read pin: %v (%d bytes)", err, len(b))
	}
	return string(b)
}

func TestAdminUsageErrors(t *testing.T) {
	mod := "/usr/lib/softhsm/libsofthsm2.so" // not loaded: every case fails before
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{name: "demo without dev-dir", args: []string{"demo"}, want: "--dev-dir is required"},
		{name: "demo unknown flag", args: []string{"demo", "--dev-dir", "x", "--verbose"}, want: "-verbose"},
		{name: "demo extra argument", args: []string{"demo", "--dev-dir", "x", "extra"}, want: `unexpected argument "extra"`},
		{name: "demo context without =", args: []string{"demo", "--dev-dir", "x", "--context", "app"}, want: "want key=value"},
		{name: "demo context empty key", args: []string{"demo", "--dev-dir", "x", "--context", "=v"}, want: "want key=value"},
		{name: "demo context twice", args: []string{"demo", "--dev-dir", "x", "--context", "a=1", "--context", "a=2"}, want: "given twice"},
		{name: "demo bad key name", args: []string{"demo", "--dev-dir", "x", "--key", "Demo/Key"}, want: "invalid key name"},
		{name: "doctor without module", args: []string{"doctor", "--token", "keyward", "--pin-file", "p"}, env: map[string]string{envModule: ""}, want: "--module is required"},
		{name: "doctor without token", args: []string{"doctor", "--module", mod, "--pin-file", "p"}, want: "exactly one of --token and --uri"},
		{name: "doctor token and uri", args: []string{"doctor", "--module", mod, "--token", "a", "--uri", "pkcs11:token=a", "--pin-file", "p"}, want: "exactly one of --token and --uri"},
		{name: "doctor uri with pin-value", args: []string{"doctor", "--module", mod, "--uri", "pkcs11:token=a?pin-value=1234", "--pin-file", "p"}, want: "pin-value"},
		{name: "doctor bad uri", args: []string{"doctor", "--module", mod, "--uri", "token=a", "--pin-file", "p"}, want: "must start with \"pkcs11:\""},
		{name: "doctor without pin source", args: []string{"doctor", "--module", mod, "--token", "a"}, want: "--pin-file is required"},
		{name: "doctor extra argument", args: []string{"doctor", "--module", mod, "--token", "a", "--pin-file", "p", "now"}, want: `unexpected argument "now"`},
		{name: "doctor unknown flag", args: []string{"doctor", "--force"}, want: "-force"},
		{name: "doctor tpm with token", args: []string{"doctor", "--tpm-device", "/dev/tpmrm0", "--state-dir", "/x", "--token", "k", "--pin-file", "p"}, want: "excludes --module, --token and --uri"},
		{name: "doctor tpm with uri", args: []string{"doctor", "--tpm-device", "/dev/tpmrm0", "--state-dir", "/x", "--uri", "pkcs11:token=k", "--pin-file", "p"}, want: "excludes --module, --token and --uri"},
		{name: "doctor tpm with module", args: []string{"doctor", "--tpm-device", "/dev/tpmrm0", "--state-dir", "/x", "--module", mod, "--pin-file", "p"}, want: "excludes --module, --token and --uri"},
		{name: "doctor tpm without state dir", args: []string{"doctor", "--tpm-device", "/dev/tpmrm0", "--pin-file", "p"}, want: "--tpm-device needs --state-dir"},
		{name: "doctor tpm without secret source", args: []string{"doctor", "--tpm-device", "/dev/tpmrm0", "--state-dir", "/x"}, want: "--pin-file is required"},
		{name: "doctor state dir without tpm", args: []string{"doctor", "--module", mod, "--token", "a", "--state-dir", "/x", "--pin-file", "p"}, want: "--state-dir is for a TPM"},
		{name: "doctor parent handle without tpm", args: []string{"doctor", "--module", mod, "--token", "a", "--parent-handle", "0x81000001", "--pin-file", "p"}, want: "--parent-handle is for a TPM"},
		{name: "doctor parent handle not persistent", args: []string{"doctor", "--tpm-device", "/dev/tpmrm0", "--state-dir", "/x", "--pin-file", "p", "--parent-handle", "0x80000001"}, want: "want a persistent handle"},
		{name: "define-counter without owner auth", args: []string{"define-counter", "--tpm-device", "/dev/tpmrm0", "--state-dir", "/x", "--pin-file", "p"}, want: "(or --trust-current-state) are required"},
		{name: "define-counter without secret source", args: []string{"define-counter", "--tpm-device", "/dev/tpmrm0", "--state-dir", "/x", "--owner-auth-file", "o"}, want: "--pin-file is required"},
		{name: "define-counter bad parent handle", args: []string{"define-counter", "--tpm-device", "/dev/tpmrm0", "--state-dir", "/x", "--pin-file", "p", "--owner-auth-file", "o", "--parent-handle", "srk"}, want: "want a persistent handle"},
		{name: "define-counter with an argument", args: []string{"define-counter", "extra"}, want: "unexpected argument"},
		{name: "bench-baseline bad op", args: []string{"bench-baseline", "--op", "status", "--key", "k", "--module", mod, "--token", "t", "--pin-file", "p"}, want: `--op "status"`},
		{name: "bench-baseline without token", args: []string{"bench-baseline", "--op", "wrap", "--key", "k", "--module", mod, "--pin-file", "p"}, want: "--token is required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := kwd(t, tt.env, tt.args...)
			if r.code != exitUsage {
				t.Errorf("exit %d, want %d (stderr %q)", r.code, exitUsage, r.stderr)
			}
			if r.stdout != "" {
				t.Errorf("stdout not empty on a usage error: %q", r.stdout)
			}
			checkErrLine(t, r, tt.want)
		})
	}
}

func TestAdminHelp(t *testing.T) {
	// "keywardd help" alone is --help (on stderr, as the flag package writes it).
	if r := kwd(t, nil, "help"); r.code != 0 || !strings.Contains(r.stderr, "keywardd bench-baseline ...") {
		t.Errorf("keywardd help: exit %d, %q", r.code, r.stderr)
	}
	if r := kwd(t, nil, "help", "bogus"); r.code != 2 || !strings.Contains(r.stderr, `no command "bogus" (commands: doctor,`) {
		t.Errorf("keywardd help bogus: exit %d, %q; want 2 and the commands there are", r.code, r.stderr)
	}
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{name: "help demo", args: []string{"help", "demo"}, want: []string{"--context k=v", "keywardd demo --dev-dir", "Exit status"}},
		{name: "demo -h", args: []string{"demo", "-h"}, want: []string{"--dev-dir DIR"}},
		{name: "help doctor", args: []string{"help", "doctor"}, want: []string{"--pin-file FILE", "keywardd doctor --module"}},
		{name: "doctor -h", args: []string{"doctor", "-h"}, want: []string{"--json", "CREDENTIALS_DIRECTORY", "5  the PKCS#11 module", "--tpm-device DEV", "--state-dir DIR", "stop keywardd first"}},
		{name: "define-counter -h", args: []string{"define-counter", "-h"}, want: []string{"--owner-auth-file FILE", "keywardd define-counter --tpm-device"}},
		{name: "bench-baseline -h", args: []string{"bench-baseline", "-h"}, want: []string{"keyward bench --baseline", "--concurrency N"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := kwd(t, nil, tt.args...)
			if r.code != 0 || r.stderr != "" {
				t.Fatalf("exit %d, stderr %q; want 0 and nothing", r.code, r.stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(r.stdout, w) {
					t.Errorf("help lacks %q:\n%s", w, r.stdout)
				}
			}
		})
	}
}

// demoSteps is the sequence of step names every demo run prints.
var demoSteps = []string{"token", "key", "wrap", "blob", "header", "unwrap", "unwrap", "rotate", "wrap", "unwrap", "doctor", "list", "done"}

// steps splits demo output into (step, text) lines.
func steps(t *testing.T, out string) (names []string, text map[string][]string) {
	t.Helper()
	text = map[string][]string{}
	re := regexp.MustCompile(`^([a-z]+): +(.*)$`)
	for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		m := re.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("demo line %q is not \"step: text\"", line)
		}
		names = append(names, m[1])
		text[m[1]] = append(text[m[1]], m[2])
	}
	return names, text
}

func TestDemoTwice(t *testing.T) {
	dir := provision(t)
	secret := pin(t, dir)
	for run, tc := range []struct {
		key               string
		old, new          uint32
		listing, lastWrap string
	}{
		{key: "created demo/app-secret (aes-256-gcm, v1)", old: 1, new: 2, listing: "demo/app-secret aes-256-gcm: v1 enabled, v2 enabled"},
		{key: "reusing demo/app-secret (aes-256-gcm, v1 enabled, v2 enabled)", old: 2, new: 3, listing: "demo/app-secret aes-256-gcm: v1 enabled, v2 enabled, v3 enabled"},
	} {
		t.Run(fmt.Sprintf("run%d", run+1), func(t *testing.T) {
			// SOFTHSM2_CONF is deliberately unset: demo sets it from --dev-dir.
			r := kwd(t, nil, "demo", "--dev-dir", dir)
			if r.code != 0 || r.stderr != "" {
				t.Fatalf("exit %d, stderr %q\nstdout:\n%s", r.code, r.stderr, r.stdout)
			}
			t.Logf("demo run %d took %v:\n%s", run+1, r.took, r.stdout)
			if r.took > time.Minute { // a hang, not a slow disk
				t.Errorf("demo took %v; it should take well under 2 s", r.took)
			}
			if strings.Contains(r.stdout, secret) {
				t.Fatal("demo printed the PIN")
			}
			names, text := steps(t, r.stdout)
			if !slices.Equal(names, demoSteps) {
				t.Fatalf("steps %v, want %v", names, demoSteps)
			}
			if !strings.HasPrefix(text["key"][0], tc.key) {
				t.Errorf("key line %q, want prefix %q", text["key"][0], tc.key)
			}
			wantWrap := fmt.Sprintf(`%q under context app=demo with demo/app-secret v%d`, demoPlaintext, tc.old)
			if text["wrap"][0] != wantWrap {
				t.Errorf("wrap line %q, want %q", text["wrap"][0], wantWrap)
			}
			raw, err := envelope.DecodeText(text["blob"][0])
			if err != nil {
				t.Fatalf("blob line is not a text blob: %v", err)
			}
			hdr, ct, err := envelope.Decode(raw)
			if err != nil {
				t.Fatalf("blob does not decode: %v", err)
			}
			if hdr.Name != "demo/app-secret" || hdr.Version != tc.old || hdr.Alg != envelope.AlgPKCS11GCM {
				t.Errorf("blob header %s v%d alg %d, want demo/app-secret v%d alg 1", hdr.Name, hdr.Version, hdr.Alg, tc.old)
			}
			if bytes.Contains(raw, []byte(demoPlaintext)) {
				t.Error("blob holds the plaintext")
			}
			wantHdr := fmt.Sprintf("name=demo/app-secret version=%d alg=1 nonce=12 bytes, blob %d bytes (ciphertext+tag %d)", tc.old, len(raw), len(ct))
			if text["header"][0] != wantHdr {
				t.Errorf("header line %q, want %q", text["header"][0], wantHdr)
			}
			for i, want := range []string{
				"context app=demo: round-trip ok",
				"context app=other: refused as expected (" + keys.ErrDecrypt.Error() + ")",
				fmt.Sprintf("v%d blob ok, and the v%d blob from before the rotation still unwraps", tc.new, tc.old),
			} {
				if !strings.HasPrefix(text["unwrap"][i], want) {
					t.Errorf("unwrap line %d %q, want prefix %q", i, text["unwrap"][i], want)
				}
			}
			if want := fmt.Sprintf("demo/app-secret now at v%d", tc.new); !strings.HasPrefix(text["rotate"][0], want) {
				t.Errorf("rotate line %q, want prefix %q", text["rotate"][0], want)
			}
			if want := fmt.Sprintf("same secret again: v%d blob", tc.new); !strings.HasPrefix(text["wrap"][1], want) {
				t.Errorf("second wrap line %q, want prefix %q", text["wrap"][1], want)
			}
			// Objects: every version plus the keyring's metadata MAC key.
			if want := fmt.Sprintf("token keyward: 1 key, %d objects checked, no findings", tc.new+1); text["doctor"][0] != want {
				t.Errorf("doctor line %q, want %q", text["doctor"][0], want)
			}
			if text["list"][0] != tc.listing {
				t.Errorf("list line %q, want %q", text["list"][0], tc.listing)
			}
		})
	}
}

func TestDemoKeyAndContext(t *testing.T) {
	dir := provision(t)
	r := kwd(t, nil, "demo", "--dev-dir", dir, "--key", "payments/db-password", "--context", "tenant=acme", "--context", "app=billing")
	if r.code != 0 {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	_, text := steps(t, r.stdout)
	for _, want := range []string{
		"context app=billing,tenant=acme: round-trip ok",
		"context app=other,tenant=acme: refused as expected",
	} {
		if !slices.ContainsFunc(text["unwrap"], func(s string) bool { return strings.HasPrefix(s, want) }) {
			t.Errorf("no unwrap line starting %q in %q", want, text["unwrap"])
		}
	}
	if want := "payments/db-password aes-256-gcm: v1 enabled, v2 enabled"; !slices.Contains(text["list"], want) {
		t.Errorf("list %q lacks %q", text["list"], want)
	}
}

func TestDemoErrors(t *testing.T) {
	dir := provision(t)
	tests := []struct {
		name string
		args []string
		env  map[string]string
		code int
		want string
	}{
		{name: "not a token directory", args: []string{"demo", "--dev-dir", t.TempDir()}, code: adminNotFound, want: "provision-token.sh"},
		{name: "no such token", args: []string{"demo", "--dev-dir", dir, "--token", "other"}, code: adminUnavailable, want: hsm.ErrTokenNotFound.Error()},
		{name: "module missing", args: []string{"demo", "--dev-dir", dir}, env: map[string]string{envModule: "/nonexistent/libsofthsm2.so"}, code: adminUnavailable, want: hsm.ErrModule.Error()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := kwd(t, tt.env, tt.args...)
			if r.code != tt.code {
				t.Errorf("exit %d, want %d (stderr %q)", r.code, tt.code, r.stderr)
			}
			checkErrLine(t, r, tt.want)
		})
	}
}

func TestTokenDoctor(t *testing.T) {
	dir := provision(t)
	secret := pin(t, dir)
	if r := kwd(t, nil, "demo", "--dev-dir", dir); r.code != 0 {
		t.Fatalf("demo: exit %d, stderr %q", r.code, r.stderr)
	}
	module, err := softhsmModule()
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"SOFTHSM2_CONF": filepath.Join(dir, "softhsm2.conf")}
	pinFile := filepath.Join(dir, "pin")

	t.Run("table", func(t *testing.T) {
		r := kwd(t, env, "doctor", "--module", module, "--token", "keyward", "--pin-file", pinFile)
		if r.code != 0 || r.stderr != "" {
			t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
		}
		if want := "token keyward: 1 key, 3 objects checked, no findings\n"; r.stdout != want {
			t.Errorf("stdout %q, want %q", r.stdout, want)
		}
	})
	t.Run("json by uri", func(t *testing.T) {
		r := kwd(t, env, "doctor", "--module", module, "--uri", "pkcs11:token=keyward", "--pin-file", pinFile, "--json")
		if r.code != 0 || r.stderr != "" {
			t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
		}
		var rep hsm.Report
		dec := json.NewDecoder(strings.NewReader(r.stdout))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&rep); err != nil {
			t.Fatalf("json: %v\n%s", err, r.stdout)
		}
		if rep.Keys != 1 || rep.Objects != 3 || rep.Findings == nil || len(rep.Findings) != 0 {
			t.Errorf("report %+v, want 1 key, 3 objects, findings []", rep)
		}
	})
	t.Run("module from environment", func(t *testing.T) {
		env := map[string]string{"SOFTHSM2_CONF": env["SOFTHSM2_CONF"], envModule: module}
		r := kwd(t, env, "doctor", "--token", "keyward", "--pin-file", pinFile)
		if r.code != 0 {
			t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
		}
	})
	t.Run("pin from credentials directory", func(t *testing.T) {
		env := map[string]string{"SOFTHSM2_CONF": env["SOFTHSM2_CONF"], "CREDENTIALS_DIRECTORY": dir}
		r := kwd(t, env, "doctor", "--module", module, "--token", "keyward")
		if r.code != 0 {
			t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
		}
	})

	wrongPIN := filepath.Join(t.TempDir(), "wrong-pin")
	if err := os.WriteFile(wrongPIN, []byte("0000000000000000"), 0o600); err != nil {
		t.Fatal(err)
	}
	openPIN := filepath.Join(t.TempDir(), "open-pin")
	if err := os.WriteFile(openPIN, []byte(secret), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(openPIN, 0o644); err != nil { // umask may have narrowed it
		t.Fatal(err)
	}
	errTests := []struct {
		name  string
		flags []string
		code  int
		want  string
	}{
		{name: "no such token", flags: []string{"--token", "absent", "--pin-file", pinFile}, code: adminUnavailable, want: hsm.ErrTokenNotFound.Error()},
		{name: "no such token by uri", flags: []string{"--uri", "pkcs11:token=keyward;serial=0000", "--pin-file", pinFile}, code: adminUnavailable, want: hsm.ErrTokenNotFound.Error()},
		{name: "module cannot be loaded", flags: []string{"--token", "keyward", "--pin-file", pinFile, "--module", "/nonexistent/module.so"}, code: adminUnavailable, want: hsm.ErrModule.Error()},
		{name: "pin file missing", flags: []string{"--token", "keyward", "--pin-file", filepath.Join(dir, "absent")}, code: adminNotFound, want: "no such file"},
		{name: "pin file readable by others", flags: []string{"--token", "keyward", "--pin-file", openPIN}, code: adminPermission, want: "mode 0644"},
		{name: "wrong pin", flags: []string{"--token", "keyward", "--pin-file", wrongPIN}, code: adminPermission, want: hsm.ErrCredential.Error()},
	}
	for _, tt := range errTests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"doctor", "--module", module}, tt.flags...)
			r := kwd(t, env, args...)
			if r.code != tt.code {
				t.Errorf("exit %d, want %d (stderr %q)", r.code, tt.code, r.stderr)
			}
			checkErrLine(t, r, tt.want)
			if strings.Contains(r.stderr+r.stdout, secret) {
				t.Error("the PIN was printed")
			}
		})
	}
}

// TestTokenDoctorFindings changes the token behind keyward's back with
// PKCS#11 calls (as a careless admin tool would) and checks the verdict: a
// well-protected keyward object that no record references is housekeeping
// (exit 0, printed), a key version missing from the token is weak (exit 1).
func TestTokenDoctorFindings(t *testing.T) {
	dir := provision(t)
	if r := kwd(t, nil, "demo", "--dev-dir", dir); r.code != 0 {
		t.Fatalf("demo: exit %d, stderr %q", r.code, r.stderr)
	}
	module, err := softhsmModule()
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	env := map[string]string{"SOFTHSM2_CONF": conf}
	doctor := func(t *testing.T, extra ...string) result {
		args := append([]string{"doctor", "--module", module, "--token", "keyward", "--pin-file", filepath.Join(dir, "pin")}, extra...)
		return kwd(t, env, args...)
	}

	t.Setenv("SOFTHSM2_CONF", conf)
	withToken(t, module, dir, func(p *pkcs11.Ctx, sh pkcs11.SessionHandle) {
		_, err := p.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
			pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, "keyward:stray:v1"),
			pkcs11.NewAttribute(pkcs11.CKA_ID, []byte{0xde, 0xad}),
		})
		if err != nil {
			t.Fatalf("generate stray key: %v", err)
		}
	})
	r := doctor(t)
	if r.code != 0 {
		t.Fatalf("housekeeping only: exit %d, want 0 (stderr %q)\n%s", r.code, r.stderr, r.stdout)
	}
	for _, want := range []string{"1 finding (housekeeping only, no weak objects)", "SEVERITY", "housekeeping", "keyward:stray:v1", "dead", "no key record references"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("report lacks %q:\n%s", want, r.stdout)
		}
	}

	withToken(t, module, dir, func(p *pkcs11.Ctx, sh pkcs11.SessionHandle) {
		tmpl := []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, "keyward:demo/app-secret:v1"),
		}
		if err := p.FindObjectsInit(sh, tmpl); err != nil {
			t.Fatal(err)
		}
		hs, _, err := p.FindObjects(sh, 2)
		p.FindObjectsFinal(sh)
		if err != nil || len(hs) != 1 {
			t.Fatalf("find demo/app-secret v1: %v, %d objects", err, len(hs))
		}
		if err := p.DestroyObject(sh, hs[0]); err != nil {
			t.Fatalf("destroy v1: %v", err)
		}
	})
	r = doctor(t)
	if r.code != adminFailed {
		t.Fatalf("weak finding: exit %d, want 1 (stdout %q)", r.code, r.stdout)
	}
	checkErrLine(t, r, "keywardd doctor: 1 weak finding(s)")
	for _, want := range []string{"2 findings: 1 weak, 1 housekeeping", "weak", "demo/app-secret", "missing from the token"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("report lacks %q:\n%s", want, r.stdout)
		}
	}

	r = doctor(t, "--json")
	if r.code != adminFailed {
		t.Fatalf("--json weak finding: exit %d, want 1", r.code)
	}
	var rep hsm.Report
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("json: %v\n%s", err, r.stdout)
	}
	if rep.Weak() == 0 || len(rep.Findings) != 2 {
		t.Errorf("report %+v: want 2 findings, one weak", rep)
	}

	// The demo runs the doctor too, and fails on a weak finding; v1 is gone,
	// but the demo only needs the newest version.
	r = kwd(t, nil, "demo", "--dev-dir", dir)
	if r.code != adminFailed || !strings.Contains(r.stdout, "doctor:  weak demo/app-secret v1: object listed in the key record is missing") {
		t.Errorf("demo on a weak token: exit %d, want 1\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// TestExitCode checks the mapping from errors to exit statuses, including
// errors wrapped the way hsm and secretfile wrap them.
func TestExitCode(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want int
	}{
		{name: "nil", err: nil, want: adminOK},
		{name: "usage", err: usagef("demo", "bad"), want: exitUsage},
		{name: "weak", err: fmt.Errorf("doctor: %w", errWeak), want: adminFailed},
		{name: "decrypt", err: fmt.Errorf("unwrap: %w", keys.ErrDecrypt), want: adminFailed},
		{name: "login", err: fmt.Errorf("token %q: %v: %w", "k", "CKR_PIN_INCORRECT", hsm.ErrCredential), want: adminPermission},
		{name: "pin file too open", err: fmt.Errorf("pin: %w", secretfile.ErrTooOpen), want: adminPermission},
		{name: "pin file unreadable", err: fmt.Errorf("pin: %w", &fs.PathError{Op: "open", Path: "p", Err: fs.ErrPermission}), want: adminPermission},
		{name: "token not found", err: fmt.Errorf("token %q: %w: %w", "k", hsm.ErrTokenNotFound, keys.ErrUnavailable), want: adminUnavailable},
		{name: "module", err: fmt.Errorf("load m: %w", hsm.ErrModule), want: adminUnavailable},
		{name: "unavailable", err: keys.ErrUnavailable, want: adminUnavailable},
		{name: "key not found", err: fmt.Errorf("key a: %w", keys.ErrKeyNotFound), want: adminNotFound},
		{name: "file not found", err: fmt.Errorf("pin: %w", fs.ErrNotExist), want: adminNotFound},
		{name: "config", err: fmt.Errorf("token matches 2 tokens: %w", hsm.ErrConfig), want: exitUsage},
		{name: "no pin source", err: fmt.Errorf("pin: %w", secretfile.ErrNoSource), want: exitUsage},
		{name: "other", err: errors.New("boom"), want: adminFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := adminExit(tt.err); got != tt.want {
				t.Errorf("adminExit(%v) = %d, want %d", tt.err, got, tt.want)
			}
		})
	}
}

// TestTokenDoctorReadOnly: the doctor on a token keyward never used reports
// nothing and writes nothing: the token's files are byte for byte the same
// afterwards, but for SoftHSM2's own login bookkeeping (a first daemon start
// would create the metadata key).
func TestTokenDoctorReadOnly(t *testing.T) {
	dir := provision(t)
	module, err := softhsmModule()
	if err != nil {
		t.Fatal(err)
	}
	snapshot := func() map[string]string {
		files := map[string]string{}
		filepath.WalkDir(filepath.Join(dir, "tokens"), func(p string, d os.DirEntry, err error) error {
			// token.object (login state) and generation change on any login;
			// every key or data object is a file of its own.
			if err == nil && !d.IsDir() && !slices.Contains([]string{"token.lock", "token.object", "generation"}, filepath.Base(p)) {
				b, _ := os.ReadFile(p)
				files[p] = string(b)
			}
			return nil
		})
		return files
	}
	before := snapshot()
	env := map[string]string{"SOFTHSM2_CONF": filepath.Join(dir, "softhsm2.conf")}
	r := kwd(t, env, "doctor", "--module", module, "--token", "keyward", "--pin-file", filepath.Join(dir, "pin"))
	if r.code != 0 {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	if want := "token keyward: 0 keys, 0 objects checked, no findings\n"; r.stdout != want {
		t.Errorf("stdout %q, want %q", r.stdout, want)
	}
	after := snapshot()
	if len(after) != len(before) {
		t.Fatalf("doctor changed the token: %d files before, %d after", len(before), len(after))
	}
	for p, b := range before {
		if after[p] != b {
			t.Errorf("doctor changed %s", p)
		}
	}
}

// withToken logs in to the provisioned token in this process and lends fn a
// read-write session; the module is finalised before withToken returns, so
// the keyward processes run afterwards see every change.
func withToken(t *testing.T, module, dir string, fn func(*pkcs11.Ctx, pkcs11.SessionHandle)) {
	t.Helper()
	userPIN, err := secretfile.Read(filepath.Join(dir, "pin"))
	if err != nil {
		t.Fatal(err)
	}
	p := pkcs11.New(module)
	if p == nil {
		t.Fatalf("load %s", module)
	}
	defer p.Destroy()
	if err := p.Initialize(); err != nil {
		t.Fatalf("C_Initialize: %v", err)
	}
	defer p.Finalize()
	slots, err := p.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range slots {
		ti, err := p.GetTokenInfo(s)
		if err != nil || ti.Label != "keyward" {
			continue
		}
		sh, err := p.OpenSession(s, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		if err != nil {
			t.Fatal(err)
		}
		defer p.CloseSession(sh)
		if err := p.Login(sh, pkcs11.CKU_USER, string(userPIN)); err != nil {
			t.Fatalf("login: %v", err)
		}
		defer p.Logout(sh)
		fn(p, sh)
		return
	}
	t.Fatal("token keyward not found")
}
