package client_test

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"

	keywardv1 "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/client"
)

// TestDialEnvSocket: Dial with no path uses $KEYWARD_SOCKET, else
// DefaultSocket.
func TestDialEnvSocket(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Setenv(client.EnvSocket, serve(t, &flaky{}))
	c, err := client.Dial(ctx, "")
	if err != nil {
		t.Fatalf("Dial(\"\") with $%s set: %v", client.EnvSocket, err)
	}
	if _, err := c.Wrap(ctx, "k", []byte("p"), nil); err != nil {
		t.Errorf("Wrap through $%s: %v", client.EnvSocket, err)
	}
	c.Close()

	absent := filepath.Join(t.TempDir(), "absent.sock")
	t.Setenv(client.EnvSocket, absent)
	if _, err := client.Dial(ctx, ""); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), absent) {
		t.Errorf("Dial(\"\") with $%s=%s: %v, want the absent socket named", client.EnvSocket, absent, err)
	}

	t.Setenv(client.EnvSocket, "")
	c, err = client.Dial(ctx, "")
	if err == nil {
		c.Close() // this machine runs a keywardd on the default path
	} else if !strings.Contains(err.Error(), client.DefaultSocket) {
		t.Errorf("Dial(\"\") without $%s: %v, want %s named", client.EnvSocket, err, client.DefaultSocket)
	}
}

// serveAt serves srv on path until the returned stop is called; stop
// removes the socket file, as a stopping keywardd does.
func serveAt(t *testing.T, path string, srv keywardv1.KeywardServer) (stop func()) {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	keywardv1.RegisterKeywardServer(g, srv)
	go g.Serve(l)
	t.Cleanup(g.Stop)
	return g.Stop
}

// TestRestartErrors: while the daemon is away, calls fail with
// ErrUnavailable and keyward's words for why (no socket, nobody listening),
// wrapping the dial error, never gRPC's transport text; once it is back,
// the same Client works again.
func TestRestartErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	path := filepath.Join(t.TempDir(), "k.sock")
	stop := serveAt(t, path, &flaky{})
	c := dial(t, path, client.WithRetry(1, 0))
	if _, err := c.Wrap(ctx, "k", []byte("p"), nil); err != nil {
		t.Fatal(err)
	}
	stop()

	check := func(what, in string, also error) {
		t.Helper()
		_, err := c.Wrap(ctx, "k", []byte("p"), nil)
		var e *client.Error
		if !errors.Is(err, client.ErrUnavailable) || !errors.As(err, &e) {
			t.Fatalf("%s: %v, want a *client.Error wrapping ErrUnavailable", what, err)
		}
		for _, raw := range []string{"transport", "desc =", "connection error", "rpc error"} {
			if strings.Contains(err.Error(), raw) {
				t.Errorf("%s: %q holds gRPC's text %q", what, err, raw)
			}
		}
		// The first call may see the connection end before a redial failed.
		if !strings.Contains(err.Error(), in) && !strings.Contains(err.Error(), "connection to keywardd was lost") {
			t.Errorf("%s: %q, want %q", what, err, in)
		}
		if also != nil && strings.Contains(err.Error(), in) && !errors.Is(err, also) {
			t.Errorf("%s: %v does not wrap %v", what, err, also)
		}
	}
	check("socket removed", "the socket does not exist", fs.ErrNotExist)
	check("socket removed, again", "the socket does not exist", fs.ErrNotExist)

	// A socket file nobody listens on: the daemon was killed.
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	waitUntil(t, func() bool {
		_, err := c.Wrap(ctx, "k", []byte("p"), nil)
		return errors.Is(err, syscall.ECONNREFUSED)
	}, "a call fails with ECONNREFUSED")
	check("nothing listens", "nothing listens on the socket", syscall.ECONNREFUSED)

	if err := syscall.Unlink(path); err != nil {
		t.Fatal(err)
	}
	serveAt(t, path, &flaky{})
	waitUntil(t, func() bool {
		_, err := c.Wrap(ctx, "k", []byte("p"), nil)
		return err == nil
	}, "the same Client works once the daemon is back")
}

// waitUntil polls cond; the bound only ends a hang.
func waitUntil(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
