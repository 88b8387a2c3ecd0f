package socket

import "errors"

var (
	// ErrInUse means another process serves, or holds the lock for, the socket
	// path. The error names the path.
	ErrInUse = errors.New("socket in use")

	// ErrUnsafeDir means the socket's directory, or one above it, can be
	// changed by a user other than root and the daemon's: Listen refuses to
	// bind there. The error names the directory and why.
	ErrUnsafeDir = errors.New("socket directory is not safe")

	// ErrNotUnix means a connection is not a Unix domain socket, so the kernel
	// cannot say who is at the other end.
	ErrNotUnix = errors.New("not a unix socket connection")
)

// ErrConnLimit means a connection was refused at its handshake because its
// uid holds as many connections as it may.
var ErrConnLimit = errors.New("connection limit reached")
