package kms

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/server/options/encryptionconfig"
	storagevalue "k8s.io/apiserver/pkg/storage/value"
	kmstypes "k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2/v2"
	"k8s.io/klog/v2"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/keyward/keyward/internal/testutil"
	softhsmtest "github.com/keyward/keyward/softhsm-test"
)

var (
	tok     *softhsmtest.Token
	binDir  string // keywardd and keyward, built once
	selfBin string // this test binary, runnable by other uids
)

const (
	childEnv   = "KEYWARD_KMS_TEST_CHILD"
	socketGID  = 4242
	deniedUID  = 12031 // named by a rule, but without the KMS operations
	providerNm = "keyward"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(child())
	}
	flag.Parse()
	if !testing.Verbose() { // the apiserver's code logs each failed probe through klog
		klog.LogToStderr(false)
		klog.SetOutput(io.Discard)
	}
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "keyward-kms-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binDir = dir
	for _, cmd := range []string{"keywardd", "keyward"} {
		out, err := exec.Command("go", "build", "-o", filepath.Join(dir, cmd), "github.com/keyward/keyward/cmd/"+cmd).CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", cmd, err, out)
			return 1
		}
	}
	bin, selfDir, err := testutil.CopySelf("keyward-kms-test-", "kms.test")
	defer os.RemoveAll(selfDir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	selfBin = bin
	return softhsmtest.Main(m, &tok)
}

// child calls Encrypt on $KW_SOCK once and prints the status code.
func child() int {
	conn, err := grpc.NewClient("unix://"+os.Getenv("KW_SOCK"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Println("dial", err)
		return 1
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = kmsapi.NewKeyManagementServiceClient(conn).Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: make([]byte, 32), Uid: "child-request"})
	fmt.Println(status.Code(err))
	return 0
}

// daemon is one keywardd on the test token with a KMS socket.
type daemon struct {
	t                testing.TB
	key              string // kms_key: one per test, the token is shared
	dir, sock, kms   string
	cfg, audit       string
	cmd              *exec.Cmd
	stderr           *testutil.SyncBuffer
	kmsConn          *grpc.ClientConn
	kmsClient        kmsapi.KeyManagementServiceClient
	encryptionConfig string
}

func newDaemon(t testing.TB, kmsKey string) *daemon {
	t.Helper()
	softhsmtest.Need(t, tok)
	return newDaemonOn(t, kmsKey, tok.Label, tok.PINFile)
}

// freshToken makes a token of the test's own, for a test that runs in
// parallel with others, and returns its PIN file.
func freshToken(t *testing.T, label string) string {
	t.Helper()
	softhsmtest.Need(t, tok)
	pin, err := tok.InitToken(label)
	if err != nil {
		t.Fatal(err)
	}
	pinFile := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(pinFile, []byte(pin), 0o600); err != nil {
		t.Fatal(err)
	}
	return pinFile
}

// newDaemonOn is newDaemon on the token labelled label.
func newDaemonOn(t testing.TB, kmsKey, label, pinFile string) *daemon {
	t.Helper()
	softhsmtest.Need(t, tok)
	// Tests read key records on every call; the benchmark runs with the
	// default (records reused for 1 s), as a production daemon does.
	maxAge := `metadata_max_age = "-1ns"`
	if _, bench := t.(*testing.B); bench {
		maxAge = ""
	}
	return newDaemonWith(t, kmsKey, fmt.Sprintf("module = %q\ntoken = %q\npin_file = %q\n%s", tok.Module, label, pinFile, maxAge))
}

// newDaemonWith is a keywardd whose [backend] section is backend.
func newDaemonWith(t testing.TB, kmsKey, backend string) *daemon {
	t.Helper()
	dir, err := os.MkdirTemp("", "keyward-kms-test-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755) // the denied client runs as another uid
	t.Cleanup(func() { os.RemoveAll(dir) })
	d := &daemon{t: t, key: kmsKey, dir: dir, sock: filepath.Join(dir, "run", "keyward.sock"), kms: filepath.Join(dir, "run", "kms.sock"),
		cfg: filepath.Join(dir, "keyward.toml"), audit: filepath.Join(dir, "audit", "audit.log")}
	body := fmt.Sprintf(`socket = %q
socket_group = "%d"
kms_socket = %q
kms_key = %q
audit_log = %q
[backend]
%s
[[rule]]
name = "admin"
uids = [0]
keys = ["**"]
operations = ["key.create", "key.rotate", "key.read", "key.disable", "wrap"]
[[rule]]
name = "kube-apiserver"
uids = [0]
keys = [%q]
operations = ["kms.encrypt", "kms.decrypt"]
[[rule]]
name = "an application"
uids = [%d]
keys = ["**"]
operations = ["wrap", "unwrap"]
`, d.sock, socketGID, d.kms, kmsKey, d.audit, backend, kmsKey, deniedUID)
	if err := os.WriteFile(d.cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	d.encryptionConfig = filepath.Join(dir, "encryption-config.yaml")
	enc := fmt.Sprintf(`apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: ["secrets"]
    providers:
      - kms:
          apiVersion: v2
          name: %s
          endpoint: unix://%s
          timeout: 3s
      - identity: {}
`, providerNm, d.kms)
	if err := os.WriteFile(d.encryptionConfig, []byte(enc), 0o600); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("unix://"+d.kms, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	d.kmsConn, d.kmsClient = conn, kmsapi.NewKeyManagementServiceClient(conn)
	t.Cleanup(d.stop)
	return d
}

// newClient is a KMS client on a connection of its own.
func (d *daemon) newClient(t testing.TB) kmsapi.KeyManagementServiceClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+d.kms, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return kmsapi.NewKeyManagementServiceClient(conn)
}

// start runs keywardd and waits until its KMS socket answers Status.
func (d *daemon) start() {
	d.t.Helper()
	d.cmd = exec.Command(filepath.Join(binDir, "keywardd"), "--config", d.cfg)
	d.stderr = &testutil.SyncBuffer{}
	d.cmd.Stdout, d.cmd.Stderr = d.stderr, d.stderr
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := d.kmsClient.Status(ctx, &kmsapi.StatusRequest{})
		cancel()
		if err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	d.t.Fatalf("keywardd did not serve its KMS socket:\n%s", d.stderr.String())
}

// stop ends keywardd (SIGTERM) and waits for it.
func (d *daemon) stop() {
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	d.cmd.Wait()
	d.cmd = nil
}

// keyward runs the CLI against the daemon as root.
func (d *daemon) keyward(args ...string) string {
	d.t.Helper()
	return d.keywardIn(nil, args...)
}

// keywardIn is keyward with stdin; it returns stdout.
func (d *daemon) keywardIn(stdin []byte, args ...string) string {
	d.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "keyward"), append([]string{"--socket", d.sock}, args...)...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		out = append(out, stderr.Bytes()...)
	}
	if err != nil {
		d.t.Fatalf("keyward %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// apiserver is one kube-apiserver's view of the encryption config: a fresh
// LoadEncryptionConfig, as at the apiserver's start or config reload, with
// its own KMS health probe and DEK state.
type apiserver struct {
	cfg    *encryptionconfig.EncryptionConfiguration
	cancel context.CancelFunc
}

func (d *daemon) apiserver() *apiserver {
	d.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cfg, err := encryptionconfig.LoadEncryptionConfig(ctx, d.encryptionConfig, false, "test-apiserver")
	if err != nil {
		cancel()
		d.t.Fatalf("LoadEncryptionConfig: %v", err)
	}
	d.t.Cleanup(cancel)
	return &apiserver{cfg: cfg, cancel: cancel}
}

var secrets = schema.GroupResource{Resource: "secrets"}

// healthz runs the apiserver's KMS health check ("kms-providers").
func (a *apiserver) healthz(t *testing.T) error {
	t.Helper()
	if len(a.cfg.HealthChecks) != 1 || a.cfg.HealthChecks[0].Name() != "kms-providers" {
		t.Fatalf("health checks %v, want kms-providers alone", a.cfg.HealthChecks)
	}
	return a.cfg.HealthChecks[0].Check(httptest.NewRequest("GET", "/healthz", nil))
}

func (a *apiserver) write(t *testing.T, name, value string) []byte {
	t.Helper()
	out, err := a.cfg.Transformers[secrets].TransformToStorage(context.Background(), []byte(value), storagevalue.DefaultContext(name))
	if err != nil {
		t.Fatalf("TransformToStorage: %v", err)
	}
	return out
}

func (a *apiserver) read(t *testing.T, name string, stored []byte) (string, bool) {
	t.Helper()
	out, stale, err := a.cfg.Transformers[secrets].TransformFromStorage(context.Background(), stored, storagevalue.DefaultContext(name))
	if err != nil {
		t.Fatalf("TransformFromStorage: %v", err)
	}
	return string(out), stale
}

// keyIDOf reads the key_id a stored value carries (in clear in etcd).
func keyIDOf(t *testing.T, stored []byte) string {
	t.Helper()
	prefix := "k8s:enc:kms:v2:" + providerNm + ":"
	if !bytes.HasPrefix(stored, []byte(prefix)) {
		t.Fatalf("stored value starts %q, want %q", stored[:min(len(stored), 40)], prefix)
	}
	var o kmstypes.EncryptedObject
	if err := proto.Unmarshal(stored[len(prefix):], &o); err != nil {
		t.Fatal(err)
	}
	return o.KeyID
}

// eventually waits for cond, bounded only to end a hang.
func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestApiserverDrivesKeywardd: kube-apiserver's encryption-at-rest code on
// a config naming keywardd's KMS socket: writes are KMS v2 values under the
// key's key_id and read back; after keyward key rotate a fresh transformer
// writes under the new key_id and reads old values as stale; after a
// keywardd restart a fresh transformer decrypts old values; with keywardd
// stopped the health check fails, and it passes again once keywardd is back.
func TestApiserverDrivesKeywardd(t *testing.T) {
	t.Parallel()
	d := newDaemonOn(t, "k8s/etcd", "kms-drives", freshToken(t, "kms-drives"))
	kmsKey := d.key
	d.start()
	d.keyward("key", "create", kmsKey, "--type", "aes-256-gcm")

	a1 := d.apiserver()
	if err := a1.healthz(t); err != nil {
		t.Fatalf("kms-providers health check: %v", err)
	}
	old := a1.write(t, "/registry/secrets/default/one", "s3cret-one")
	oldID := keyIDOf(t, old)
	if !strings.HasPrefix(oldID, "keyward:"+kmsKey+":v1:") {
		t.Fatalf("key_id %q", oldID)
	}
	if v, stale := a1.read(t, "/registry/secrets/default/one", old); v != "s3cret-one" || stale {
		t.Fatalf("read back %q stale=%v", v, stale)
	}

	d.keyward("key", "rotate", kmsKey)
	st, err := d.kmsClient.Status(context.Background(), &kmsapi.StatusRequest{})
	if err != nil || st.Healthz != "ok" || !strings.HasPrefix(st.KeyId, "keyward:"+kmsKey+":v2:") {
		t.Fatalf("Status after rotate = %v, %v", st, err)
	}
	a2 := d.apiserver() // its probe reads Status afresh: what a1 does once its 20 s health cache expires
	if err := a2.healthz(t); err != nil {
		t.Fatal(err)
	}
	fresh := a2.write(t, "/registry/secrets/default/two", "s3cret-two")
	if id := keyIDOf(t, fresh); id != st.KeyId {
		t.Fatalf("new write carries key_id %q, want %q", id, st.KeyId)
	}
	if v, stale := a2.read(t, "/registry/secrets/default/one", old); v != "s3cret-one" || !stale {
		t.Fatalf("old value through the new key: %q stale=%v, want stale", v, stale)
	}
	if v, stale := a2.read(t, "/registry/secrets/default/two", fresh); v != "s3cret-two" || stale {
		t.Fatalf("new value: %q stale=%v", v, stale)
	}

	d.stop()
	d.start()
	a3 := d.apiserver()
	for name, stored := range map[string][]byte{"one": old, "two": fresh} {
		if v, _ := a3.read(t, "/registry/secrets/default/"+name, stored); v != "s3cret-"+name {
			t.Fatalf("after a restart, %s reads %q", name, v)
		}
	}

	d.stop()
	a4 := d.apiserver()
	if err := a4.healthz(t); err == nil {
		t.Fatal("health check passes with keywardd stopped")
	}
	d.start()
	eventually(t, "health check once keywardd is back", func() error { return a4.healthz(t) })
}

// TestKMSDeniedAndMalformed: a uid without the KMS operations (though it may
// wrap and unwrap with the key) gets PERMISSION_DENIED, recorded in the
// audit log with its request uid; malformed requests get INVALID_ARGUMENT
// with the reason, and the daemon goes on serving.
func TestKMSDeniedAndMalformed(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run a client under another uid")
	}
	t.Parallel()
	d := newDaemonOn(t, "k8s/denied-test", "kms-denied", freshToken(t, "kms-denied"))
	kmsKey := d.key
	d.start()
	d.keyward("key", "create", kmsKey, "--type", "aes-256-gcm")
	d.keyward("key", "create", "other/key", "--type", "aes-256-gcm")

	cmd := exec.Command(selfBin)
	cmd.Env = append(os.Environ(), childEnv+"=1", "KW_SOCK="+d.kms)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: deniedUID, Gid: socketGID}}
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != codes.PermissionDenied.String() {
		t.Fatalf("Encrypt as uid %d: %q, %v", deniedUID, out, err)
	}
	if !auditHas(t, d.audit, func(r auditLine) bool {
		return r.Op == "kms.encrypt" && r.Peer.UID == deniedUID && r.Result == "PERMISSION_DENIED" && r.CallerRef == "child-request" && r.Key == kmsKey
	}) {
		t.Fatal("no audit record of the denied Encrypt")
	}

	ctx := context.Background()
	enc, err := d.kmsClient.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: make([]byte, 32), Uid: "u"})
	if err != nil {
		t.Fatal(err)
	}
	otherBlob := wrapOther(t, d)
	tests := []struct {
		name string
		req  *kmsapi.DecryptRequest
		want string
	}{
		{"key_id over 1 KiB", &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: strings.Repeat("x", 1025)}, "key_id is 1025 bytes"},
		{"foreign ciphertext", &kmsapi.DecryptRequest{Ciphertext: []byte("not an envelope at all"), KeyId: enc.KeyId}, "malformed ciphertext"},
		{"ciphertext of another key", &kmsapi.DecryptRequest{Ciphertext: otherBlob, KeyId: enc.KeyId}, "not of this endpoint's key"},
		{"wrong key_id", &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId + "x"}, "key_id does not name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := d.kmsClient.Decrypt(ctx, tt.req)
			if st, _ := status.FromError(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), tt.want) {
				t.Fatalf("Decrypt = %v, want InvalidArgument with %q", err, tt.want)
			}
		})
	}
	// Bytes that do not decode as the method's message: the daemon's codec
	// answers INVALID_ARGUMENT, not grpc-go's INTERNAL.
	req, reply := []byte{0xff, 0xff, 0xff}, []byte(nil)
	err = d.kmsConn.Invoke(ctx, "/v2.KeyManagementService/Decrypt", &req, &reply, grpc.ForceCodec(rawCodec{}))
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("undecodable request: %v", err)
	}
	if _, err := d.kmsClient.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId}); err != nil {
		t.Fatalf("Decrypt after the malformed requests: %v", err)
	}
}

// wrapOther makes a blob of another key through keyward's own API (which
// cannot bind it to the endpoint's reserved context: the key is what
// Decrypt refuses).
func wrapOther(t *testing.T, d *daemon) []byte {
	t.Helper()
	return []byte(d.keywardIn(make([]byte, 32), "wrap", "--key", "other/key", "--binary"))
}

// rawCodec sends and receives bytes as they are.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error)   { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(b []byte, v any) error { *(v.(*[]byte)) = b; return nil }
func (rawCodec) Name() string                    { return "proto" }

type auditLine struct {
	Peer struct {
		UID uint32 `json:"uid"`
	} `json:"peer"`
	Op        string `json:"op"`
	Key       string `json:"key"`
	Result    string `json:"result"`
	CallerRef string `json:"caller_ref"`
}

// auditHas reports whether a record of the audit log matches.
func auditHas(t *testing.T, path string, match func(auditLine) bool) bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var r auditLine
		if json.Unmarshal(sc.Bytes(), &r) == nil && match(r) {
			return true
		}
	}
	return false
}

// TestApiserverLongLived: one apiserver transformer, kept: after keyward key
// rotate, once the apiserver's own health cache (20 s, not settable from
// outside its package) has expired, its next health check finds the new
// key_id in Status, has a new seed encrypted under it, and its writes carry
// it; values written before read back stale. It waits for that condition,
// so it runs in parallel with the other tests, on a token of its own.
func TestApiserverLongLived(t *testing.T) {
	t.Parallel()
	d := newDaemonOn(t, "k8s/long-lived", "kms-long-lived", freshToken(t, "kms-long-lived"))
	d.start()
	d.keyward("key", "create", d.key, "--type", "aes-256-gcm")
	a := d.apiserver()
	old := a.write(t, "/registry/secrets/default/long", "before")
	oldID := keyIDOf(t, old)
	d.keyward("key", "rotate", d.key)
	deadline := time.Now().Add(90 * time.Second) // the cache is 20 s; this bound only ends a hang
	for {
		if err := a.healthz(t); err != nil {
			t.Fatalf("health check after the rotation: %v", err)
		}
		if id := keyIDOf(t, a.write(t, "/registry/secrets/default/new", "after")); id != oldID {
			if !strings.HasPrefix(id, "keyward:"+d.key+":v2:") {
				t.Fatalf("new key_id %q", id)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("writes still carry the old key_id")
		}
		time.Sleep(250 * time.Millisecond)
	}
	if v, stale := a.read(t, "/registry/secrets/default/long", old); v != "before" || !stale {
		t.Fatalf("old value: %q stale=%v, want stale", v, stale)
	}
}
