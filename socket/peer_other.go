//go:build !linux

package socket

import (
	"errors"
	"net"
)

// PeerOf is only implemented on Linux.
func PeerOf(c *net.UnixConn) (Peer, error) {
	return Peer{}, errors.ErrUnsupported
}
