package socket

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// uidInterceptor is a toy authoriser: a caller may only ask the health
// service about "uid-<its own uid>". A denial names who the server saw.
func uidInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	p, ok := PeerFromContext(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "no peer identity")
	}
	if r, ok := req.(*healthpb.HealthCheckRequest); ok && r.GetService() != fmt.Sprintf("uid-%d", p.UID) {
		return nil, status.Errorf(codes.PermissionDenied, "peer %s may not ask about %q", p, r.GetService())
	}
	return handler(ctx, req)
}

func TestCredentialsGRPC(t *testing.T) {
	requireRoot(t)
	path := filepath.Join(sharedDir(t), "run", "keyward.sock")
	l, err := Listen(Config{Path: path, Group: "23456"})
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(Credentials()), grpc.UnaryInterceptor(uidInterceptor),
		grpc.ConnectionTimeout(5*time.Second))
	hs := health.NewServer()
	for _, s := range []string{"uid-0", "uid-12345"} {
		hs.SetServingStatus(s, healthpb.HealthCheckResponse_SERVING)
	}
	healthpb.RegisterHealthServer(srv, hs)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(LimitListener(l, 8)) }() // the limit wrapper must not hide the peer
	defer func() {
		srv.Stop()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()

	// Another uid, in the group: served for itself, denied for root, and the
	// denial shows the server saw uid 12345.
	out, code := runClient(t, "grpc", path, &syscall.Credential{Uid: 12345, Gid: 11111, Groups: []uint32{23456}})
	if code != 0 {
		t.Fatalf("client exit %d: %s", code, out)
	}
	for _, want := range []string{"own=SERVING", "other=PermissionDenied: peer uid=12345 gid=11111 pid="} {
		if !strings.Contains(out, want) {
			t.Errorf("client output lacks %q:\n%s", want, out)
		}
	}

	// Root, in process, through Dialer.
	cc, err := grpc.NewClient("passthrough:///keyward", grpc.WithContextDialer(Dialer(path)),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hc := healthpb.NewHealthClient(cc)
	if resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "uid-0"}); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("root asking about uid-0: %v, %v", resp, err)
	}
	_, err = hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "uid-12345"})
	if st := status.Convert(err); st.Code() != codes.PermissionDenied ||
		!strings.Contains(st.Message(), fmt.Sprintf("uid=0 gid=0 pid=%d", os.Getpid())) {
		t.Errorf("root asking about uid-12345: %v", err)
	}
}

// Used on the client side, the same credentials identify the server process.
func TestCredentialsClientSide(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	l, err := Listen(Config{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(Credentials()))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(l)
	defer srv.Stop()

	cc, err := grpc.NewClient("passthrough:///keyward", grpc.WithContextDialer(Dialer(path)),
		grpc.WithTransportCredentials(Credentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var server peer.Peer
	if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&server)); err != nil {
		t.Fatal(err)
	}
	ai, ok := server.AuthInfo.(AuthInfo)
	if !ok || ai.Peer.PID != int32(os.Getpid()) || ai.AuthType() != AuthType ||
		ai.SecurityLevel != credentials.NoSecurity {
		t.Errorf("server AuthInfo = %#v", server.AuthInfo)
	}
}

func TestCredentialsRefuseNonUnix(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, _, err := Credentials().ServerHandshake(a); !errors.Is(err, ErrNotUnix) {
		t.Errorf("ServerHandshake(pipe) = %v, want ErrNotUnix", err)
	}
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Skip(err)
	}
	defer tl.Close()
	tc, err := net.Dial("tcp", tl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	if _, _, err := Credentials().ServerHandshake(tc); !errors.Is(err, ErrNotUnix) {
		t.Errorf("ServerHandshake(tcp) = %v, want ErrNotUnix", err)
	}
	if got := Credentials().Info().SecurityProtocol; got != AuthType {
		t.Errorf("SecurityProtocol = %q", got)
	}
}

func TestPeerFromContext(t *testing.T) {
	want := Peer{UID: 7, PID: 9}
	tests := []struct {
		name   string
		ctx    context.Context
		wantOK bool
	}{
		{"no peer", context.Background(), false},
		{"other auth", peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{}}), false},
		{"no auth", peer.NewContext(context.Background(), &peer.Peer{}), false},
		{"value", peer.NewContext(context.Background(), &peer.Peer{AuthInfo: AuthInfo{Peer: want}}), true},
		{"pointer", peer.NewContext(context.Background(), &peer.Peer{AuthInfo: &AuthInfo{Peer: want}}), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := PeerFromContext(tt.ctx)
			if ok != tt.wantOK || (ok && got.UID != want.UID) {
				t.Errorf("PeerFromContext = %+v, %v", got, ok)
			}
		})
	}
}
