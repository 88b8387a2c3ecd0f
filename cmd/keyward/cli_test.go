package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"google.golang.org/genproto/googleapis/rpc/code"

	keywardv1 "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/client"
)

// TestFakeDaemonFlow runs the end-to-end flow against the in-process fake
// daemon: the CLI's side of every command, whether or not keywardd exists.
func TestFakeDaemonFlow(t *testing.T) {
	_, socket := serveFake(t)
	daemonFlow(t, socket)
}

func TestInputLimits(t *testing.T) {
	_, socket := serveFake(t)
	ok(t, socket, nil, "key", "create", "lim/aes", "--type", "aes-256-gcm")
	ok(t, socket, nil, "key", "create", "lim/mac", "--type", "hmac-sha256")

	atLimit := bytes.Repeat([]byte{0xa5}, 64<<10)
	blob := ok(t, socket, atLimit, "wrap", "--key", "lim/aes")
	if got := ok(t, socket, []byte(blob), "unwrap"); got != string(atLimit) {
		t.Errorf("64 KiB round trip lost bytes (%d back)", len(got))
	}

	over := append(bytes.Clone(atLimit), 0)
	for _, args := range [][]string{
		{"wrap", "--key", "lim/aes"},
		{"mac", "--key", "lim/mac"},
		{"sign", "--key", "lim/sig"},
		{"verify-mac", "--key", "lim/mac", "--mac", "AAAA"},
	} {
		r := fails(t, socket, over, exitUsage, []string{"over 64 KiB"}, args...)
		if r.stdout != "" {
			t.Errorf("%v printed %q", args, r.stdout)
		}
	}
	fails(t, socket, bytes.Repeat([]byte("A"), maxBlobText+1), exitUsage, []string{"over"}, "unwrap")
	fails(t, socket, bytes.Repeat([]byte("A"), maxBlob+1), exitUsage, []string{"over"}, "unwrap", "--binary")
}

func TestBlobText(t *testing.T) {
	_, socket := serveFake(t)
	ok(t, socket, nil, "key", "create", "txt/aes", "--type", "aes-256-gcm")
	blob := strings.TrimSpace(ok(t, socket, []byte("s3cret"), "wrap", "--key", "txt/aes"))

	for name, in := range map[string]string{
		"no newline":     blob,
		"surrounding ws": " \n\t" + blob + " \r\n\n",
	} {
		if got := ok(t, socket, []byte(in), "unwrap"); got != "s3cret" {
			t.Errorf("%s: unwrap gave %q", name, got)
		}
	}
	tests := []struct {
		name string
		in   string
		code int
		want string
	}{
		{name: "empty", in: "", code: exitUsage, want: "no blob on stdin"},
		{name: "only whitespace", in: " \n", code: exitUsage, want: "no blob on stdin"},
		{name: "not base64", in: "not*base64", code: exitFailed, want: "bad blob text encoding"},
		{name: "line break inside", in: blob[:10] + "\n" + blob[10:], code: exitFailed, want: "line break"},
		{name: "raw bytes without --binary", in: "KW\x01\x01", code: exitFailed, want: "--binary"},
		{name: "base64 of garbage", in: base64.StdEncoding.EncodeToString([]byte("garbage")), code: exitFailed, want: "MALFORMED_CIPHERTEXT"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := fails(t, socket, []byte(tt.in), tt.code, []string{tt.want}, "unwrap")
			if in := strings.TrimSpace(tt.in); in != "" && strings.Contains(r.stderr, in) {
				t.Errorf("the error echoes the input: %q", r.stderr)
			}
		})
	}
	fails(t, socket, nil, exitUsage, []string{"no blob on stdin"}, "unwrap", "--binary")
}

func TestVerifyMacFlags(t *testing.T) {
	_, socket := serveFake(t)
	ok(t, socket, nil, "key", "create", "m/k", "--type", "hmac-sha256")
	token := strings.TrimSpace(ok(t, socket, []byte("m"), "mac", "--key", "m/k"))
	tests := []struct {
		name string
		args []string
		want string
	}{
		{name: "no mac", args: nil, want: "--mac is required"},
		{name: "version differs from token", args: []string{"--mac", token, "--version", "2"}, want: "differs from the token's v1"},
		{name: "bad token version", args: []string{"--mac", "kw-mac:vx:AAAA"}, want: "bad version"},
		{name: "token without version", args: []string{"--mac", "kw-mac:AAAA"}, want: "bad version"},
		{name: "bad token base64", args: []string{"--mac", "kw-mac:v1:***"}, want: "not standard base64"},
		{name: "not base64", args: []string{"--mac", "***"}, want: "kw-mac:vN:BASE64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fails(t, socket, []byte("m"), exitUsage, []string{tt.want}, append([]string{"verify-mac", "--key", "m/k"}, tt.args...)...)
		})
	}
	// A version that does not exist is the daemon's answer: not found.
	_, mac, _ := parseMac(token)
	fails(t, socket, []byte("m"), exitNotFound, []string{"KEY_NOT_FOUND"}, "verify-mac", "--key", "m/k", "--mac", base64.StdEncoding.EncodeToString(mac), "--version", "7")
	fails(t, socket, []byte("m"), exitUsage, []string{"--signature is not standard base64"}, "verify", "--key", "m/k", "--signature", "%%%")
}

func TestMacToken(t *testing.T) {
	mac := bytes.Repeat([]byte{0xfb}, 32)
	tok := formatMacToken(12, mac)
	if !strings.HasPrefix(tok, "kw-mac:v12:") {
		t.Fatalf("token %q", tok)
	}
	tests := []struct {
		in      string
		version uint32
		wantErr bool
	}{
		{in: tok, version: 12},
		{in: "  " + tok + "\n", version: 12},
		{in: base64.StdEncoding.EncodeToString(mac), version: 0},
		{in: "kw-mac:v0:" + base64.StdEncoding.EncodeToString(mac), wantErr: true},
		{in: "kw-mac:v4294967296:" + base64.StdEncoding.EncodeToString(mac), wantErr: true},
		{in: "kw-mac:v-1:" + base64.StdEncoding.EncodeToString(mac), wantErr: true},
		{in: "kw-mac:v1:", wantErr: true},
		{in: "kw-mac:1:" + base64.StdEncoding.EncodeToString(mac), wantErr: true},
		{in: "", wantErr: true},
	}
	for _, tt := range tests {
		v, m, err := parseMac(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("parseMac(%q): err %v, wantErr %v", tt.in, err, tt.wantErr)
			continue
		}
		if err == nil && (v != tt.version || !bytes.Equal(m, mac)) {
			t.Errorf("parseMac(%q) = v%d %x", tt.in, v, m)
		}
	}
}

// TestDaemonErrors: the daemon's reasons become exit statuses and one
// stderr line naming the code and reason.
func TestDaemonErrors(t *testing.T) {
	f, socket := serveFake(t)
	ok(t, socket, nil, "key", "create", "err/aes", "--type", "aes-256-gcm")
	fails(t, socket, nil, exitPermission, []string{"not allowed", "PERMISSION_DENIED"},
		"key", "adopt", "err/adopted", "--type", "aes-256-gcm", "--uri", "pkcs11:object=x")
	fails(t, socket, nil, exitFailed, []string{"UNSUPPORTED"}, "key", "create", "err/rsa", "--type", "rsa-3072-pss")

	tests := []struct {
		reason keywardv1.ErrorReason
		code   int
	}{
		{keywardv1.ErrorReason_PERMISSION_DENIED, exitPermission},
		{keywardv1.ErrorReason_BACKEND_UNAVAILABLE, exitUnavailable},
		{keywardv1.ErrorReason_SHUTTING_DOWN, exitUnavailable},
		{keywardv1.ErrorReason_RATE_LIMITED, exitUnavailable},
		{keywardv1.ErrorReason_TOO_MANY_REQUESTS, exitUnavailable},
		{keywardv1.ErrorReason_KEY_NOT_FOUND, exitNotFound},
		{keywardv1.ErrorReason_INVALID_REQUEST, exitUsage},
		{keywardv1.ErrorReason_INVALID_KEY_NAME, exitUsage},
		{keywardv1.ErrorReason_DECRYPTION_FAILED, exitFailed},
		{keywardv1.ErrorReason_INTEGRITY, exitFailed},
		{keywardv1.ErrorReason_WEAK_KEY, exitFailed},
	}
	for _, tt := range tests {
		t.Run(tt.reason.String(), func(t *testing.T) {
			f.fail(tt.reason)
			defer f.fail(0)
			r := fails(t, socket, []byte("x"), tt.code, []string{"reason " + tt.reason.String(), code.Code(tt.reason.Code()).String()}, "wrap", "--key", "err/aes")
			if r.stdout != "" {
				t.Errorf("stdout %q on an error", r.stdout)
			}
		})
	}
}

func TestStatusText(t *testing.T) {
	_, socket := serveFake(t)
	out := ok(t, socket, nil, "status")
	for _, want := range []string{
		"keywardd fake at " + socket + ", serving since ",
		"backend pkcs11: healthy",
		"keys: 0",
		fmt.Sprintf("you are uid=%d gid=%d groups=%d pid=1 unit=fake.service", os.Getuid(), os.Getgid(), os.Getgid()),
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	var st map[string]any
	if err := json.Unmarshal([]byte(ok(t, socket, nil, "status", "--json")), &st); err != nil {
		t.Fatal(err)
	}
	you, _ := st["you"].(map[string]any)
	if you["uid"] != float64(os.Getuid()) || you["unit"] != "fake.service" {
		t.Errorf("status --json you = %v", you)
	}
	if out := ok(t, socket, nil, "key", "list"); out != "no keys\n" {
		t.Errorf("key list of an empty keyring: %q", out)
	}
	if out := ok(t, socket, nil, "key", "list", "--json"); strings.Join(strings.Fields(out), "") != `{"keys":[]}` {
		t.Errorf("key list --json of an empty keyring: %q", out)
	}
}

// TestEveryCommandHasExample walks the command tree: every command a user
// can run has an Example, and a help that shows it with the exit statuses.
func TestEveryCommandHasExample(t *testing.T) {
	var out bytes.Buffer
	a := &app{stdout: &out}
	root := a.rootCmd()
	root.SetOut(&out)
	n := 0
	walk(root, func(c *cobra.Command) {
		if c.Hidden {
			return
		}
		n++
		if c.Example == "" {
			t.Errorf("%q has no Example", c.CommandPath())
		}
		out.Reset()
		a.help(c, nil)
		for _, want := range []string{"Usage:\n  " + c.CommandPath(), "Example", "Exit status:", "5  unavailable"} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("help of %q lacks %q", c.CommandPath(), want)
			}
		}
		if c.Runnable() && !c.HasSubCommands() && c.Name() != "help" && c.Short == "" {
			t.Errorf("%q has no Short", c.CommandPath())
		}
	})
	if n < 25 {
		t.Errorf("walked %d commands; want every one", n)
	}
}

func TestHelpSections(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
		not  []string
	}{
		{args: []string{"--help"}, want: []string{"Data commands", "keyward wrap --key NAME", "keyward key destroy NAME --version N --yes",
			"keyward completion bash|zsh|fish|powershell", "keyward status [--json]", "--socket PATH", "$KEYWARD_SOCKET", "--timeout DURATION", "Examples:"}},
		{args: []string{"help", "mac"}, want: []string{"kw-mac:v<N>:<base64 MAC>", "--socket PATH", "Example:"}},
		{args: []string{"help", "key", "destroy"}, want: []string{"--yes", "cannot be undone"}},
		{args: []string{"token", "doctor", "--help"}, want: []string{"--pin-file FILE"}, not: []string{"--socket"}},
		{args: []string{"demo", "-h"}, not: []string{"--timeout"}},
		{args: []string{"completion", "bash", "--help"}, want: []string{"keyward completion bash >"}},
	} {
		r := keyward(t, nil, tc.args...)
		if r.code != 0 || r.stderr != "" {
			t.Errorf("%v: exit %d, stderr %q", tc.args, r.code, r.stderr)
		}
		for _, w := range tc.want {
			if !strings.Contains(r.stdout, w) {
				t.Errorf("%v lacks %q", tc.args, w)
			}
		}
		for _, w := range tc.not {
			if strings.Contains(r.stdout, w) {
				t.Errorf("%v shows %q", tc.args, w)
			}
		}
	}
}

func TestCompletion(t *testing.T) {
	for _, sh := range []string{"bash", "zsh", "fish"} {
		r := keyward(t, nil, "completion", sh)
		if r.code != 0 || !strings.Contains(r.stdout, "keyward") || len(r.stdout) < 1000 {
			t.Errorf("completion %s: exit %d, %d bytes, stderr %q", sh, r.code, len(r.stdout), r.stderr)
		}
	}
	_, socket := serveFake(t)
	ok(t, socket, nil, "key", "create", "comp/aes", "--type", "aes-256-gcm")
	ok(t, socket, nil, "key", "create", "comp/mac", "--type", "hmac-sha256")
	// Key names come from the daemon, filtered by the types the command takes.
	complete := func(args ...string) string {
		r := kw(t, socket, nil, append([]string{"__complete"}, args...)...)
		if r.code != 0 {
			t.Fatalf("__complete %v: exit %d, stderr %q", args, r.code, r.stderr)
		}
		return r.stdout
	}
	out := complete("wrap", "--key", "comp/")
	if !strings.Contains(out, "comp/aes") || strings.Contains(out, "comp/mac") {
		t.Errorf("completion of wrap --key:\n%s", out)
	}
	out = complete("key", "rotate", "")
	if !strings.Contains(out, "comp/aes") || !strings.Contains(out, "comp/mac") {
		t.Errorf("completion of key rotate:\n%s", out)
	}
	if out := complete("key", "create", "x", "--type", "ed"); !strings.Contains(out, "ed25519") {
		t.Errorf("completion of --type:\n%s", out)
	}
}

func TestDaemonUsageErrors(t *testing.T) {
	socket := "/nonexistent/k.sock" // every case fails before dialing
	tests := []struct {
		name string
		args []string
		want string
	}{
		{name: "key without subcommand", args: []string{"key"}, want: "missing subcommand (create, rotate"},
		{name: "key unknown subcommand", args: []string{"key", "drop"}, want: `unknown subcommand "drop"`},
		{name: "wrap without key", args: []string{"wrap"}, want: "--key is required"},
		{name: "wrap bad key", args: []string{"wrap", "--key", "A"}, want: "invalid key name"},
		{name: "wrap argument", args: []string{"wrap", "--key", "a", "now"}, want: `unexpected argument "now"`},
		{name: "wrap context", args: []string{"wrap", "--key", "a", "--context", "x"}, want: "want key=value"},
		{name: "unwrap context twice", args: []string{"unwrap", "--context", "a=1", "--context", "a=2"}, want: "given twice"},
		{name: "datakey length", args: []string{"datakey", "--key", "a", "--length", "2000"}, want: "want 16 to 1024"},
		{name: "verify without signature", args: []string{"verify", "--key", "a"}, want: "--signature is required"},
		{name: "verify bad version", args: []string{"verify", "--key", "a", "--signature", "AA==", "--version", "-1"}, want: "--version"},
		{name: "pubkey without name", args: []string{"pubkey"}, want: "missing the key NAME"},
		{name: "pubkey two names", args: []string{"pubkey", "a", "b"}, want: `unexpected argument "b"`},
		{name: "create without type", args: []string{"key", "create", "a"}, want: "--type is required"},
		{name: "create bad type", args: []string{"key", "create", "a", "--type", "des"}, want: `unknown key type "des"`},
		{name: "create bad name", args: []string{"key", "create", "/a", "--type", "ed25519"}, want: "invalid key name"},
		{name: "disable without version", args: []string{"key", "disable", "a"}, want: "--version N is required"},
		{name: "enable version 0", args: []string{"key", "enable", "a", "--version", "0"}, want: "--version N is required"},
		{name: "destroy without yes", args: []string{"key", "destroy", "a", "--version", "1"}, want: "without --yes"},
		{name: "set without flag", args: []string{"key", "set", "a"}, want: "give --min-decrypt-version"},
		{name: "adopt without uri", args: []string{"key", "adopt", "a", "--type", "aes-256-gcm"}, want: "--uri is required"},
		{name: "negative timeout", args: []string{"--timeout", "-1s", "status"}, want: "negative"},
		{name: "bad timeout", args: []string{"status", "--timeout", "soon"}, want: "--timeout"},
		{name: "status argument", args: []string{"status", "now"}, want: `unexpected argument "now"`},
		{name: "unknown command", args: []string{"rotate"}, want: `unknown command "rotate"`},
		{name: "help for unknown", args: []string{"help", "key", "drop"}, want: `no help for "key drop"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := fails(t, socket, nil, exitUsage, []string{tt.want}, tt.args...)
			if r.stdout != "" {
				t.Errorf("stdout on a usage error: %q", r.stdout)
			}
		})
	}
}

// TestExitCodeClient checks the mapping of the client's errors.
func TestExitCodeClient(t *testing.T) {
	tests := []struct {
		err  error
		want int
	}{
		{client.ErrPermissionDenied, exitPermission},
		{client.ErrUnavailable, exitUnavailable},
		{client.ErrResourceExhausted, exitUnavailable},
		{client.ErrNotFound, exitNotFound},
		{client.ErrInvalidName, exitUsage},
		{client.ErrInvalidArgument, exitUsage},
		{client.ErrDecrypt, exitFailed},
		{client.ErrVersionDisabled, exitFailed},
		{client.ErrInternal, exitFailed},
		{errInvalid, exitFailed},
		// A missing socket wraps fs.ErrNotExist too: the daemon is absent (5), not "not found" (4).
		{fmt.Errorf("dial: %w: %w", client.ErrUnavailable, fs.ErrNotExist), exitUnavailable},
		{fmt.Errorf("dial: %w: %w", client.ErrPermissionDenied, fs.ErrPermission), exitPermission},
	}
	for _, tt := range tests {
		if got := exitCode(fmt.Errorf("op: %w", tt.err)); got != tt.want {
			t.Errorf("exitCode(%v) = %d, want %d", tt.err, got, tt.want)
		}
	}
}

// TestRunInProcess drives run directly, as main does.
func TestRunInProcess(t *testing.T) {
	_, socket := serveFake(t)
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"--socket", socket, "key", "create", "p/k", "--type", "ed25519"}, strings.NewReader(""), &stdout, &stderr)
	if code != 0 || stdout.String() != "created p/k (ed25519): v1 enabled\n" || stderr.Len() != 0 {
		t.Errorf("run: %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
	stdout.Reset()
	code = run(context.Background(), []string{"--socket", socket, "verify", "--key", "p/k", "--signature", base64.StdEncoding.EncodeToString(make([]byte, 64))},
		strings.NewReader("m"), &stdout, &stderr)
	if code != exitFailed || stdout.String() != "invalid\n" || stderr.Len() != 0 {
		t.Errorf("verify invalid: %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
}
