package client

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"

	"google.golang.org/grpc/codes"

	"github.com/keyward/keyward/internal/safepath"
)

// WithDaemonUID sets the uid keywardd must run as: a connection whose
// listening process (as the kernel recorded it, SO_PEERCRED) runs as
// another uid, root apart, is closed before anything is sent, and the call
// fails with ErrUntrustedDaemon. Without it, the daemon must run as root
// or as the owner of the socket file, the latter only when the socket is
// not a symlink and no directory on its path can be changed by anyone but
// root and that owner (see internal/safepath): in a directory others can
// write, anyone could have put their own socket there.
func WithDaemonUID(uid uint32) Option {
	return func(o *options) { o.daemonUID = &uid }
}

// trust checks every connection the client makes, reconnects included, and
// remembers the first untrusted one: from then on every call of the Client
// fails with it, and none is retried, so that an impersonator is never
// hidden by a retry that reaches the real daemon.
type trust struct {
	path      string
	daemonUID *uint32
	bad       atomic.Pointer[string] // the first refusal's message
}

// check is run on each new connection before gRPC writes to it.
func (t *trust) check(c net.Conn) error {
	peer, err := peerUID(c)
	if err != nil {
		return t.refuse(fmt.Sprintf("cannot tell which uid listens on the socket (%v); refusing to send anything", err))
	}
	if peer == 0 {
		return nil
	}
	want, why := t.expected()
	if want != nil && peer == *want {
		return nil
	}
	return t.refuse(fmt.Sprintf("the process listening on the socket runs as uid %d, but keywardd must run as root%s; "+
		"nothing was sent to it: another user may be impersonating keywardd. Check who owns the socket before "+
		"trusting it; only if keywardd is configured to run as that uid, name it (WithDaemonUID, keyward --daemon-uid)", peer, why))
}

// expected is the non-root uid the daemon may run as, and how it was chosen.
func (t *trust) expected() (*uint32, string) {
	if t.daemonUID != nil {
		return t.daemonUID, fmt.Sprintf(" or uid %d (as configured)", *t.daemonUID)
	}
	fi, err := os.Lstat(t.path)
	if err != nil {
		return nil, fmt.Sprintf(" (the socket file's owner is unknown: %v)", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return nil, " (the socket path is not a socket file, so its owner is not trusted)"
	}
	owner := fi.Sys().(*syscall.Stat_t).Uid
	if owner == 0 {
		return nil, " (the socket file's owner)"
	}
	if _, err := safepath.CheckDir(filepath.Dir(t.path), owner); err != nil {
		return nil, fmt.Sprintf(" (the socket file's owner, uid %d, is not trusted: %v)", owner, err)
	}
	return &owner, fmt.Sprintf(" or uid %d (the socket file's owner)", owner)
}

func (t *trust) refuse(msg string) error {
	t.bad.CompareAndSwap(nil, &msg)
	return errors.New(msg)
}

// err returns the Client's error for op once an untrusted daemon was seen.
func (t *trust) err(op string) error {
	msg := t.bad.Load()
	if msg == nil {
		return nil
	}
	return &Error{Op: op, Code: codes.Unauthenticated, Message: *msg, sentinel: ErrUntrustedDaemon}
}
