package client_test

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	keywardv1 "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/client"
	"github.com/keyward/keyward/keywardtest"
)

// flaky answers UNAVAILABLE (BACKEND_UNAVAILABLE) to the first failures
// calls of each method, then succeeds.
type flaky struct {
	keywardv1.UnimplementedKeywardServer
	failures int32
	wraps    atomic.Int32
	creates  atomic.Int32
	unwraps  atomic.Int32
}

func unavailable() error {
	st, _ := status.New(codes.Unavailable, "token not answering").WithDetails(&errdetails.ErrorInfo{
		Domain: keywardv1.ErrorDomain, Reason: keywardv1.ErrorReason_BACKEND_UNAVAILABLE.String(),
	})
	return st.Err()
}

func (s *flaky) Wrap(_ context.Context, req *keywardv1.WrapRequest) (*keywardv1.WrapResponse, error) {
	if s.wraps.Add(1) <= s.failures {
		return nil, unavailable()
	}
	return &keywardv1.WrapResponse{Key: req.GetKey(), Version: 1, Ciphertext: []byte("blob")}, nil
}

func (s *flaky) CreateKey(_ context.Context, req *keywardv1.CreateKeyRequest) (*keywardv1.KeyInfo, error) {
	if s.creates.Add(1) <= s.failures {
		return nil, unavailable()
	}
	return &keywardv1.KeyInfo{Key: req.GetKey(), KeyType: req.GetKeyType()}, nil
}

// Unwrap always fails with DECRYPTION_FAILED: not retried.
func (s *flaky) Unwrap(context.Context, *keywardv1.UnwrapRequest) (*keywardv1.UnwrapResponse, error) {
	s.unwraps.Add(1)
	st, _ := status.New(codes.InvalidArgument, "decryption failed").WithDetails(&errdetails.ErrorInfo{
		Domain: keywardv1.ErrorDomain, Reason: keywardv1.ErrorReason_DECRYPTION_FAILED.String(),
	})
	return nil, st.Err()
}

func (s *flaky) BatchWrap(_ context.Context, req *keywardv1.BatchWrapRequest) (*keywardv1.BatchWrapResponse, error) {
	resp := &keywardv1.BatchWrapResponse{}
	for _, it := range req.GetItems() {
		switch it.GetKey() {
		case "missing":
			resp.Results = append(resp.Results, &keywardv1.BatchWrapResult{Result: &keywardv1.BatchWrapResult_Error{Error: &keywardv1.ItemError{
				Code: int32(codes.NotFound), Reason: keywardv1.ErrorReason_KEY_NOT_FOUND, Message: "key not found",
			}}})
		case "short":
			// Breaks the protocol: one result too few.
		default:
			resp.Results = append(resp.Results, &keywardv1.BatchWrapResult{Result: &keywardv1.BatchWrapResult_Ok{Ok: &keywardv1.WrapResponse{Key: it.GetKey(), Version: 1}}})
		}
	}
	return resp, nil
}

// serve runs srv on a Unix socket in a temp dir and returns the socket path.
func serve(t *testing.T, srv keywardv1.KeywardServer) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "k.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	keywardv1.RegisterKeywardServer(g, srv)
	go g.Serve(l)
	t.Cleanup(g.Stop)
	return path
}

func dial(t *testing.T, path string, opts ...client.Option) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, path, opts...)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestRetry(t *testing.T) {
	ctx := context.Background()

	t.Run("wrap is retried", func(t *testing.T) {
		srv := &flaky{failures: 2}
		c := dial(t, serve(t, srv))
		resp, err := c.Wrap(ctx, "payments/db", []byte("secret"), map[string]string{"app": "billing"})
		if err != nil {
			t.Fatalf("Wrap: %v", err)
		}
		if resp.GetKey() != "payments/db" || string(resp.GetCiphertext()) != "blob" {
			t.Errorf("response %v", resp)
		}
		if n := srv.wraps.Load(); n != 3 {
			t.Errorf("%d wrap calls, want 3", n)
		}
	})

	t.Run("create key is not retried", func(t *testing.T) {
		srv := &flaky{failures: 2}
		c := dial(t, serve(t, srv))
		_, err := c.CreateKey(ctx, "payments/db", "aes-256-gcm")
		if !errors.Is(err, client.ErrUnavailable) || client.Reason(err) != keywardv1.ErrorReason_BACKEND_UNAVAILABLE {
			t.Fatalf("CreateKey: %v, want ErrUnavailable with reason BACKEND_UNAVAILABLE", err)
		}
		if n := srv.creates.Load(); n != 1 {
			t.Errorf("%d create calls, want 1", n)
		}
	})

	t.Run("more failures than tries", func(t *testing.T) {
		srv := &flaky{failures: 3}
		c := dial(t, serve(t, srv))
		_, err := c.Wrap(ctx, "k", []byte("x"), nil)
		if !errors.Is(err, client.ErrUnavailable) {
			t.Fatalf("Wrap: %v, want ErrUnavailable", err)
		}
		if n := srv.wraps.Load(); n != 3 {
			t.Errorf("%d wrap calls, want 3 (the default)", n)
		}
	})

	t.Run("WithRetry sets tries and backoff", func(t *testing.T) {
		srv := &flaky{failures: 4}
		c := dial(t, serve(t, srv), client.WithRetry(5, 20*time.Millisecond))
		start := time.Now()
		if _, err := c.Wrap(ctx, "k", []byte("x"), nil); err != nil {
			t.Fatalf("Wrap: %v", err)
		}
		// Waits of 20, 40, 80 and 160 ms.
		if took := time.Since(start); took < 300*time.Millisecond {
			t.Errorf("took %v, want at least 300ms of doubling backoff", took)
		}
		if n := srv.wraps.Load(); n != 5 {
			t.Errorf("%d wrap calls, want 5", n)
		}
	})

	t.Run("WithRetry 1 disables retries", func(t *testing.T) {
		srv := &flaky{failures: 1}
		c := dial(t, serve(t, srv), client.WithRetry(1, time.Millisecond))
		if _, err := c.Wrap(ctx, "k", []byte("x"), nil); !errors.Is(err, client.ErrUnavailable) {
			t.Fatalf("Wrap: %v, want ErrUnavailable", err)
		}
		if n := srv.wraps.Load(); n != 1 {
			t.Errorf("%d wrap calls, want 1", n)
		}
	})

	t.Run("deadline cuts the backoff short", func(t *testing.T) {
		srv := &flaky{failures: 10}
		c := dial(t, serve(t, srv), client.WithRetry(10, time.Minute))
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		_, err := c.Wrap(ctx, "k", []byte("x"), nil)
		if !errors.Is(err, client.ErrUnavailable) {
			t.Fatalf("Wrap: %v, want ErrUnavailable", err)
		}
		if ctx.Err() != nil {
			t.Errorf("Wrap returned when its deadline passed: a wait past the deadline should not start")
		}
		if n := srv.wraps.Load(); n != 1 {
			t.Errorf("%d wrap calls, want 1", n)
		}
	})

	t.Run("other errors are not retried", func(t *testing.T) {
		srv := &flaky{}
		c := dial(t, serve(t, srv))
		_, err := c.Unwrap(ctx, []byte("blob"), nil)
		if !errors.Is(err, client.ErrDecrypt) || client.Reason(err) != keywardv1.ErrorReason_DECRYPTION_FAILED {
			t.Fatalf("Unwrap: %v, want ErrDecrypt", err)
		}
		if n := srv.unwraps.Load(); n != 1 {
			t.Errorf("%d unwrap calls, want 1", n)
		}
	})
}

// TestCalls: calls against a real keywardd (keywardtest).
func TestCalls(t *testing.T) {
	ctx := context.Background()
	kw := keywardtest.Start(t, keywardtest.WithKey("sig/key", "ecdsa-p256"), keywardtest.WithKey("a", "aes-256-gcm"))
	c := kw.Client

	s, err := c.Sign(ctx, "sig/key", []byte("m"))
	if err != nil {
		t.Fatal(err)
	}
	valid, v, err := c.Verify(ctx, "sig/key", 0, []byte("m"), s.GetSignature())
	if err != nil || !valid || v != 1 {
		t.Errorf("Verify(good) = %v, %d, %v; want true, 1, nil", valid, v, err)
	}
	valid, v, err = c.Verify(ctx, "sig/key", 0, []byte("other"), s.GetSignature())
	if err != nil || valid || v != 0 {
		t.Errorf("Verify(bad) = %v, %d, %v; want false, 0, nil (invalid is not an error)", valid, v, err)
	}

	if _, err := c.GenerateDataKey(ctx, "a", nil, -1, false); !errors.Is(err, client.ErrInvalidArgument) {
		t.Errorf("GenerateDataKey(length -1): %v, want ErrInvalidArgument", err)
	}

	res, err := c.BatchWrap(ctx, []*keywardv1.WrapRequest{{Key: "a"}, {Key: "missing"}, {Key: "a"}})
	if err != nil {
		t.Fatalf("BatchWrap: %v", err)
	}
	if len(res) != 3 || res[0].Err != nil || res[0].Value.GetKey() != "a" || res[2].Value.GetKey() != "a" {
		t.Errorf("BatchWrap results %+v", res)
	}
	if !errors.Is(res[1].Err, client.ErrNotFound) || client.Reason(res[1].Err) != keywardv1.ErrorReason_KEY_NOT_FOUND || res[1].Value != nil {
		t.Errorf("item 1: %+v, want ErrNotFound", res[1])
	}

	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := c.Wrap(ctx, "a", []byte("x"), nil); !errors.Is(err, client.ErrUnavailable) {
		t.Errorf("Wrap after Close: %v, want ErrUnavailable", err)
	}
}

// TestCallsBrokenDaemon: replies no keywardd sends (a daemon without
// Status, a batch reply one item short) need a stand-in.
func TestCallsBrokenDaemon(t *testing.T) {
	ctx := context.Background()
	c := dial(t, serve(t, &flaky{}))
	if _, err := c.Status(ctx); !errors.Is(err, client.ErrUnsupported) {
		t.Errorf("Status on a server without it: %v, want ErrUnsupported", err)
	}
	if _, err := c.BatchWrap(ctx, []*keywardv1.WrapRequest{{Key: "a"}, {Key: "short"}}); !errors.Is(err, client.ErrInternal) {
		t.Errorf("BatchWrap with an item missing from the reply: %v, want ErrInternal", err)
	}
}

func TestDialFailsFast(t *testing.T) {
	dir := t.TempDir()

	// A socket file nobody listens on any more.
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()

	tests := []struct {
		name  string
		path  string
		also  error
		in    string
		isErr error
	}{
		{name: "no socket", path: filepath.Join(dir, "absent.sock"), also: fs.ErrNotExist, in: "does not exist", isErr: client.ErrUnavailable},
		{name: "no directory", path: filepath.Join(dir, "no/such/dir.sock"), also: fs.ErrNotExist, in: "does not exist", isErr: client.ErrUnavailable},
		{name: "refused", path: stale, in: "nothing listens", isErr: client.ErrUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c, err := client.Dial(ctx, tt.path)
			if err == nil {
				c.Close()
				t.Fatal("Dial succeeded")
			}
			if ctx.Err() != nil {
				t.Errorf("Dial failed only when its context ended: %v", err)
			}
			if !errors.Is(err, tt.isErr) {
				t.Errorf("Dial: %v, want %v", err, tt.isErr)
			}
			if tt.also != nil && !errors.Is(err, tt.also) {
				t.Errorf("Dial: %v, want it to wrap %v too", err, tt.also)
			}
			var e *client.Error
			if !errors.As(err, &e) || !containsAll(err.Error(), tt.in, tt.path) {
				t.Errorf("Dial error %q: want an *Error naming %q and %q", err, tt.path, tt.in)
			}
		})
	}

	t.Run("not a socket", func(t *testing.T) {
		p := filepath.Join(dir, "file")
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := client.Dial(context.Background(), p)
		if !errors.Is(err, client.ErrUnavailable) {
			t.Errorf("Dial(regular file): %v, want ErrUnavailable", err)
		}
	})

	t.Run("context already done", func(t *testing.T) {
		// A listener that accepts and never speaks HTTP/2: only the
		// context ends the wait.
		p := filepath.Join(dir, "mute.sock")
		l, err := net.Listen("unix", p)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				defer c.Close()
			}
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		_, err = client.Dial(ctx, p)
		if !errors.Is(err, client.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Dial(mute listener): %v, want ErrUnavailable and context.DeadlineExceeded", err)
		}
	})
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}
