// Package client is the Go client of keywardd, the keyward daemon: it dials
// the daemon's Unix socket and makes typed calls on the keyward.v1 API.
//
// The daemon identifies the caller from the kernel (uid, gid, groups,
// systemd unit of the connecting process), so the client sends no
// credentials and the connection has no TLS: whoever may open the socket
// speaks for the process it runs as. Nothing here logs.
//
// Who answers: before anything is sent on a connection (reconnects
// included), the client asks the kernel which uid listens on the socket
// (SO_PEERCRED). It must be root, this process's effective uid, the uid
// given with WithDaemonUID, or the packaged daemon's user (DaemonUser, when
// /etc/passwd has it). Who owns the socket file or its directory proves
// nothing: whoever listens made both. Any other uid fails the
// call, and every later call of the Client, with ErrUntrustedDaemon, never
// retried: a local user who put their own socket in the daemon's place gets
// nothing, and the caller sees it.
//
// Errors: every error wraps one sentinel (ErrDecrypt, ErrNotFound,
// ErrPermissionDenied, ErrUnavailable...), chosen from the keyward reason the
// daemon attaches, and can be checked with errors.Is; Reason gives the
// reason itself, and *Error the details. A success reply that cannot be a
// real answer (a wrap or rewrap without a blob, a sign or mac without its
// bytes, a public key or data key missing) is ErrInternal, never handed on
// as an empty result; an empty plaintext from Unwrap is a real answer.
//
// Connection model: Dial opens one connection (gRPC over HTTP/2 on the
// Unix socket) and returns once it is up; every call of the Client shares
// it, concurrently. Dial with an empty path uses $KEYWARD_SOCKET, else
// DefaultSocket. When the daemon goes away (a restart, a stop), the Client
// reconnects on its own, in the background, from 50 ms between attempts up
// to 2 s; a call made while there is no connection fails at once with
// ErrUnavailable and a message that says why (the socket is missing,
// nothing listens on it, the connection was lost), never gRPC's transport
// text, and the dial error (syscall.ECONNREFUSED, fs.ErrNotExist) is
// wrapped too. The first call after the daemon is back reconnects, and the
// trust check (below) runs again on the new connection. A Client does not
// need to be made again after a restart.
//
// Retries: calls that create nothing in the device (wrap, unwrap, rewrap,
// datakey, sign, verify, mac, verify-mac, public key, the batch forms, list,
// describe, status) are retried when the daemon answers UNAVAILABLE; key
// lifecycle calls never are, so that a change is never made twice. See
// WithRetry.
//
// Plaintexts and data keys come back in the responses: clear them
// (clear(resp.Plaintext)) once used. A Client is safe for concurrent use;
// make one per process and Close it at exit.
package client

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"net"
	"os"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"

	keywardv1 "github.com/keyward/keyward/api/keyward/v1"
)

// DefaultSocket is where keywardd listens unless configured otherwise.
const DefaultSocket = "/run/keyward/keyward.sock"

// EnvSocket names the environment variable Dial reads when given no path.
const EnvSocket = "KEYWARD_SOCKET"

// maxMessage bounds a reply: a batch of 1000 items of 64 KiB each, with
// room for the blobs' headers and tags.
const maxMessage = 1000*(64<<10+2048) + 1<<20

// Client is a connection to keywardd.
type Client struct {
	conn  *grpc.ClientConn
	api   keywardv1.KeywardClient
	tries int
	wait  time.Duration
	trust *trust
	dials *lastDial
}

// Option configures Dial.
type Option func(*options)

type options struct {
	tries     int
	wait      time.Duration
	daemonUID *uint32
	passwd    string // where DaemonUser is looked up (a test hook)
}

// WithRetry sets how many times in all (n >= 1; 1 means no retry) an
// idempotent call is tried when the daemon answers UNAVAILABLE, and the
// wait before the first retry, which doubles after each. A retry never
// outlives the call's context: when the deadline would pass during the
// wait, the last error is returned at once. The default is 3 tries, 50 ms.
func WithRetry(n int, backoff time.Duration) Option {
	return func(o *options) {
		o.tries = max(n, 1)
		o.wait = max(backoff, 0)
	}
}

// Dial connects to the daemon's socket and returns once the connection is
// up, so that a missing daemon shows at once. An empty socketPath means
// $KEYWARD_SOCKET when set, else DefaultSocket. Dial it fails with ErrUnavailable
// when the socket does not exist or nothing listens on it, and with
// ErrPermissionDenied when this process may not open it, and with
// ErrUntrustedDaemon when the process listening on it runs as a uid the
// daemon may not have (see WithDaemonUID). Dial waits at most until ctx is
// done.
func Dial(ctx context.Context, socketPath string, opts ...Option) (*Client, error) {
	o := options{tries: 3, wait: 50 * time.Millisecond, passwd: passwdFile}
	for _, opt := range opts {
		opt(&o)
	}
	if socketPath == "" {
		socketPath = os.Getenv(EnvSocket)
	}
	if socketPath == "" {
		socketPath = DefaultSocket
	}
	op := "dial " + socketPath

	// The dialer ignores the target: it always dials socketPath, whatever
	// characters it holds, and remembers why a connection attempt failed.
	// It checks who listens before gRPC may write anything, on every
	// connection, reconnects included.
	dials := &lastDial{}
	tr := &trust{daemonUID: o.daemonUID, euid: uint32(os.Geteuid()), passwd: o.passwd}
	dialer := func(ctx context.Context, _ string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", socketPath)
		if err == nil {
			if err = tr.check(c); err != nil {
				c.Close()
				c = nil
			}
		}
		dials.set(err)
		return c, err
	}
	conn, err := grpc.NewClient("passthrough:///localhost",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(dialer),
		grpc.WithNoProxy(),
		grpc.WithConnectParams(grpc.ConnectParams{
			// A local daemon restarts in well under a second: reconnect fast.
			Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessage), grpc.MaxCallSendMsgSize(maxMessage)),
	)
	if err != nil {
		return nil, newError(op, codes.InvalidArgument, 0, err.Error())
	}

	conn.Connect()
	for {
		s := conn.GetState()
		if s == connectivity.Ready {
			break
		}
		if s == connectivity.TransientFailure || s == connectivity.Shutdown {
			conn.Close()
			if err := tr.err(op); err != nil {
				return nil, err
			}
			return nil, dialError(op, dials.get())
		}
		if !conn.WaitForStateChange(ctx, s) {
			conn.Close()
			e := newError(op, codes.Unavailable, 0, "no connection before the context ended: "+ctx.Err().Error())
			e.cause = ctx.Err()
			return nil, e
		}
	}
	return &Client{conn: conn, api: keywardv1.NewKeywardClient(conn), tries: o.tries, wait: o.wait, trust: tr, dials: dials}, nil
}

// dialError explains a failed connection: no socket, nobody listening, or
// not allowed to open it.
func dialError(op string, err error) error {
	if err == nil {
		return newError(op, codes.Unavailable, 0, "the daemon did not complete the connection")
	}
	var e *Error
	switch {
	case errors.Is(err, fs.ErrNotExist):
		e = newError(op, codes.Unavailable, 0, "the socket does not exist; is keywardd running?")
	case errors.Is(err, syscall.ECONNREFUSED):
		e = newError(op, codes.Unavailable, 0, "nothing listens on the socket; is keywardd running?")
	case errors.Is(err, fs.ErrPermission):
		e = newError(op, codes.PermissionDenied, 0, "this user may not open the socket; keywardd's socket is 0660: join its group")
	default:
		e = newError(op, codes.Unavailable, 0, err.Error())
	}
	e.cause = err
	return e
}

// Close closes the connection. Calls in flight fail with ErrUnavailable.
func (c *Client) Close() error {
	return fromStatus("close", c.conn.Close())
}

// call makes one RPC, retrying an idempotent one on UNAVAILABLE. Once a
// connection reached an untrusted daemon, nothing is sent and nothing is
// retried: every call fails with ErrUntrustedDaemon.
func call[Req, Resp any](ctx context.Context, c *Client, op string, idempotent bool,
	rpc func(context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) (Resp, error) {
	var zero Resp
	tries := 1
	if idempotent {
		tries = c.tries
	}
	wait := c.wait
	for try := 1; ; try++ {
		if err := c.trust.err(op); err != nil {
			return zero, err
		}
		resp, err := rpc(ctx, req)
		if err == nil {
			return resp, nil
		}
		if err := c.trust.err(op); err != nil {
			return zero, err
		}
		err = c.dials.explain(op, fromStatus(op, err))
		var e *Error
		if try >= tries || !errors.As(err, &e) || e.Code != codes.Unavailable || !sleep(ctx, wait) {
			return zero, err
		}
		wait *= 2
	}
}

// sleep waits d unless ctx ends first or its deadline would pass during the
// wait; it reports whether a retry may follow.
func sleep(ctx context.Context, d time.Duration) bool {
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= d {
		return false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func named(op, key string) string { return op + " " + key }

func versioned(op, key string, v uint32) string {
	if v == 0 {
		return op + " " + key
	}
	return fmt.Sprintf("%s %s v%d", op, key, v)
}

// Wrap encrypts plaintext (at most 64 KiB) with the key's newest enabled
// version. encCtx is bound into the blob: Unwrap must be given the same
// pairs. The blob is resp.Ciphertext; resp.Version says which version made it.
func (c *Client) Wrap(ctx context.Context, key string, plaintext []byte, encCtx map[string]string) (*keywardv1.WrapResponse, error) {
	op := named("wrap", key)
	resp, err := call(ctx, c, op, true, c.api.Wrap,
		&keywardv1.WrapRequest{Key: key, Plaintext: plaintext, Context: encCtx})
	return replied(op, resp, err, noWrapCiphertext)
}

// Unwrap decrypts a blob made by Wrap or GenerateDataKey under the same
// context. A wrong context or a tampered blob gives ErrDecrypt.
func (c *Client) Unwrap(ctx context.Context, ciphertext []byte, encCtx map[string]string) (*keywardv1.UnwrapResponse, error) {
	return call(ctx, c, "unwrap", true, c.api.Unwrap,
		&keywardv1.UnwrapRequest{Ciphertext: ciphertext, Context: encCtx})
}

// Rewrap turns a blob into one made with the key's newest enabled version
// (after a rotation), under the same context; the plaintext stays in the
// daemon.
func (c *Client) Rewrap(ctx context.Context, ciphertext []byte, encCtx map[string]string) (*keywardv1.RewrapResponse, error) {
	resp, err := call(ctx, c, "rewrap", true, c.api.Rewrap,
		&keywardv1.RewrapRequest{Ciphertext: ciphertext, Context: encCtx})
	return replied("rewrap", resp, err, noRewrapCiphertext)
}

// GenerateDataKey returns a fresh random data key of length bytes (0 means
// 32, at most 1024) and the same key wrapped with key under encCtx. With
// withoutPlaintext only the wrapped form comes back.
func (c *Client) GenerateDataKey(ctx context.Context, key string, encCtx map[string]string, length int, withoutPlaintext bool) (*keywardv1.GenerateDataKeyResponse, error) {
	op := named("generate data key", key)
	if length < 0 || int64(length) > math.MaxUint32 {
		return nil, newError(op, codes.InvalidArgument, keywardv1.ErrorReason_INVALID_REQUEST, fmt.Sprintf("length %d out of range", length))
	}
	resp, err := call(ctx, c, op, true, c.api.GenerateDataKey, &keywardv1.GenerateDataKeyRequest{
		Key: key, Context: encCtx, Length: uint32(length), WithoutPlaintext: withoutPlaintext,
	})
	return replied(op, resp, err, noDataKey(withoutPlaintext))
}

// Sign signs message (at most 64 KiB) with the key's newest enabled
// version. ECDSA and RSA-PSS sign the message's SHA-256 digest; ECDSA
// signatures are ASN.1 DER.
func (c *Client) Sign(ctx context.Context, key string, message []byte) (*keywardv1.SignResponse, error) {
	op := named("sign", key)
	resp, err := call(ctx, c, op, true, c.api.Sign, &keywardv1.SignRequest{Key: key, Message: message})
	return replied(op, resp, err, noSignature)
}

// Verify checks a signature; version 0 accepts any version that may
// verify. It returns whether the signature is valid and, if so, the
// version that verified it. An invalid signature is not an error.
func (c *Client) Verify(ctx context.Context, key string, version uint32, message, signature []byte) (bool, uint32, error) {
	resp, err := call(ctx, c, versioned("verify", key, version), true, c.api.Verify,
		&keywardv1.VerifyRequest{Key: key, Version: version, Message: message, Signature: signature})
	if err != nil {
		return false, 0, err
	}
	return resp.GetValid(), resp.GetVersion(), nil
}

// Mac computes HMAC-SHA256 of message with the key's newest enabled
// version. Keep resp.Version with the MAC: verifying with that version
// costs one device operation.
func (c *Client) Mac(ctx context.Context, key string, message []byte) (*keywardv1.MacResponse, error) {
	op := named("mac", key)
	resp, err := call(ctx, c, op, true, c.api.Mac, &keywardv1.MacRequest{Key: key, Message: message})
	return replied(op, resp, err, noMac)
}

// VerifyMac checks a MAC; version 0 accepts any version that may verify.
// It returns whether the MAC is valid and the version that verified it.
func (c *Client) VerifyMac(ctx context.Context, key string, version uint32, message, mac []byte) (bool, uint32, error) {
	resp, err := call(ctx, c, versioned("verify mac", key, version), true, c.api.VerifyMac,
		&keywardv1.VerifyMacRequest{Key: key, Version: version, Message: message, Mac: mac})
	if err != nil {
		return false, 0, err
	}
	return resp.GetValid(), resp.GetVersion(), nil
}

// PublicKey returns the public key of an asymmetric key's version (0: the
// newest enabled), as DER (PKIX) and PEM.
func (c *Client) PublicKey(ctx context.Context, key string, version uint32) (*keywardv1.GetPublicKeyResponse, error) {
	op := versioned("public key", key, version)
	resp, err := call(ctx, c, op, true, c.api.GetPublicKey, &keywardv1.GetPublicKeyRequest{Key: key, Version: version})
	return replied(op, resp, err, noPublicKey)
}

// Result is one item of a batch: its response, or the error it would have
// had as a single call (wrapping a sentinel like every error here).
type Result[T any] struct {
	Value T
	Err   error
}

// batch pairs a batch reply's items with the request's.
func batch[R any, T any](op string, n int, results []R, split func(R) (T, *keywardv1.ItemError)) ([]Result[T], error) {
	if len(results) != n {
		return nil, newError(op, codes.Internal, 0, fmt.Sprintf("the daemon answered %d items for %d", len(results), n))
	}
	out := make([]Result[T], n)
	for i, r := range results {
		v, ie := split(r)
		switch {
		case ie != nil:
			out[i].Err = fromItem(fmt.Sprintf("%s item %d", op, i), ie)
		default:
			out[i].Value = v
		}
	}
	return out, nil
}

// BatchWrap wraps up to 1000 items in one call. Each item is authorised
// and answered on its own: the error is the call's (nothing was done),
// an item's error is in its Result.
func (c *Client) BatchWrap(ctx context.Context, items []*keywardv1.WrapRequest) ([]Result[*keywardv1.WrapResponse], error) {
	const op = "batch wrap"
	resp, err := call(ctx, c, op, true, c.api.BatchWrap, &keywardv1.BatchWrapRequest{Items: items})
	if err != nil {
		return nil, err
	}
	return batch(op, len(items), resp.GetResults(), func(r *keywardv1.BatchWrapResult) (*keywardv1.WrapResponse, *keywardv1.ItemError) {
		return r.GetOk(), itemError(r.GetError(), noWrapCiphertext(r.GetOk()) != "")
	})
}

// BatchUnwrap unwraps up to 1000 blobs in one call; see BatchWrap.
func (c *Client) BatchUnwrap(ctx context.Context, items []*keywardv1.UnwrapRequest) ([]Result[*keywardv1.UnwrapResponse], error) {
	const op = "batch unwrap"
	resp, err := call(ctx, c, op, true, c.api.BatchUnwrap, &keywardv1.BatchUnwrapRequest{Items: items})
	if err != nil {
		return nil, err
	}
	return batch(op, len(items), resp.GetResults(), func(r *keywardv1.BatchUnwrapResult) (*keywardv1.UnwrapResponse, *keywardv1.ItemError) {
		return r.GetOk(), itemError(r.GetError(), r.GetOk() == nil)
	})
}

// BatchMac computes up to 1000 MACs in one call; see BatchWrap.
func (c *Client) BatchMac(ctx context.Context, items []*keywardv1.MacRequest) ([]Result[*keywardv1.MacResponse], error) {
	const op = "batch mac"
	resp, err := call(ctx, c, op, true, c.api.BatchMac, &keywardv1.BatchMacRequest{Items: items})
	if err != nil {
		return nil, err
	}
	return batch(op, len(items), resp.GetResults(), func(r *keywardv1.BatchMacResult) (*keywardv1.MacResponse, *keywardv1.ItemError) {
		return r.GetOk(), itemError(r.GetError(), noMac(r.GetOk()) != "")
	})
}

// BatchVerifyMac checks up to 1000 MACs in one call; see BatchWrap. An
// invalid MAC is an item with Value.Valid false, not an error.
func (c *Client) BatchVerifyMac(ctx context.Context, items []*keywardv1.VerifyMacRequest) ([]Result[*keywardv1.VerifyMacResponse], error) {
	const op = "batch verify mac"
	resp, err := call(ctx, c, op, true, c.api.BatchVerifyMac, &keywardv1.BatchVerifyMacRequest{Items: items})
	if err != nil {
		return nil, err
	}
	return batch(op, len(items), resp.GetResults(), func(r *keywardv1.BatchVerifyMacResult) (*keywardv1.VerifyMacResponse, *keywardv1.ItemError) {
		return r.GetOk(), itemError(r.GetError(), r.GetOk() == nil)
	})
}

// itemError returns a batch item's error; an item with neither a response
// nor an error breaks the protocol.
func itemError(ie *keywardv1.ItemError, noValue bool) *keywardv1.ItemError {
	if ie == nil && noValue {
		return &keywardv1.ItemError{Code: int32(codes.Internal), Message: "the daemon answered an empty item"}
	}
	return ie
}

// CreateKey creates a key of keyType (aes-256-gcm, hmac-sha256,
// ecdsa-p256, rsa-3072-pss, ed25519) with version 1 generated in the device.
// Never retried.
func (c *Client) CreateKey(ctx context.Context, key, keyType string) (*keywardv1.KeyInfo, error) {
	return call(ctx, c, named("create key", key), false, c.api.CreateKey,
		&keywardv1.CreateKeyRequest{Key: key, KeyType: keyType})
}

// RotateKey adds a version, which new wraps, signatures and MACs use from
// now on. Never retried.
func (c *Client) RotateKey(ctx context.Context, key string) (*keywardv1.KeyInfo, error) {
	return call(ctx, c, named("rotate key", key), false, c.api.RotateKey,
		&keywardv1.RotateKeyRequest{Key: key})
}

// SetRotationPolicy sets how often the daemon rotates key by itself
// (whole seconds, at least an hour; 0 stops it). Never retried.
func (c *Client) SetRotationPolicy(ctx context.Context, key string, period time.Duration) (*keywardv1.KeyInfo, error) {
	return call(ctx, c, named("set the rotation period of key", key), false, c.api.SetRotationPolicy,
		&keywardv1.SetRotationPolicyRequest{Key: key, RotationPeriodSeconds: uint64(max(period, 0) / time.Second)})
}

// SetDisableAfter sets how long a version of key stays enabled once a
// newer one exists before the daemon disables it (whole seconds, at least
// a day; 0 stops it). Never retried.
func (c *Client) SetDisableAfter(ctx context.Context, key string, d time.Duration) (*keywardv1.KeyInfo, error) {
	return call(ctx, c, named("set the disable-after delay of key", key), false, c.api.SetDisableAfter,
		&keywardv1.SetDisableAfterRequest{Key: key, DisableAfterSeconds: uint64(max(d, 0) / time.Second)})
}

// ListKeys returns every key the daemon holds.
func (c *Client) ListKeys(ctx context.Context) ([]*keywardv1.KeyInfo, error) {
	resp, err := call(ctx, c, "list keys", true, c.api.ListKeys, &keywardv1.ListKeysRequest{})
	if err != nil {
		return nil, err
	}
	return resp.GetKeys(), nil
}

// DescribeKey returns a key's type, versions and their states.
func (c *Client) DescribeKey(ctx context.Context, key string) (*keywardv1.KeyInfo, error) {
	return call(ctx, c, named("describe key", key), true, c.api.DescribeKey,
		&keywardv1.DescribeKeyRequest{Key: key})
}

// SetVersionState enables or disables a version (reversible). Never retried.
func (c *Client) SetVersionState(ctx context.Context, key string, version uint32, enabled bool) (*keywardv1.KeyInfo, error) {
	op, state := "disable", keywardv1.VersionState_DISABLED
	if enabled {
		op, state = "enable", keywardv1.VersionState_ENABLED
	}
	return call(ctx, c, versioned(op, key, version), false, c.api.SetVersionState,
		&keywardv1.SetVersionStateRequest{Key: key, Version: version, State: state})
}

// DestroyVersion deletes a version's key object from the device for good:
// whatever it wrapped, signed or MAC'd can never be used again. Never retried.
func (c *Client) DestroyVersion(ctx context.Context, key string, version uint32) (*keywardv1.KeyInfo, error) {
	return call(ctx, c, versioned("destroy", key, version), false, c.api.DestroyVersion,
		&keywardv1.DestroyVersionRequest{Key: key, Version: version})
}

// SetMinDecryptVersion refuses unwrap and verify with versions below
// version (0 lifts the floor). Never retried.
func (c *Client) SetMinDecryptVersion(ctx context.Context, key string, version uint32) (*keywardv1.KeyInfo, error) {
	return call(ctx, c, named("set minimum decrypt version", key), false, c.api.SetMinDecryptVersion,
		&keywardv1.SetMinDecryptVersionRequest{Key: key, Version: version})
}

// AdoptKey makes an existing device object, named by an RFC 7512 URI or its
// label, version 1 of a new key. Objects the device does not protect are
// refused with ErrWeakKey. Never retried.
func (c *Client) AdoptKey(ctx context.Context, key, keyType, uri string) (*keywardv1.KeyInfo, error) {
	return call(ctx, c, named("adopt key", key), false, c.api.AdoptKey,
		&keywardv1.AdoptKeyRequest{Key: key, KeyType: keyType, Uri: uri})
}

// Status returns the daemon's health and who it thinks the caller is. Any
// caller may ask.
func (c *Client) Status(ctx context.Context) (*keywardv1.StatusResponse, error) {
	return call(ctx, c, "status", true, c.api.Status, &keywardv1.StatusRequest{})
}
