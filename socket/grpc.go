package socket

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// AuthType is AuthInfo.AuthType and the credentials' SecurityProtocol.
const AuthType = "keyward-unix-peer"

// AuthInfo carries the kernel-identified Peer of a gRPC connection.
//
// Its SecurityLevel is NoSecurity: nothing is encrypted or signed, because the
// bytes never leave the kernel, and the peer is authenticated by the kernel
// rather than by the transport. gRPC therefore refuses per-RPC credentials that
// require transport security, which suits keyward: callers never send tokens.
type AuthInfo struct {
	Peer Peer
	credentials.CommonAuthInfo
	open *atomic.Int64 // the uid's open calls (LimitedCredentials)
}

// AuthType returns "keyward-unix-peer".
func (AuthInfo) AuthType() string { return AuthType }

// Credentials returns gRPC transport credentials that identify the process at
// the other end of each Unix socket connection once, at the handshake, and
// attach it as AuthInfo (read it with PeerFromContext). Connections that are not
// Unix sockets, even behind wrappers that expose NetConn() (LimitListener's),
// are refused, as are peers the kernel cannot identify. A valid peer is never
// refused here: authorisation belongs in an interceptor.
//
// Used on a client (grpc.WithTransportCredentials), it identifies the server
// process instead; insecure credentials are enough for clients that do not
// check that.
func Credentials() credentials.TransportCredentials { return transportCreds{} }

type transportCreds struct{}

func (transportCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	ai, err := handshake(c)
	if err != nil {
		return nil, nil, err
	}
	return c, ai, nil
}

func (transportCreds) ClientHandshake(_ context.Context, _ string, c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	ai, err := handshake(c)
	if err != nil {
		return nil, nil, err
	}
	return c, ai, nil
}

func handshake(c net.Conn) (AuthInfo, error) {
	uc, err := unwrapUnix(c)
	if err != nil {
		return AuthInfo{}, err
	}
	p, err := PeerOf(uc)
	if err != nil {
		return AuthInfo{}, err
	}
	return AuthInfo{Peer: p, CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}}, nil
}

// unwrapUnix finds the *net.UnixConn under connection wrappers that expose
// it the way crypto/tls does, with NetConn().
func unwrapUnix(c net.Conn) (*net.UnixConn, error) {
	for range 16 {
		switch x := c.(type) {
		case *net.UnixConn:
			return x, nil
		case interface{ NetConn() net.Conn }:
			c = x.NetConn()
		default:
			return nil, fmt.Errorf("socket: %T: %w", c, ErrNotUnix)
		}
	}
	return nil, fmt.Errorf("socket: connection wrapped too deeply: %w", ErrNotUnix)
}

func (transportCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: AuthType}
}

func (transportCreds) Clone() credentials.TransportCredentials { return transportCreds{} }

// OverrideServerName is a no-op: there is no server name to check.
func (transportCreds) OverrideServerName(string) error { return nil }

// PeerFromContext returns the Peer that Credentials attached to the
// connection of a gRPC call; ok is false when the call did not come through
// Credentials.
func PeerFromContext(ctx context.Context) (Peer, bool) {
	ai, ok := authInfoFrom(ctx)
	return ai.Peer, ok
}

func authInfoFrom(ctx context.Context) (AuthInfo, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok || p == nil {
		return AuthInfo{}, false
	}
	switch ai := p.AuthInfo.(type) {
	case AuthInfo:
		return ai, true
	case *AuthInfo:
		if ai != nil {
			return *ai, true
		}
	}
	return AuthInfo{}, false
}

// Dialer returns a dialer for grpc.WithContextDialer that connects to the
// socket at path, whatever the target says:
//
//	grpc.NewClient("passthrough:///keyward",
//		grpc.WithContextDialer(socket.Dialer(path)),
//		grpc.WithTransportCredentials(insecure.NewCredentials()))
func Dialer(path string) func(context.Context, string) (net.Conn, error) {
	return func(ctx context.Context, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}
}
