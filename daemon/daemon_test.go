package daemon_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/daemon"
	"github.com/keyward/keyward/internal/testutil"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/keys/keystest"
	"github.com/keyward/keyward/policy"
	softhsmtest "github.com/keyward/keyward/softhsm-test"
)

var tok *softhsmtest.Token

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(childClient())
	}
	if os.Getenv(floodEnv) != "" {
		os.Exit(h2Flood())
	}
	if os.Getenv(bgStoreEnv) != "" {
		os.Exit(bgStoreChild())
	}
	os.Exit(softhsmtest.Main(m, &tok))
}

// Test identities. Child clients run as these uids (CI runs as root, so
// SysProcAttr.Credential works); the socket's group is socketGID.
const (
	socketGID  = 4242
	appUID     = 12001 // the application: wrap/unwrap on app/* with context app=web
	opsUID     = 12002 // key administrator: may manage keys, not use them
	outsideUID = 12003 // named by no rule
	groupUID   = 12004 // allowed through supplementary group appGroupGID
	appGroup   = 4343
)

var allData = []string{"wrap", "unwrap", "rewrap", "datakey", "sign", "verify", "mac", "verify-mac", "public-key"}
var allAdmin = []string{"key.create", "key.rotate", "key.disable", "key.enable", "key.destroy", "key.read", "key.set-min-version", "key.adopt"}

func testRules() []policy.Rule {
	return []policy.Rule{
		{Name: "root for test set-up", UIDs: []uint32{0}, Keys: []string{"**"}, Operations: append(append([]string{}, allData...), allAdmin...)},
		{Name: "app", UIDs: []uint32{appUID}, Keys: []string{"app/*"}, Operations: []string{"wrap", "unwrap", "datakey"}, Context: map[string]string{"app": "web"}},
		{Name: "ops", UIDs: []uint32{opsUID}, Keys: []string{"**"}, Operations: allAdmin},
		{Name: "group", GIDs: []uint32{appGroup}, Keys: []string{"app/*"}, Operations: []string{"wrap"}},
	}
}

type running struct {
	sock    string
	cancel  context.CancelFunc
	done    chan error
	cfgPath string
}

// start runs the daemon in this process on the test token with rules
// (written to a config file so SIGHUP can reload it).
func start(t testing.TB, rules []policy.Rule, mod func(*config.Config)) *running {
	t.Helper()
	return startWith(t, rules, mod, nil)
}

// startWith is start with the daemon's log (debug level) going to logw.
func startWith(t testing.TB, rules []policy.Rule, mod func(*config.Config), logw io.Writer) *running {
	t.Helper()
	return startOpts(t, rules, mod, logw, nil)
}

// startOpts is startWith with opts changing the daemon's Options.
func startOpts(t testing.TB, rules []policy.Rule, mod func(*config.Config), logw io.Writer, opts func(*daemon.Options)) *running {
	t.Helper()
	softhsmtest.Need(t, tok)
	// Not t.TempDir(): its parent is 0700, and clients run as other uids.
	dir, err := os.MkdirTemp("", "keyward-daemon-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	cfg := config.Defaults()
	cfg.Socket = filepath.Join(dir, "run", "keyward.sock")
	cfg.SocketGroup = fmt.Sprint(socketGID)
	cfg.Backend.Module, cfg.Backend.Token, cfg.Backend.PINFile = tok.Module, tok.Label, tok.PINFile
	cfg.Backend.MetadataMaxAge = config.Duration{Duration: -1}
	cfg.AuditLog = filepath.Join(dir, "audit", "audit.log")
	cfg.Rules = rules
	if mod != nil {
		mod(&cfg)
	}
	cfgPath := filepath.Join(dir, "keyward.toml")
	writeConfig(t, cfgPath, cfg)
	var pol *policy.Policy
	pol, err = policy.Compile(cfg.Rules, policy.SystemResolver())
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if logw != nil {
		log = slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: slog.LevelDebug}))
	} else if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	ctx, cancel := context.WithCancel(context.Background())
	be, err := daemon.OpenBackend(ctx, cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	r := &running{sock: cfg.Socket, cancel: cancel, done: make(chan error, 1), cfgPath: cfgPath}
	ready := make(chan struct{})
	go func() {
		o := daemon.Options{ConfigPath: cfgPath, Logger: log, Ready: func(string) { close(ready) }}
		if opts != nil {
			opts(&o)
		}
		r.done <- daemon.Run(ctx, cfg, pol, be, o)
		be.Close()
	}()
	select {
	case <-ready:
	case err := <-r.done:
		t.Fatalf("daemon: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("daemon not ready")
	}
	t.Cleanup(func() {
		cancel()
		if err := <-r.done; err != nil {
			t.Errorf("daemon: %v", err)
		}
	})
	return r
}

func writeConfig(t testing.TB, path string, cfg config.Config) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "socket = %q\nsocket_group = %q\naudit_log = %q\n[backend]\nmodule = %q\ntoken = %q\npin_file = %q\nmetadata_max_age = \"-1ns\"\n",
		cfg.Socket, cfg.SocketGroup, cfg.AuditLog, cfg.Backend.Module, cfg.Backend.Token, cfg.Backend.PINFile)
	fmt.Fprintf(&b, "[limits]\nmax_batch = %d\nmax_concurrent_per_uid = %d\nmax_connections = %d\nmax_plaintext = %d\n",
		cfg.Limits.MaxBatch, cfg.Limits.MaxConcurrentPerUID, cfg.Limits.MaxConnections, cfg.Limits.MaxPlaintext)
	for _, r := range cfg.Rules {
		fmt.Fprintf(&b, "[[rule]]\nname = %q\nkeys = %s\noperations = %s\n", r.Name, tomlList(r.Keys), tomlList(r.Operations))
		if len(r.UIDs) > 0 {
			fmt.Fprintf(&b, "uids = %s\n", strings.ReplaceAll(fmt.Sprint(r.UIDs), " ", ", "))
		}
		if len(r.GIDs) > 0 {
			fmt.Fprintf(&b, "gids = %s\n", strings.ReplaceAll(fmt.Sprint(r.GIDs), " ", ", "))
		}
		for k, v := range r.Context {
			fmt.Fprintf(&b, "context.%s = %q\n", k, v)
		}
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := config.ParseConfig(path, []byte(b.String())); err != nil {
		t.Fatalf("test config: %v\n%s", err, b.String())
	}
}

func tomlList(s []string) string {
	q := make([]string, len(s))
	for i, v := range s {
		q[i] = fmt.Sprintf("%q", v)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

func dial(t testing.TB, sock string) pb.KeywardClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewKeywardClient(conn)
}

// reason returns "CODE REASON" of a call's error, or "OK".
func reason(err error) string {
	if err == nil {
		return "OK"
	}
	st, _ := status.FromError(err)
	for _, d := range st.Details() {
		if info, ok := d.(interface{ GetReason() string }); ok {
			return st.Code().String() + " " + info.GetReason()
		}
	}
	return st.Code().String() + " (" + st.Message() + ")"
}

// ---- child clients under other uids ----

const childEnv = "KEYWARD_DAEMON_CHILD"

// childClient runs one request per stdin line against $KW_SOCK and prints
// "CODE REASON [hex result]": "wrap KEY k=v,..", "unwrap HEX k=v,..",
// "create KEY TYPE", "rotate KEY", "status".
func childClient() int {
	conn, err := grpc.NewClient("unix://"+os.Getenv("KW_SOCK"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Println("dial", err)
		return 1
	}
	c := pb.NewKeywardClient(conn)
	ctx := context.Background()
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<20)
	for in.Scan() {
		f := strings.Fields(in.Text())
		ctxMap := func(i int) map[string]string {
			m := map[string]string{}
			if len(f) > i {
				for _, kv := range strings.Split(f[i], ",") {
					k, v, _ := strings.Cut(kv, "=")
					m[k] = v
				}
			}
			return m
		}
		var out string
		var err error
		switch f[0] {
		case "wrap":
			var r *pb.WrapResponse
			r, err = c.Wrap(ctx, &pb.WrapRequest{Key: f[1], Plaintext: []byte("child secret"), Context: ctxMap(2)})
			if err == nil {
				out = hex.EncodeToString(r.Ciphertext)
			}
		case "unwrap":
			blob, _ := hex.DecodeString(f[1])
			var r *pb.UnwrapResponse
			r, err = c.Unwrap(ctx, &pb.UnwrapRequest{Ciphertext: blob, Context: ctxMap(2)})
			if err == nil {
				out = string(r.Plaintext)
			}
		case "create":
			_, err = c.CreateKey(ctx, &pb.CreateKeyRequest{Key: f[1], KeyType: f[2]})
		case "rotate":
			_, err = c.RotateKey(ctx, &pb.RotateKeyRequest{Key: f[1]})
		case "set-rotation": // set-rotation KEY SECONDS
			secs, _ := strconv.ParseUint(f[2], 10, 64)
			_, err = c.SetRotationPolicy(ctx, &pb.SetRotationPolicyRequest{Key: f[1], RotationPeriodSeconds: secs})
		case "set-disable-after": // set-disable-after KEY SECONDS
			secs, _ := strconv.ParseUint(f[2], 10, 64)
			_, err = c.SetDisableAfter(ctx, &pb.SetDisableAfterRequest{Key: f[1], DisableAfterSeconds: secs})
		case "verifymac":
			mac, _ := hex.DecodeString(f[2])
			var r *pb.VerifyMacResponse
			r, err = c.VerifyMac(ctx, &pb.VerifyMacRequest{Key: f[1], Message: []byte("api-secret"), Mac: mac})
			if err == nil {
				out = map[bool]string{true: "valid", false: "invalid"}[r.Valid]
			}
		case "batchflood": // batchflood N KEY: N 1000-item BatchWraps, one after another
			n, _ := strconv.Atoi(f[1])
			items := make([]*pb.WrapRequest, 1000)
			for i := range items {
				items[i] = &pb.WrapRequest{Key: f[2], Plaintext: []byte("x")}
			}
			results := map[string]int{}
			for range n {
				_, err := c.BatchWrap(ctx, &pb.BatchWrapRequest{Items: items})
				results[reason(err)]++
			}
			out = fmt.Sprint(results)
		case "conns": // conns N: N more raw HTTP/2 connections, held open
			admitted, refused := holdConns(os.Getenv("KW_SOCK"), f[1])
			out = fmt.Sprintf("admitted=%d refused=%d", admitted, refused)
		case "ratelimits": // the limits Status says refuse this caller, and until when
			var r *pb.StatusResponse
			r, err = c.Status(ctx, &pb.StatusRequest{})
			for _, l := range r.GetRateLimited() {
				out += fmt.Sprintf("%q/%d/%d ", l.GetLimit(), l.GetPerMinute(), l.GetUntil().AsTime().Unix())
			}
			out = strings.TrimSpace(out)
		case "bg-request", "bg-why", "bg-approve", "bg-deny", "bg-revoke", "bg-list", "sign":
			out, err = breakglassChild(ctx, c, f)
		case "cred-put": // cred-put UNIT ID KEY [replace]
			_, err = c.PutCredential(ctx, &pb.PutCredentialRequest{Unit: f[1], Id: f[2], Key: f[3], Secret: []byte("child credential"), Replace: len(f) > 4})
		case "cred-rm": // cred-rm UNIT ID
			_, err = c.RemoveCredential(ctx, &pb.RemoveCredentialRequest{Unit: f[1], Id: f[2]})
		case "status":
			var r *pb.StatusResponse
			r, err = c.Status(ctx, &pb.StatusRequest{})
			if err == nil {
				out = fmt.Sprintf("uid=%d gid=%d groups=%v", r.You.Uid, r.You.Gid, r.You.Groups)
			}
		}
		fmt.Println(strings.TrimSpace(reason(err) + " " + out))
	}
	return 0
}

var (
	binOnce sync.Once
	binPath string
)

// childBinary copies the test binary to a directory other uids can read
// (go test's build directory is 0700).
func childBinary(t *testing.T) string {
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "keyward-daemon-test-")
		if err != nil {
			t.Fatal(err)
		}
		os.Chmod(dir, 0o755)
		b, err := os.ReadFile(os.Args[0])
		if err != nil {
			t.Fatal(err)
		}
		binPath = filepath.Join(dir, "client")
		if err := os.WriteFile(binPath, b, 0o755); err != nil {
			t.Fatal(err)
		}
	})
	return binPath
}

type client struct {
	t   *testing.T
	in  io.WriteCloser
	out *bufio.Scanner
}

// as starts a client process with uid, primary gid socketGID (so it may
// connect) and extra supplementary groups.
func as(t *testing.T, sock string, uid uint32, groups ...uint32) *client {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("peer-credential tests need root to run clients as other uids")
	}
	cmd := exec.Command(childBinary(t))
	cmd.Env = append(os.Environ(), childEnv+"=1", "KW_SOCK="+sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: socketGID, Groups: groups}}
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Wait() })
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	return &client{t: t, in: stdin, out: sc}
}

func (c *client) do(line string) string {
	c.t.Helper()
	fmt.Fprintln(c.in, line)
	if !c.out.Scan() {
		c.t.Fatalf("client died after %q", line)
	}
	return c.out.Text()
}

// TestPeerCredentials: who may do what is decided by the kernel's view of
// the caller: uid, primary and supplementary groups. Key administrators
// cannot use keys; context conditions are enforced.
func TestPeerCredentials(t *testing.T) {
	r := start(t, testRules(), nil)
	root := dial(t, r.sock)
	ctx := context.Background()
	for _, k := range []string{"app/db", "other/db"} {
		if _, err := root.CreateKey(ctx, &pb.CreateKeyRequest{Key: k, KeyType: "aes-256-gcm"}); err != nil {
			t.Fatal(err)
		}
	}
	rootBlob, err := root.Wrap(ctx, &pb.WrapRequest{Key: "app/db", Plaintext: []byte("root secret"), Context: map[string]string{"app": "web"}})
	if err != nil {
		t.Fatal(err)
	}
	blobHex := hex.EncodeToString(rootBlob.Ciphertext)

	app := as(t, r.sock, appUID)
	ops := as(t, r.sock, opsUID)
	outsider := as(t, r.sock, outsideUID)
	grouped := as(t, r.sock, groupUID, appGroup)

	if got := app.do("status"); got != fmt.Sprintf("OK uid=%d gid=%d groups=[%d]", appUID, socketGID, socketGID) && got != fmt.Sprintf("OK uid=%d gid=%d groups=[]", appUID, socketGID) {
		t.Errorf("status as app: %q", got)
	}
	tests := []struct {
		name string
		c    *client
		req  string
		want string // prefix
	}{
		{"app wraps with its context", app, "wrap app/db app=web", "OK "},
		{"app unwraps root's blob with the context", app, "unwrap " + blobHex + " app=web", "OK root secret"},
		{"app without the context condition", app, "wrap app/db", "PermissionDenied PERMISSION_DENIED"},
		{"app with another context value", app, "unwrap " + blobHex + " app=batch", "PermissionDenied PERMISSION_DENIED"},
		{"app on a key outside its glob", app, "wrap other/db app=web", "PermissionDenied PERMISSION_DENIED"},
		{"app may not create keys", app, "create app/new aes-256-gcm", "PermissionDenied PERMISSION_DENIED"},
		{"ops may create", ops, "create app/ops-made aes-256-gcm", "OK"},
		{"ops may rotate", ops, "rotate app/db", "OK"},
		{"ops may not wrap", ops, "wrap app/db app=web", "PermissionDenied PERMISSION_DENIED"},
		{"ops may not unwrap", ops, "unwrap " + blobHex + " app=web", "PermissionDenied PERMISSION_DENIED"},
		{"outsider denied", outsider, "unwrap " + blobHex + " app=web", "PermissionDenied PERMISSION_DENIED"},
		{"outsider may ask status", outsider, "status", "OK uid=12003"},
		{"supplementary group allows wrap", grouped, "wrap app/db", "OK "},
		{"supplementary group does not allow unwrap", grouped, "unwrap " + blobHex + " app=web", "PermissionDenied PERMISSION_DENIED"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.c.do(tt.req); !strings.HasPrefix(got, tt.want) {
				t.Errorf("%s: got %q, want %q...", tt.req, got, tt.want)
			}
		})
	}
	// A denial says nothing of the rules.
	_, err = dial(t, r.sock).Wrap(ctx, &pb.WrapRequest{Key: "nope/x", Plaintext: []byte("x")})
	if err == nil {
		t.Fatal("root wrap on a missing key succeeded")
	}
}

// TestSocketGroup: a uid that is not in the socket's group cannot even
// connect (the file is 0660).
func TestSocketGroup(t *testing.T) {
	r := start(t, testRules(), nil)
	if os.Getuid() != 0 {
		t.Skip("needs root")
	}
	cmd := exec.Command(childBinary(t))
	cmd.Env = append(os.Environ(), childEnv+"=1", "KW_SOCK="+r.sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: outsideUID, Gid: 9999}}
	cmd.Stdin = strings.NewReader("status\n")
	out, _ := cmd.CombinedOutput()
	if !strings.Contains(string(out), "Unavailable") && !strings.Contains(string(out), "permission denied") {
		t.Fatalf("a uid outside the socket group got: %q", out)
	}
}

// TestReload: SIGHUP swaps the policy; a broken file keeps the old one.
func TestReload(t *testing.T) {
	var logs testutil.SyncBuffer
	r := startWith(t, testRules(), nil, &logs)
	ctx := context.Background()
	root := dial(t, r.sock)
	if _, err := root.CreateKey(ctx, &pb.CreateKeyRequest{Key: "app/reload", KeyType: "aes-256-gcm"}); err != nil {
		t.Fatal(err)
	}
	outsider := as(t, r.sock, outsideUID)
	if got := outsider.do("wrap app/reload"); !strings.HasPrefix(got, "PermissionDenied") {
		t.Fatalf("before reload: %q", got)
	}
	// hup reloads and waits for the daemon to say it did (or failed to).
	reloads := func() int {
		l := logs.String()
		return strings.Count(l, "reload failed") + strings.Count(l, "reloaded the rules")
	}
	hup := func() {
		t.Helper()
		n := reloads()
		syscall.Kill(os.Getpid(), syscall.SIGHUP)
		for deadline := time.Now().Add(30 * time.Second); reloads() == n; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("no reload logged 30 s after SIGHUP")
			}
		}
	}
	// A broken file: the old policy stays.
	if err := os.WriteFile(r.cfgPath, []byte("[backend]\ntoken = \"x\"\n[[rule]]\nname = \"bad\"\nuids = [1]\nkeys = [\"**\"]\noperations = [\"everything\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	hup()
	if got := outsider.do("wrap app/reload"); !strings.HasPrefix(got, "PermissionDenied") {
		t.Fatalf("after a broken reload: %q", got)
	}
	root2 := dial(t, r.sock)
	if _, err := root2.Wrap(ctx, &pb.WrapRequest{Key: "app/reload", Plaintext: []byte("x")}); err != nil {
		t.Fatalf("root after a broken reload: %v", err)
	}
	// A good file that grants the outsider wrap.
	cfg := config.Defaults()
	cfg.Socket = r.sock
	cfg.SocketGroup = fmt.Sprint(socketGID)
	cfg.AuditLog = filepath.Join(filepath.Dir(r.cfgPath), "audit", "audit.log")
	cfg.Backend.Module, cfg.Backend.Token, cfg.Backend.PINFile = tok.Module, tok.Label, tok.PINFile
	cfg.Rules = append(testRules(), policy.Rule{Name: "outsider now", UIDs: []uint32{outsideUID}, Keys: []string{"app/reload"}, Operations: []string{"wrap"}})
	writeConfig(t, r.cfgPath, cfg)
	hup()
	if got := outsider.do("wrap app/reload"); !strings.HasPrefix(got, "OK") {
		t.Fatalf("after a good reload: %q", got)
	}
	// Both reloads are in the trail: the refused one with why, the applied
	// one with the file's digest and the rule it added.
	file, err := os.ReadFile(r.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(file)
	var got []string
	for _, a := range readAudit(t, filepath.Join(filepath.Dir(r.cfgPath), "audit", "audit.log")) {
		if a.Op == "config.reload" {
			if a.Peer.Unit != daemon.ReloadUnit || a.Peer.UID != uint32(os.Getuid()) {
				t.Errorf("reload record's peer: %+v", a.Peer)
			}
			got = append(got, a.Result+" "+a.Reason)
		}
	}
	want := "OK config sha256 " + hex.EncodeToString(sum[:]) + "; rules: added outsider now; break-glass tables: unchanged"
	if len(got) != 2 || !strings.HasPrefix(got[0], "INVALID_REQUEST refused, the running configuration kept: ") || got[1] != want {
		t.Errorf("reload records:\n%s\nwant a refusal, then %q", strings.Join(got, "\n"), want)
	}
}

// TestHangupBeforeServing: a SIGHUP caught before the daemon serves (its
// caller catches them from its start: Options.Hangups) is a reload once
// it serves, not lost and not fatal.
func TestHangupBeforeServing(t *testing.T) {
	var logs testutil.SyncBuffer
	hup := make(chan os.Signal, 1)
	hup <- syscall.SIGHUP
	startOpts(t, testRules(), nil, &logs, func(o *daemon.Options) { o.Hangups = hup })
	waitFor(t, func() bool { return strings.Contains(logs.String(), "reloaded the rules") }, "the reload asked for before serving")
}

// TestLimits: every limit answers with its own clear error while the
// daemon keeps serving.
func TestLimits(t *testing.T) {
	r := start(t, testRules(), func(c *config.Config) {
		c.Limits.MaxBatch = 10
		c.Limits.MaxConcurrentPerUID = 2
	})
	ctx := context.Background()
	c := dial(t, r.sock)
	if _, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: "limits/k", KeyType: "aes-256-gcm"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: "limits/m", KeyType: "hmac-sha256"}); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 64<<10+1)
	many := map[string]string{}
	for i := range 65 {
		many[fmt.Sprint("k", i)] = "v"
	}
	items := func(n int) []*pb.WrapRequest {
		out := make([]*pb.WrapRequest, n)
		for i := range out {
			out[i] = &pb.WrapRequest{Key: "limits/k", Plaintext: []byte("x")}
		}
		return out
	}
	tests := []struct {
		name string
		call func() error
		want string
	}{
		{"plaintext over 64 KiB", func() error {
			_, err := c.Wrap(ctx, &pb.WrapRequest{Key: "limits/k", Plaintext: big})
			return err
		}, "InvalidArgument INVALID_REQUEST"},
		{"message over 4 MiB", func() error {
			_, err := c.Unwrap(ctx, &pb.UnwrapRequest{Ciphertext: make([]byte, 5<<20)})
			return err
		}, "ResourceExhausted"},
		{"batch over the limit", func() error {
			_, err := c.BatchWrap(ctx, &pb.BatchWrapRequest{Items: items(11)})
			return err
		}, "InvalidArgument INVALID_REQUEST"},
		{"empty batch", func() error {
			_, err := c.BatchWrap(ctx, &pb.BatchWrapRequest{})
			return err
		}, "InvalidArgument INVALID_REQUEST"},
		{"context with too many pairs", func() error {
			_, err := c.Wrap(ctx, &pb.WrapRequest{Key: "limits/k", Plaintext: []byte("x"), Context: many})
			return err
		}, "InvalidArgument INVALID_REQUEST"},
		{"invalid key name", func() error {
			_, err := c.Wrap(ctx, &pb.WrapRequest{Key: "../etc/passwd", Plaintext: []byte("x")})
			return err
		}, "InvalidArgument INVALID_KEY_NAME"},
		{"not a blob", func() error {
			_, err := c.Unwrap(ctx, &pb.UnwrapRequest{Ciphertext: []byte("hello")})
			return err
		}, "InvalidArgument MALFORMED_CIPHERTEXT"},
		{"datakey length", func() error {
			_, err := c.GenerateDataKey(ctx, &pb.GenerateDataKeyRequest{Key: "limits/k", Length: 5000})
			return err
		}, "InvalidArgument INVALID_REQUEST"},
		{"mac too long to verify", func() error {
			_, err := c.VerifyMac(ctx, &pb.VerifyMacRequest{Key: "limits/m", Message: []byte("x"), Mac: make([]byte, 65)})
			return err
		}, "InvalidArgument INVALID_REQUEST"},
		{"bad state", func() error {
			_, err := c.SetVersionState(ctx, &pb.SetVersionStateRequest{Key: "limits/k", Version: 1})
			return err
		}, "InvalidArgument INVALID_REQUEST"},
		{"unknown key type", func() error {
			_, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: "limits/x", KeyType: "des"})
			return err
		}, "InvalidArgument INVALID_REQUEST"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := reason(tt.call()); !strings.HasPrefix(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
			// Still serving.
			if _, err := c.Wrap(ctx, &pb.WrapRequest{Key: "limits/k", Plaintext: []byte("ok")}); err != nil {
				t.Fatalf("daemon stopped serving: %v", err)
			}
		})
	}
	// A batch at the limit works item by item, with per-item errors.
	b := items(10)
	b[3] = &pb.WrapRequest{Key: "limits/absent", Plaintext: []byte("x")}
	resp, err := c.BatchWrap(ctx, &pb.BatchWrapRequest{Items: b})
	if err != nil {
		t.Fatal(err)
	}
	for i, res := range resp.Results {
		if (i == 3) != (res.GetError() != nil) {
			t.Errorf("item %d: %+v", i, res)
		}
	}
	if e := resp.Results[3].GetError(); e.Reason != pb.ErrorReason_KEY_NOT_FOUND || codes.Code(e.Code) != codes.NotFound {
		t.Errorf("item 3 error %+v", e)
	}
}

// TestPerUIDConcurrency: with 2 slots per uid, parallel calls beyond them
// are refused with RESOURCE_EXHAUSTED, the rest served, and the daemon
// keeps serving.
func TestPerUIDConcurrency(t *testing.T) {
	r := start(t, testRules(), func(c *config.Config) { c.Limits.MaxConcurrentPerUID = 2 })
	ctx := context.Background()
	c := dial(t, r.sock)
	if _, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: "limits/conc", KeyType: "aes-256-gcm"}); err != nil {
		t.Fatal(err)
	}
	items := make([]*pb.WrapRequest, 200)
	for i := range items {
		items[i] = &pb.WrapRequest{Key: "limits/conc", Plaintext: []byte("x")}
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	counts := map[string]int{}
	start := make(chan struct{})
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, err := c.BatchWrap(ctx, &pb.BatchWrapRequest{Items: items})
			mu.Lock()
			counts[reason(err)]++
			mu.Unlock()
		}()
	}
	close(start)
	wg.Wait()
	if counts["OK"] == 0 || counts["ResourceExhausted TOO_MANY_REQUESTS"] == 0 || len(counts) != 2 {
		t.Errorf("16 parallel batches with 2 slots per uid: %v", counts)
	}
	if _, err := c.Wrap(ctx, &pb.WrapRequest{Key: "limits/conc", Plaintext: []byte("ok")}); err != nil {
		t.Fatalf("daemon stopped serving: %v", err)
	}
}

// TestConnectionLimits: a client that connects and says nothing is cut off
// after the handshake timeout; beyond max_connections new connections wait
// (they are not accepted) while connected clients keep being served. Calls
// that must succeed wait for a ready connection: on a loaded machine a
// client's own handshake can outlast the short timeout, and its connection
// is then cut and made again.
func TestConnectionLimits(t *testing.T) {
	r := start(t, testRules(), func(c *config.Config) {
		c.Limits.HandshakeTimeout = config.Duration{Duration: 300 * time.Millisecond}
		c.Limits.MaxConnections = 2
	})
	ctx := context.Background()
	c := dial(t, r.sock)
	ready := grpc.WaitForReady(true)
	if _, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: "conn/k", KeyType: "aes-256-gcm"}, ready); err != nil {
		t.Fatal(err)
	}
	// The gRPC client above holds one connection. A silent one takes the second.
	silent, err := net.Dial("unix", r.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	// A third connection is not accepted while both are held: it gets no
	// answer (its dial succeeds in the kernel backlog, but nobody serves it).
	third := dial(t, r.sock)
	if _, err := third.Status(ctxTimeout(t, 200*time.Millisecond), &pb.StatusRequest{}); err == nil {
		t.Fatal("a connection beyond max_connections was served")
	}
	// Meanwhile the first client is served.
	if _, err := c.Wrap(ctx, &pb.WrapRequest{Key: "conn/k", Plaintext: []byte("x")}, ready); err != nil {
		t.Fatalf("connected client not served: %v", err)
	}
	// The silent connection is closed by the daemon after the handshake timeout...
	silent.SetReadDeadline(time.Now().Add(30 * time.Second)) // ends a hang; the timeout is 300 ms
	start := time.Now()
	buf := make([]byte, 4096)
	for {
		if _, err := silent.Read(buf); err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("silent connection still open after %v", time.Since(start))
			}
			break
		}
	}
	t.Logf("silent connection closed by the daemon after %v", time.Since(start).Round(10*time.Millisecond))
	// ...which frees its slot: the third client is now served.
	if _, err := third.Status(ctxTimeout(t, 30*time.Second), &pb.StatusRequest{}, ready); err != nil {
		t.Fatalf("third client after a slot freed: %v", err)
	}
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestAbuseLimits: a uid that keeps being denied, or keeps failing
// verify-mac, is refused with RATE_LIMITED while others are served.
func TestAbuseLimits(t *testing.T) {
	r := start(t, append(testRules(), policy.Rule{Name: "mac checker", UIDs: []uint32{appUID}, Keys: []string{"abuse/*"}, Operations: []string{"verify-mac"}}),
		func(c *config.Config) {
			c.Limits.MaxDeniedPerMinute = 3
			c.Limits.MaxFailedVerifyMacPerMinute = 3
		})
	ctx := context.Background()
	root := dial(t, r.sock)
	for _, k := range []string{"app/abuse", "abuse/m"} {
		ty := map[string]string{"app/abuse": "aes-256-gcm", "abuse/m": "hmac-sha256"}[k]
		if _, err := root.CreateKey(ctx, &pb.CreateKeyRequest{Key: k, KeyType: ty}); err != nil {
			t.Fatal(err)
		}
	}
	outsider := as(t, r.sock, outsideUID)
	var got []string
	for range 6 {
		got = append(got, strings.Fields(outsider.do("wrap app/abuse"))[0])
	}
	want := "PermissionDenied PermissionDenied PermissionDenied PermissionDenied ResourceExhausted ResourceExhausted"
	if strings.Join(got, " ") != want {
		t.Errorf("outsider's wraps: %v, want %s", got, want)
	}
	// Others are unaffected.
	if _, err := root.Wrap(ctx, &pb.WrapRequest{Key: "app/abuse", Plaintext: []byte("x")}); err != nil {
		t.Fatalf("root after the outsider's lockout: %v", err)
	}
	// verify-mac guessing by the app uid: 3 wrong guesses allowed, then refused,
	// even for the right MAC, until the window ends.
	m, err := root.Mac(ctx, &pb.MacRequest{Key: "abuse/m", Message: []byte("api-secret")})
	if err != nil {
		t.Fatal(err)
	}
	app := as(t, r.sock, appUID)
	checker := func(mac []byte) string {
		f := strings.Fields(app.do("verifymac abuse/m " + hex.EncodeToString(mac)))
		return f[len(f)-1]
	}
	var codes []string
	for i := range 6 {
		guess := make([]byte, 32)
		guess[0] = byte(i)
		codes = append(codes, checker(guess))
	}
	codes = append(codes, checker(m.Mac))
	if strings.Join(codes, " ") != "invalid invalid invalid invalid RATE_LIMITED RATE_LIMITED RATE_LIMITED" {
		t.Errorf("verify-mac guesses then the right mac: %v", codes)
	}
}

// heldCreate is a backend whose CreateKey waits until released: a key
// change still under way when keywardd stops.
type heldCreate struct {
	keys.Backend
	entered, release chan struct{}
}

func (h *heldCreate) CreateKey(ctx context.Context, name string, t keys.Type) (keys.KeyInfo, error) {
	close(h.entered)
	<-h.release
	return h.Backend.CreateKey(context.WithoutCancel(ctx), name, t)
}

// TestStopRecordsChangeInFlight: a key change still running when the
// shutdown grace ends (its connection closed, its context cancelled)
// finishes on the device, as a device call cannot be taken back; its
// outcome is recorded before the audit log closes, not lost. One that
// never returns does not hold the daemon past a second grace.
func TestStopRecordsChangeInFlight(t *testing.T) {
	t.Run("returns within the second grace", func(t *testing.T) {
		// A wait far longer than the test takes to release the call.
		got, logs := stopWithChangeInFlight(t, time.Minute, true)
		if len(got) != 2 || got[0] != "key.create STARTED" || got[1] == "key.create STARTED" {
			t.Fatalf("records of the change in flight: %v, want STARTED and its outcome\n%s", got, logs)
		}
	})
	t.Run("never returns", func(t *testing.T) {
		got, logs := stopWithChangeInFlight(t, 20*time.Millisecond, false)
		if len(got) != 1 || !strings.Contains(logs, "calls still running a grace period after") {
			t.Fatalf("records %v; log:\n%s", got, logs)
		}
	})
}

// stopWithChangeInFlight stops a daemon while a key create runs, with a
// shutdown grace of 1 ms and then wait for the handlers; release: the
// create returns once the grace has ended (else only after the daemon
// stopped). It returns the create's records (op and result) and the
// daemon's log.
func stopWithChangeInFlight(t *testing.T, wait time.Duration, release bool) ([]string, string) {
	dir := t.TempDir()
	cfg := config.Defaults()
	cfg.Socket = filepath.Join(dir, "k.sock")
	cfg.AuditLog = filepath.Join(dir, "audit", "audit.log")
	cfg.Limits.ShutdownGrace = config.Duration{Duration: time.Millisecond}
	cfg.Rules = testRules()
	pol, err := policy.Compile(cfg.Rules, policy.SystemResolver())
	if err != nil {
		t.Fatal(err)
	}
	be := &heldCreate{Backend: keystest.NewMem(), entered: make(chan struct{}), release: make(chan struct{})}
	var logs testutil.SyncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready, done := make(chan struct{}), make(chan error, 1)
	go func() {
		done <- daemon.Run(ctx, cfg, pol, be, daemon.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil)), ShutdownWait: wait, Ready: func(string) { close(ready) }})
	}()
	<-ready
	c := dial(t, cfg.Socket)
	go c.CreateKey(context.Background(), &pb.CreateKeyRequest{Key: "stop/inflight", KeyType: "aes-256-gcm"})
	<-be.entered
	cancel() // SIGTERM
	waitFor(t, func() bool { return strings.Contains(logs.String(), "grace period over") }, "the grace period to end")
	if release {
		close(be.release)
	} else {
		defer close(be.release) // after the daemon stopped without it
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range readAudit(t, cfg.AuditLog) {
		if a.Key == "stop/inflight" {
			got = append(got, a.Op+" "+a.Result)
		}
	}
	return got, logs.String()
}
