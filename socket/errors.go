package socket

import "errors"

var (
	// ErrInUse means another process serves, or holds the lock for, the socket
	// path. The error names the path.
	ErrInUse = errors.New("socket in use")

	// ErrNotUnix means a connection is not a Unix domain socket, so the kernel
	// cannot say who is at the other end.
	ErrNotUnix = errors.New("not a unix socket connection")
)
