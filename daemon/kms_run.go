package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"

	"google.golang.org/grpc"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/socket"
)

// kmsEndpoint is the running KMS v2 server; a nil one is off.
type kmsEndpoint struct {
	srv  *grpc.Server
	l    net.Listener
	path string
	errc chan error
	log  *slog.Logger
}

// openKMS takes the KMS socket (the one systemd passed as "kms", or its
// own kms_socket) and builds its server on opts, the options of keyward's
// own: the same gate, limits, interceptors and audit. It returns nil when
// the endpoint is off. kms_key must be an aes-256-gcm key when it exists; a
// missing one is reported by Status until it is created.
func openKMS(ctx context.Context, cfg config.Config, svc *Service, opts []grpc.ServerOption, log *slog.Logger) (*kmsEndpoint, error) {
	l, ok, err := socket.SystemdOptional(config.KMSSystemdSocketName)
	if err != nil {
		return nil, fmt.Errorf("kms socket activation: %w", err)
	}
	path := cfg.KMSSocket
	switch {
	case ok && cfg.KMSKey == "":
		l.Close()
		return nil, fmt.Errorf("systemd passed a socket named %q but kms_key is empty: %w", config.KMSSystemdSocketName, config.ErrConfig)
	case ok:
		path = l.Addr().String()
		log.Info("using the KMS socket passed by systemd", "name", config.KMSSystemdSocketName)
	case cfg.KMSSocket == "" && cfg.KMSKey != "":
		return nil, fmt.Errorf("kms_key is set but there is no kms_socket and systemd passed no socket named %q: %w", config.KMSSystemdSocketName, config.ErrConfig)
	case cfg.KMSSocket == "":
		return nil, nil
	}
	if err := checkKMSKey(ctx, svc.be, cfg.KMSKey, log); err != nil {
		if l != nil {
			l.Close()
		}
		return nil, err
	}
	if !ok {
		if l, err = socket.Listen(socket.Config{Path: cfg.KMSSocket, Group: cfg.SocketGroup, Mode: 0o660}); err != nil {
			return nil, fmt.Errorf("kms socket: %w", err)
		}
	}
	k := newKMSServer(svc, cfg.KMSKey)
	svc.kms = k
	// Its own count of connections and calls (a flood on one socket does not
	// shut the apiserver out of the other), with messages bounded to
	// kmsMaxMessage: what a uid can make keywardd hold here stays small
	// beside max_message on the API socket (later options win).
	srv := grpc.NewServer(append(opts, kmsMessageLimits...)...)
	kmsapi.RegisterKeyManagementServiceServer(srv, k)
	return &kmsEndpoint{srv: srv, l: socket.LimitListener(l, cfg.Limits.MaxConnections), path: path, errc: make(chan error, 1), log: log}, nil
}

// checkKMSKey refuses a kms_key that exists and is not aes-256-gcm.
func checkKMSKey(ctx context.Context, be keys.Backend, key string, log *slog.Logger) error {
	info, err := be.DescribeKey(ctx, key)
	switch {
	case errors.Is(err, keys.ErrKeyNotFound):
		log.Warn("kms_key does not exist yet: the KMS endpoint reports unhealthy until it does", "key", key)
		return nil
	case err != nil:
		return fmt.Errorf("kms_key %s: %w", key, err)
	case info.Type != keys.AES256GCM:
		return fmt.Errorf("kms_key %s is a %s key, not %s: %w", key, info.Type, keys.AES256GCM, config.ErrConfig)
	}
	return nil
}

// close gives up the listener of an endpoint that never served.
func (e *kmsEndpoint) close() {
	if e != nil {
		e.l.Close()
	}
}

// serve starts serving; a nil endpoint does nothing.
func (e *kmsEndpoint) serve() {
	if e == nil {
		return
	}
	go func() { e.errc <- e.srv.Serve(e.l) }()
	e.log.Info("serving the Kubernetes KMS v2 API", "socket", e.path)
}

// failed is the channel Serve's error comes on (nil, never ready, when off).
func (e *kmsEndpoint) failed() <-chan error {
	if e == nil {
		return nil
	}
	return e.errc
}

// drainAsync starts draining like the main server's; the channel closes
// when done (at once when off).
func (e *kmsEndpoint) drainAsync(grace shutdown) <-chan struct{} {
	done := make(chan struct{})
	if e == nil {
		close(done)
		return done
	}
	go func() {
		defer close(done)
		if err := drain(e.srv, e.errc, grace, e.log); err != nil {
			e.log.Error("kms server", "err", err.Error())
		}
	}()
	return done
}
