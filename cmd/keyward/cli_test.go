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
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/protobuf/types/known/timestamppb"

	keywardv1 "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/client"
	"github.com/keyward/keyward/envelope"
)

func TestInputLimits(t *testing.T) {
	socket := startDaemon(t)
	p := fresh("lim")
	ok(t, socket, nil, "key", "create", p+"/aes", "--type", "aes-256-gcm")
	ok(t, socket, nil, "key", "create", p+"/mac", "--type", "hmac-sha256")

	atLimit := bytes.Repeat([]byte{0xa5}, 64<<10)
	blob := ok(t, socket, atLimit, "wrap", "--key", p+"/aes")
	if got := ok(t, socket, []byte(blob), "unwrap"); got != string(atLimit) {
		t.Errorf("64 KiB round trip lost bytes (%d back)", len(got))
	}

	over := append(bytes.Clone(atLimit), 0)
	for _, args := range [][]string{
		{"wrap", "--key", p + "/aes"},
		{"mac", "--key", p + "/mac"},
		{"sign", "--key", p + "/sig"},
		{"verify-mac", "--key", p + "/mac", "--mac", "AAAA"},
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
	socket := startDaemon(t)
	key := fresh("txt") + "/aes"
	ok(t, socket, nil, "key", "create", key, "--type", "aes-256-gcm")
	blob := strings.TrimSpace(ok(t, socket, []byte("s3cret"), "wrap", "--key", key))

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
	socket := startDaemon(t)
	key := fresh("m") + "/k"
	ok(t, socket, nil, "key", "create", key, "--type", "hmac-sha256")
	token := strings.TrimSpace(ok(t, socket, []byte("m"), "mac", "--key", key))
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
			fails(t, socket, []byte("m"), exitUsage, []string{tt.want}, append([]string{"verify-mac", "--key", key}, tt.args...)...)
		})
	}
	// A version that does not exist is the daemon's answer: not found.
	_, mac, _ := parseMac(token)
	fails(t, socket, []byte("m"), exitNotFound, []string{"KEY_NOT_FOUND"}, "verify-mac", "--key", key, "--mac", base64.StdEncoding.EncodeToString(mac), "--version", "7")
	fails(t, socket, []byte("m"), exitUsage, []string{"--signature is not standard base64"}, "verify", "--key", key, "--signature", "%%%")
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

// TestDaemonErrors: the real daemon's refusals become exit statuses and
// one stderr line naming the gRPC code and the reason. TestExitCodeReasons
// covers the reasons the dev daemon cannot be made to send.
func TestDaemonErrors(t *testing.T) {
	socket := startDaemon(t)
	p := fresh("err")
	aesKey, edKey := p+"/aes", p+"/ed"
	ok(t, socket, nil, "key", "create", aesKey, "--type", "aes-256-gcm")
	ok(t, socket, nil, "key", "create", edKey, "--type", "ed25519")
	blob := ok(t, socket, []byte("x"), "wrap", "--key", aesKey, "--context", "app=a")
	// A blob of the TPM backend's algorithm for a key of this daemon, whose
	// backend is PKCS#11.
	tpmBlob, err := envelope.Encode(envelope.Header{Alg: envelope.AlgTPMHMACGCM, Name: aesKey, Version: 1,
		Nonce: make([]byte, envelope.AlgTPMHMACGCM.NonceSize())}, make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		reason keywardv1.ErrorReason
		code   int
		stdin  string
		args   []string
	}{
		{keywardv1.ErrorReason_KEY_NOT_FOUND, exitNotFound, "x", []string{"wrap", "--key", p + "/nope"}},
		{keywardv1.ErrorReason_INVALID_REQUEST, exitUsage, "m", []string{"verify", "--key", edKey, "--signature", base64.StdEncoding.EncodeToString(make([]byte, 2000))}},
		{keywardv1.ErrorReason_DECRYPTION_FAILED, exitFailed, blob, []string{"unwrap", "--context", "app=b"}},
		{keywardv1.ErrorReason_MALFORMED_CIPHERTEXT, exitFailed, base64.StdEncoding.EncodeToString([]byte("garbage")), []string{"unwrap"}},
		{keywardv1.ErrorReason_WRONG_KEY_TYPE, exitFailed, "m", []string{"sign", "--key", aesKey}},
		{keywardv1.ErrorReason_KEY_EXISTS, exitFailed, "", []string{"key", "create", aesKey, "--type", "aes-256-gcm"}},
		{keywardv1.ErrorReason_UNSUPPORTED, exitFailed, envelope.EncodeText(tpmBlob), []string{"unwrap"}},
	}
	for _, tt := range tests {
		t.Run(tt.reason.String(), func(t *testing.T) {
			r := fails(t, socket, []byte(tt.stdin), tt.code, []string{"reason " + tt.reason.String(), code.Code(tt.reason.Code()).String()}, tt.args...)
			if r.stdout != "" {
				t.Errorf("stdout %q on an error", r.stdout)
			}
		})
	}

	// A uid the policy does not name connects (it is in the socket's group)
	// and is refused by the daemon; out of the group, by the kernel.
	adopt := []string{"key", "adopt", p + "/adopted", "--type", "aes-256-gcm", "--uri", "pkcs11:object=x"}
	t.Run("PERMISSION_DENIED", func(t *testing.T) {
		for _, args := range [][]string{adopt, {"wrap", "--key", aesKey}} {
			r := kwAs(t, outsider(t, true), socket, []byte("x"), args...)
			if r.code != exitPermission || r.stdout != "" {
				t.Errorf("%v as uid %d: exit %d, stdout %q; want %d and nothing", args, outsiderUID, r.code, r.stdout, exitPermission)
			}
			for _, want := range []string{"not allowed", "(PERMISSION_DENIED, reason PERMISSION_DENIED)"} {
				checkErrLine(t, r, want)
			}
		}
	})
	t.Run("socket closed to the uid", func(t *testing.T) {
		r := kwAs(t, outsider(t, false), socket, []byte("x"), "wrap", "--key", aesKey)
		if r.code != exitPermission || r.stdout != "" {
			t.Errorf("exit %d, stdout %q; want %d and nothing", r.code, r.stdout, exitPermission)
		}
		for _, want := range []string{"dial " + socket, "may not open the socket", "PERMISSION_DENIED"} {
			checkErrLine(t, r, want)
		}
	})
}

// TestExitCodeReasons: every reason of the API, as the client error it
// becomes, maps to an exit status. The reason to sentinel half is the
// client's (client/errors.go, checked by its TestErrorEveryReason).
func TestExitCodeReasons(t *testing.T) {
	tests := map[keywardv1.ErrorReason]struct {
		sentinel error
		code     int
	}{
		keywardv1.ErrorReason_PERMISSION_DENIED:    {client.ErrPermissionDenied, exitPermission},
		keywardv1.ErrorReason_BACKEND_UNAVAILABLE:  {client.ErrUnavailable, exitUnavailable},
		keywardv1.ErrorReason_SHUTTING_DOWN:        {client.ErrUnavailable, exitUnavailable},
		keywardv1.ErrorReason_AUDIT_UNAVAILABLE:    {client.ErrUnavailable, exitUnavailable},
		keywardv1.ErrorReason_RATE_LIMITED:         {client.ErrResourceExhausted, exitUnavailable},
		keywardv1.ErrorReason_TOO_MANY_REQUESTS:    {client.ErrResourceExhausted, exitUnavailable},
		keywardv1.ErrorReason_QUOTA_EXCEEDED:       {client.ErrQuotaExceeded, exitFailed},
		keywardv1.ErrorReason_KEY_NOT_FOUND:        {client.ErrNotFound, exitNotFound},
		keywardv1.ErrorReason_INVALID_REQUEST:      {client.ErrInvalidArgument, exitUsage},
		keywardv1.ErrorReason_INVALID_KEY_NAME:     {client.ErrInvalidName, exitUsage},
		keywardv1.ErrorReason_MALFORMED_CIPHERTEXT: {client.ErrMalformed, exitFailed},
		keywardv1.ErrorReason_DECRYPTION_FAILED:    {client.ErrDecrypt, exitFailed},
		keywardv1.ErrorReason_WRONG_KEY_TYPE:       {client.ErrWrongKeyType, exitFailed},
		keywardv1.ErrorReason_KEY_EXISTS:           {client.ErrKeyExists, exitFailed},
		keywardv1.ErrorReason_VERSION_DISABLED:     {client.ErrVersionDisabled, exitFailed},
		keywardv1.ErrorReason_VERSION_DESTROYED:    {client.ErrVersionDestroyed, exitFailed},
		keywardv1.ErrorReason_BELOW_MIN_VERSION:    {client.ErrBelowMinVersion, exitFailed},
		keywardv1.ErrorReason_NO_ENABLED_VERSION:   {client.ErrNoEnabledVersion, exitFailed},
		keywardv1.ErrorReason_UNSUPPORTED:          {client.ErrUnsupported, exitFailed},
		keywardv1.ErrorReason_WEAK_KEY:             {client.ErrWeakKey, exitFailed},
		keywardv1.ErrorReason_INTEGRITY:            {client.ErrIntegrity, exitFailed},
	}
	for v, name := range keywardv1.ErrorReason_name {
		if r := keywardv1.ErrorReason(v); r != keywardv1.ErrorReason_ERROR_REASON_UNSPECIFIED {
			if _, ok := tests[r]; !ok {
				t.Errorf("reason %s has no exit status in this test", name)
			}
		}
	}
	for r, tt := range tests {
		if got := exitCode(fmt.Errorf("wrap a/b: %w", tt.sentinel)); got != tt.code {
			t.Errorf("%s (%v): exit %d, want %d", r, tt.sentinel, got, tt.code)
		}
	}
}

// TestStatusText: status as the invoking uid, and as a uid the policy does
// not name, which sees no keys at all.
func TestAuditText(t *testing.T) {
	for _, tc := range []struct {
		st   statusJSON
		want string
	}{
		{statusJSON{Audit: "off"}, "off"},
		{statusJSON{Audit: "ok", AuditSync: "fsync"}, "ok (audit_sync fsync)"},
		{statusJSON{Audit: "ok", AuditSync: "write", AuditUnsynced: 42}, "ok (audit_sync write: 42 records written, not yet fsynced)"},
		{statusJSON{Audit: "failing: x", AuditSync: "fsync"}, "failing: x (audit_sync fsync)"},
		{statusJSON{}, "?"},
	} {
		if got := auditText(tc.st); got != tc.want {
			t.Errorf("auditText(%+v) = %q, want %q", tc.st, got, tc.want)
		}
	}
}

// TestStatusRateLimitedText: status says which limit refuses the caller
// and until when, in text and in JSON (the daemon's side is
// daemon.TestStatusRateLimited).
func TestStatusRateLimitedText(t *testing.T) {
	until := time.Date(2026, 12, 6, 18, 40, 0, 0, time.UTC)
	st := toStatusJSON(&keywardv1.StatusResponse{RateLimited: []*keywardv1.RateLimit{{Limit: "denied requests", PerMinute: 30, Until: timestamppb.New(until)}}})
	var out bytes.Buffer
	if err := printStatus(&app{stdout: &out, socket: "/s"}, st); err != nil {
		t.Fatal(err)
	}
	if want := "\nyou are RATE LIMITED: over 30 denied requests a minute; your calls are refused until 2026-12-06T18:40:00Z\n"; !strings.Contains(out.String(), want) {
		t.Errorf("status text lacks %q:\n%s", want, out.String())
	}
	var js bytes.Buffer
	if err := writeJSON(&js, st); err != nil {
		t.Fatal(err)
	}
	if want := `"rate_limited": [`; !strings.Contains(js.String(), want) || !strings.Contains(js.String(), `"until": "2026-12-06T18:40:00Z"`) {
		t.Errorf("status --json: %s", js.String())
	}
	out.Reset()
	if err := printStatus(&app{stdout: &out, socket: "/s"}, toStatusJSON(&keywardv1.StatusResponse{})); err != nil || strings.Contains(out.String(), "RATE LIMITED") {
		t.Errorf("status of a caller under its limits: %v\n%s", err, out.String())
	}
}

func TestStatusText(t *testing.T) {
	socket := startDaemon(t)
	ok(t, socket, nil, "key", "create", fresh("st")+"/k", "--type", "ed25519")
	var list struct {
		Keys []keyJSON `json:"keys"`
	}
	if err := json.Unmarshal([]byte(ok(t, socket, nil, "key", "list", "--json")), &list); err != nil {
		t.Fatal(err)
	}
	// The built keyward's version: stamped from git when the tree is clean,
	// unlike this test binary's.
	clientVersion := strings.Fields(ok(t, socket, nil, "--version"))[1]
	var st statusJSON
	r := kw(t, socket, nil, "status", "--json")
	if err := json.Unmarshal([]byte(r.stdout), &st); r.code != 0 || err != nil {
		t.Fatalf("status --json: exit %d, %v\n%s%s", r.code, err, r.stdout, r.stderr)
	}
	groups, err := os.Getgroups()
	if err != nil {
		t.Fatal(err)
	}
	if st.You.UID != uint32(os.Getuid()) || st.You.GID != uint32(os.Getgid()) || len(st.You.Groups) != len(groups) ||
		st.You.PID != int32(r.pid) || st.Keys != uint32(len(list.Keys)) || st.Version == "" || st.ClientVersion != clientVersion ||
		st.Audit != "ok" || st.AuditSync != "fsync" || st.AuditUnsynced != 0 {
		t.Errorf("status --json %+v: want uid %d, gid %d, groups %v, pid %d, %d keys", st, os.Getuid(), os.Getgid(), groups, r.pid, len(list.Keys))
	}
	groupText := make([]string, len(groups))
	for i, g := range groups {
		groupText[i] = fmt.Sprint(g)
	}
	r = kw(t, socket, nil, "status")
	for _, want := range []string{
		"keywardd " + st.Version + " at " + socket + ", serving since ",
		"\nbackend pkcs11: healthy\n",
		fmt.Sprintf("\nkeys: %d\n", len(list.Keys)),
		"\naudit log: ok (audit_sync fsync)\n",
		fmt.Sprintf("\nyou are uid=%d gid=%d groups=%s pid=%d unit=%s\n", os.Getuid(), os.Getgid(),
			orText(strings.Join(groupText, ","), "-"), r.pid, orText(st.You.Unit, "-")),
		"\nkeyward (this command) " + clientVersion + "\n",
	} {
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Errorf("status: exit %d, lacks %q:\n%s%s", r.code, want, r.stdout, r.stderr)
		}
	}

	t.Run("a uid the policy does not name", func(t *testing.T) {
		cred := outsider(t, true)
		r := kwAs(t, cred, socket, nil, "status")
		for _, want := range []string{"\nkeys: 0\n", fmt.Sprintf("\nyou are uid=%d gid=%d groups=- pid=%d unit=", cred.Uid, cred.Gid, r.pid)} {
			if r.code != 0 || !strings.Contains(r.stdout, want) {
				t.Errorf("status: exit %d, lacks %q:\n%s%s", r.code, want, r.stdout, r.stderr)
			}
		}
		if r := kwAs(t, cred, socket, nil, "key", "list"); r.code != 0 || r.stdout != "no keys\n" {
			t.Errorf("key list with no key to see: exit %d, %q %q", r.code, r.stdout, r.stderr)
		}
		if r := kwAs(t, cred, socket, nil, "key", "list", "--json"); r.code != 0 || strings.Join(strings.Fields(r.stdout), "") != `{"keys":[]}` {
			t.Errorf("key list --json with no key to see: exit %d, %q %q", r.code, r.stdout, r.stderr)
		}
	})
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
		{args: []string{"policy", "explain", "--help"}, want: []string{"--config FILE"}, not: []string{"--socket PATH"}},
		{args: []string{"audit", "verify", "-h"}, not: []string{"--timeout"}},
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
	complete := func(t *testing.T, socket string, args ...string) string {
		t.Helper()
		r := kw(t, socket, nil, append([]string{"__complete"}, args...)...)
		if r.code != 0 {
			t.Fatalf("__complete %v: exit %d, stderr %q", args, r.code, r.stderr)
		}
		return r.stdout
	}
	// Key types need no daemon.
	if out := complete(t, "/nonexistent/k.sock", "key", "create", "x", "--type", "ed"); !strings.Contains(out, "ed25519") {
		t.Errorf("completion of --type:\n%s", out)
	}
	// Key names come from the daemon, filtered by the types the command takes.
	t.Run("key names", func(t *testing.T) {
		socket := startDaemon(t)
		p := fresh("comp")
		ok(t, socket, nil, "key", "create", p+"/aes", "--type", "aes-256-gcm")
		ok(t, socket, nil, "key", "create", p+"/mac", "--type", "hmac-sha256")
		out := complete(t, socket, "wrap", "--key", p+"/")
		if !strings.Contains(out, p+"/aes") || strings.Contains(out, p+"/mac") {
			t.Errorf("completion of wrap --key:\n%s", out)
		}
		out = complete(t, socket, "key", "rotate", "")
		if !strings.Contains(out, p+"/aes") || !strings.Contains(out, p+"/mac") {
			t.Errorf("completion of key rotate:\n%s", out)
		}
	})
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
		{name: "set without flag", args: []string{"key", "set", "a"}, want: "give --min-decrypt-version N, --rotation-period PERIOD or --disable-versions-after DELAY"},
		{name: "rotation period without unit", args: []string{"key", "set", "a", "--rotation-period", "90"}, want: `--rotation-period "90": want 0 (none) or a whole number of d, h or m`},
		{name: "rotation period in seconds", args: []string{"key", "set", "a", "--rotation-period", "3600s"}, want: "--rotation-period"},
		{name: "rotation period too short", args: []string{"key", "set", "a", "--rotation-period", "59m"}, want: "between 1h and 3650d"},
		{name: "rotation period too long", args: []string{"key", "set", "a", "--rotation-period", "3651d"}, want: "between 1h and 3650d"},
		{name: "rotation period negative", args: []string{"key", "set", "a", "--rotation-period", "-1d"}, want: "--rotation-period"},
		{name: "rotation period fraction", args: []string{"key", "set", "a", "--rotation-period", "1.5d"}, want: "--rotation-period"},
		{name: "rotation period empty", args: []string{"key", "set", "a", "--rotation-period", ""}, want: "--rotation-period"},
		{name: "disable-after without unit", args: []string{"key", "set", "a", "--disable-versions-after", "30"}, want: `--disable-versions-after "30": want 0 (never) or a whole number of d, h or m`},
		{name: "disable-after in seconds", args: []string{"key", "set", "a", "--disable-versions-after", "1s"}, want: "--disable-versions-after"},
		{name: "disable-after too short", args: []string{"key", "set", "a", "--disable-versions-after", "23h"}, want: "between 1d and 3650d"},
		{name: "disable-after minutes", args: []string{"key", "set", "a", "--disable-versions-after", "90m"}, want: "between 1d and 3650d"},
		{name: "disable-after too long", args: []string{"key", "set", "a", "--disable-versions-after", "3651d"}, want: "between 1d and 3650d"},
		{name: "disable-after negative", args: []string{"key", "set", "a", "--disable-versions-after", "-1d"}, want: "--disable-versions-after"},
		{name: "disable-after empty", args: []string{"key", "set", "a", "--disable-versions-after", ""}, want: "--disable-versions-after"},
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
	socket := startDaemon(t)
	key := fresh("p") + "/k"
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"--socket", socket, "key", "create", key, "--type", "ed25519"}, strings.NewReader(""), &stdout, &stderr)
	if code != 0 || stdout.String() != "created "+key+" (ed25519): v1 enabled\n" || stderr.Len() != 0 {
		t.Errorf("run: %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
	stdout.Reset()
	code = run(context.Background(), []string{"--socket", socket, "verify", "--key", key, "--signature", base64.StdEncoding.EncodeToString(make([]byte, 64))},
		strings.NewReader("m"), &stdout, &stderr)
	if code != exitFailed || stdout.String() != "invalid\n" || stderr.Len() != 0 {
		t.Errorf("verify invalid: %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
}
