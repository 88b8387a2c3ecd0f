package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/keyward/keyward/api/keyward/v1"
)

// TestExplainMatchesDaemon runs each request through "keyward policy
// explain" and through a keywardd serving the same file, as the same
// caller, and wants the same answer: explain and the daemon share one
// decision (policy.Decide), with what the daemon reserves (sign with the
// audit checkpoint key) and its rule for operations without context.
func TestExplainMatchesDaemon(t *testing.T) {
	startDaemon(t) // builds keywardd into binDir
	dir := provision(t)
	module, err := softhsmModule()
	if err != nil {
		t.Fatal(err)
	}
	uid, gid := os.Getuid(), os.Getgid()
	sock := filepath.Join(binDir, "parity.sock")
	cfg := writeConfig(t, fmt.Sprintf(`socket = %q
audit_log = %q
audit_checkpoint_key = "audit/ckpt"
[backend]
module = %q
token = "keyward"
pin_file = %q
[limits]
max_denied_per_minute = 100000
[[rule]]
name = "app"
uids = [%d]
keys = ["app/*"]
operations = ["wrap", "datakey"]
context = { app = "x" }
[[rule]]
name = "signers"
uids = [%d]
keys = ["**"]
operations = ["sign", "verify", "public-key", "key.read", "mac"]
[[rule]]
name = "creators"
uids = [%d]
keys = ["adm/**"]
operations = ["key.create"]
`, sock, filepath.Join(t.TempDir(), "audit.log"), module, filepath.Join(dir, "pin"), uid, uid, uid))

	cmd := exec.Command(filepath.Join(binDir, "keywardd"), "--config", cfg)
	cmd.Env = testEnv(map[string]string{"SOFTHSM2_CONF": filepath.Join(dir, "softhsm2.conf")})
	var logs strings.Builder
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		<-exited
		if t.Failed() {
			t.Logf("keywardd's log:\n%s", logs.String())
		}
	})
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := pb.NewKeywardClient(conn)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.Status(ctx, &pb.StatusRequest{})
		cancel()
		if err == nil {
			break
		}
		select {
		case <-exited:
			t.Fatalf("keywardd exited: %s", logs.String())
		case <-time.After(50 * time.Millisecond):
		}
	}

	msg := []byte("m")
	calls := map[string]func(ctx context.Context, key string, cx map[string]string) error{
		"wrap": func(ctx context.Context, key string, cx map[string]string) error {
			_, err := c.Wrap(ctx, &pb.WrapRequest{Key: key, Plaintext: msg, Context: cx})
			return err
		},
		"datakey": func(ctx context.Context, key string, cx map[string]string) error {
			_, err := c.GenerateDataKey(ctx, &pb.GenerateDataKeyRequest{Key: key, Context: cx})
			return err
		},
		"sign": func(ctx context.Context, key string, _ map[string]string) error {
			_, err := c.Sign(ctx, &pb.SignRequest{Key: key, Message: msg})
			return err
		},
		"verify": func(ctx context.Context, key string, _ map[string]string) error {
			_, err := c.Verify(ctx, &pb.VerifyRequest{Key: key, Message: msg, Signature: msg})
			return err
		},
		"public-key": func(ctx context.Context, key string, _ map[string]string) error {
			_, err := c.GetPublicKey(ctx, &pb.GetPublicKeyRequest{Key: key})
			return err
		},
		"mac": func(ctx context.Context, key string, _ map[string]string) error {
			_, err := c.Mac(ctx, &pb.MacRequest{Key: key, Message: msg})
			return err
		},
		"verify-mac": func(ctx context.Context, key string, _ map[string]string) error {
			_, err := c.VerifyMac(ctx, &pb.VerifyMacRequest{Key: key, Message: msg, Mac: msg})
			return err
		},
		"key.read": func(ctx context.Context, key string, _ map[string]string) error {
			_, err := c.DescribeKey(ctx, &pb.DescribeKeyRequest{Key: key})
			return err
		},
		"key.create": func(ctx context.Context, key string, _ map[string]string) error {
			_, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: key, KeyType: "aes-256-gcm"})
			return err
		},
	}
	tests := []struct {
		op, key string
		ctx     map[string]string
		allowed bool
	}{
		{"wrap", "app/k", map[string]string{"app": "x"}, true},
		{"wrap", "app/k", map[string]string{"app": "x", "more": "ok"}, true},
		{"wrap", "app/k", map[string]string{"app": "y"}, false},
		{"wrap", "app/k", nil, false},
		{"wrap", "other/k", map[string]string{"app": "x"}, false},
		{"datakey", "app/k", map[string]string{"app": "x"}, true},
		{"sign", "audit/ckpt", nil, false}, // reserved: explain said "allowed" before
		{"sign", "audit/ckpt", map[string]string{"app": "x"}, false},
		{"sign", "app/k", map[string]string{"app": "x"}, true},
		{"verify", "audit/ckpt", nil, true},
		{"public-key", "audit/ckpt", nil, true},
		{"mac", "m/k", nil, true},
		{"verify-mac", "m/k", nil, false},
		{"key.read", "audit/ckpt", nil, true},
		{"key.create", "adm/new", nil, true},
		{"key.create", "other/new", nil, false},
	}
	for _, tt := range tests {
		name := fmt.Sprintf("%s %s %v", tt.op, tt.key, tt.ctx)
		args := []string{"policy", "explain", "--config", cfg, "--uid", strconv.Itoa(uid), "--gid", strconv.Itoa(gid), "--op", tt.op, "--key", tt.key}
		for k, v := range tt.ctx {
			args = append(args, "--context", k+"="+v)
		}
		r := keyward(t, nil, args...)
		if r.code != 0 && r.code != 1 {
			t.Fatalf("%s: explain exit %d: %s", name, r.code, r.stderr)
		}
		explained := r.code == 0
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := calls[tt.op](ctx, tt.key, tt.ctx)
		cancel()
		served := status.Code(err) != codes.PermissionDenied
		if explained != served || served != tt.allowed {
			t.Errorf("%s: explain allowed=%v, keywardd allowed=%v (%v), want %v\n%s", name, explained, served, err, tt.allowed, r.stdout)
		}
	}
}
