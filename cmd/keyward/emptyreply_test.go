package main

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"

	keywardv1 "github.com/keyward/keyward/api/keyward/v1"
)

// hollowWrap answers Wrap with success and no blob, which no keywardd sends.
type hollowWrap struct {
	keywardv1.UnimplementedKeywardServer
}

func (hollowWrap) Wrap(context.Context, *keywardv1.WrapRequest) (*keywardv1.WrapResponse, error) {
	return &keywardv1.WrapResponse{}, nil
}

// TestEmptyWrapReply: keyward wrap given an empty WrapResponse fails with a
// message saying so and prints nothing, rather than exit 0 with no blob.
func TestEmptyWrapReply(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	keywardv1.RegisterKeywardServer(g, hollowWrap{})
	go g.Serve(l)
	defer g.Stop()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"--socket", path, "wrap", "--key", "app/db"}, strings.NewReader("secret"), &stdout, &stderr)
	if code != exitFailed || stdout.Len() != 0 || !strings.Contains(stderr.String(), "no ciphertext") {
		t.Fatalf("exit %d, stdout %q, stderr %q; want %d, nothing, and a message naming the missing ciphertext",
			code, stdout.String(), stderr.String(), exitFailed)
	}
}
