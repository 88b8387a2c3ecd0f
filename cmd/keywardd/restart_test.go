package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keyward/keyward/client"
	softhsmtest "github.com/keyward/keyward/softhsm-test"
)

// TestClientAcrossRestart: a client.Client outlives a keywardd restart.
// While the daemon is away its calls fail with ErrUnavailable in keyward's
// words (never gRPC's transport text); once the daemon is back on the same
// token and socket, the same Client works again, and a blob from before
// unwraps.
func TestClientAcrossRestart(t *testing.T) {
	softhsmtest.Need(t, tok)
	dir, err := os.MkdirTemp("", "kwr-") // short: a socket path has at most 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "k.sock")
	args := []string{"--dev", "--dev-dir", filepath.Join(dir, "dev"), "--socket", sock}
	p := startDaemon(t, sock, nil, args...)
	go drain(p)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, sock, client.WithRetry(1, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.CreateKey(ctx, "restart/k", "aes-256-gcm"); err != nil {
		t.Fatal(err)
	}
	w, err := c.Wrap(ctx, "restart/k", []byte("kept"), nil)
	if err != nil {
		t.Fatal(err)
	}

	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("keywardd: %v", err)
	}
	_, err = c.Wrap(ctx, "restart/k", []byte("x"), nil)
	if !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("a call with the daemon stopped: %v, want ErrUnavailable", err)
	}
	for _, raw := range []string{"transport", "desc =", "rpc error", "connection error"} {
		if strings.Contains(err.Error(), raw) {
			t.Errorf("%q holds gRPC's text %q", err, raw)
		}
	}
	if !strings.Contains(err.Error(), "the socket does not exist") && !strings.Contains(err.Error(), "connection to keywardd was lost") {
		t.Errorf("%q does not say why", err)
	}

	p = startDaemon(t, sock, nil, args...)
	go drain(p)
	deadline := time.Now().Add(30 * time.Second) // ends a hang only
	for {
		u, err := c.Unwrap(ctx, w.GetCiphertext(), nil)
		if err == nil {
			if string(u.GetPlaintext()) != "kept" {
				t.Fatalf("unwrapped %q", u.GetPlaintext())
			}
			break
		}
		if !errors.Is(err, client.ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("the same Client after the restart: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
