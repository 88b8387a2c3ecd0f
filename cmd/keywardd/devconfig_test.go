package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/keyward/keyward/api/keyward/v1"
	softhsmtest "github.com/keyward/keyward/softhsm-test"
)

// TestDevConfig: --dev --config FILE serves the dev token under the file's
// rules and limits (the invoking uid gets only what the file gives it).
func TestDevConfig(t *testing.T) {
	softhsmtest.Need(t, tok)
	dir := t.TempDir()
	sock := filepath.Join(dir, "dev.sock")
	cfg := filepath.Join(dir, "policy.toml")
	body := fmt.Sprintf(`log_level = "warn"

[limits]
max_batch = 2

[[rule]]
name = "app"
uids = [%d]
keys = ["app/**"]
operations = ["key.create", "wrap"]
`, os.Getuid())
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startDaemon(t, sock, nil, "--dev", "--socket", sock, "--config", cfg)
	go drain(p)
	c := dial(t, sock)
	ctx := context.Background()
	if _, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: "app/k", KeyType: "aes-256-gcm"}); err != nil {
		t.Fatalf("create allowed by the file: %v", err)
	}
	w, err := c.Wrap(ctx, &pb.WrapRequest{Key: "app/k", Plaintext: []byte("x")})
	if err != nil {
		t.Fatalf("wrap allowed by the file: %v", err)
	}
	for what, call := range map[string]func() error{
		"unwrap (not in the file)": func() error {
			_, err := c.Unwrap(ctx, &pb.UnwrapRequest{Ciphertext: w.Ciphertext})
			return err
		},
		"create outside app/": func() error {
			_, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: "other/k", KeyType: "aes-256-gcm"})
			return err
		},
	} {
		if err := call(); status.Code(err) != codes.PermissionDenied {
			t.Errorf("%s: %v, want PermissionDenied", what, err)
		}
	}
	var out, errOut bytes.Buffer
	if code := run(ctx, []string{"--check-config", "--dev", "--config", cfg}, &out, &errOut); code != exitOK || out.String() != cfg+": ok for --dev\n" {
		t.Errorf("--check-config --dev --config: exit %d, %q %q", code, out.String(), errOut.String())
	}
	items := []*pb.WrapRequest{{Key: "app/k"}, {Key: "app/k"}, {Key: "app/k"}}
	if _, err := c.BatchWrap(ctx, &pb.BatchWrapRequest{Items: items}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("batch of 3 over the file's max_batch 2: %v, want InvalidArgument", err)
	}
}

// drain reads the daemon's stdout so that it never blocks on it.
func drain(p *proc) {
	for p.stdout.Scan() {
	}
}

// TestDevConfigRefused: a key of the file that --dev would not use is an
// error naming it and its line (exit 3), as is a bad rule; the dev flags
// without --dev are a usage error.
func TestDevConfigRefused(t *testing.T) {
	softhsmtest.Need(t, tok)
	// run is called in this process: should it ever make the dev token,
	// devmode sets SOFTHSM2_CONF, which the other tests' token needs.
	t.Setenv("SOFTHSM2_CONF", os.Getenv("SOFTHSM2_CONF"))
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	full := write("full.toml", "socket = \"/run/x.sock\"\n\n[backend]\nkind = \"pkcs11\"\ntoken = \"prod\"\n\n[[rule]]\nuids = [0]\nkeys = [\"**\"]\noperations = [\"wrap\"]\n")
	badRule := write("bad.toml", "[[rule]]\nuids = [0]\nkeys = [\"**\"]\noperations = [\"fly\"]\n")
	okRule := "[[rule]]\nuids = [0]\nkeys = [\"**\"]\noperations = [\"wrap\"]\n"
	groupWritable := write("group.toml", okRule)
	if err := os.Chmod(groupWritable, 0o620); err != nil {
		t.Fatal(err)
	}
	othersWritable := write("others.toml", okRule)
	if err := os.Chmod(othersWritable, 0o602); err != nil {
		t.Fatal(err)
	}
	othersOwn := write("theirs.toml", okRule)
	if os.Geteuid() == 0 {
		if err := os.Chown(othersOwn, 4242, 4242); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"backend and socket", []string{"--dev", "--config", full}, exitConfig, []string{
			full + ":1: socket: is not used by keywardd --dev", full + ":3: backend: is not used by keywardd --dev", "rule, limits, log_level"}},
		{"bad rule", []string{"--dev", "--config", badRule}, exitConfig, []string{"fly"}},
		{"allow-uid without --dev", []string{"--dev-allow-uid", "1000"}, exitUsage, []string{"are for --dev"}},
		{"check for --dev", []string{"--check-config", "--dev", "--config", full}, exitConfig, []string{full + ":3: backend: is not used by keywardd --dev"}},
		{"check for --dev without a file", []string{"--check-config", "--dev"}, exitUsage, []string{"give --config"}},
		{"allow-gid not a number", []string{"--dev", "--dev-allow-gid", "staff"}, exitUsage, []string{`"staff" is not a gid`}},
		{"group may write the file", []string{"--dev", "--config", groupWritable}, exitConfig, []string{groupWritable, "mode 0620", "chmod go-w"}},
		{"another user owns the file", []string{"--dev", "--config", othersOwn}, exitConfig, []string{othersOwn, "owned by uid 4242"}},
		{"others may write the file", []string{"--check-config", "--dev", "--config", othersWritable}, exitConfig, []string{"mode 0602"}},
	} {
		if strings.Contains(tc.name, "another user") && os.Geteuid() != 0 {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			sock := filepath.Join(t.TempDir(), "s")
			var out, errOut bytes.Buffer
			code := run(context.Background(), append(tc.args, "--socket", sock), &out, &errOut)
			if code != tc.code {
				t.Errorf("exit %d, want %d; stderr:\n%s", code, tc.code, errOut.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(errOut.String(), w) {
					t.Errorf("stderr lacks %q:\n%s", w, errOut.String())
				}
			}
			if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a socket was made: %v", err)
			}
		})
	}
}
