package socket

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/credentials"
)

// ConnLimits bound the connections the daemon keeps per peer uid. Max is the
// listener's own limit (max_connections); PerUID the most one uid may hold;
// the last Reserved of Max are kept for uid 0, so a flood from other uids
// never keeps the operator out.
type ConnLimits struct {
	Max, PerUID, Reserved int
	// Refused, if set, hears of each refused connection (outside any lock).
	Refused func(p Peer, why string)
}

// connCounter counts the connections each uid holds.
type connCounter struct {
	mu      sync.Mutex
	lim     ConnLimits
	perUID  map[uint32]*uidConns
	nonRoot int
}

// uidConns is one uid's connections and the calls open on them.
type uidConns struct {
	conns int
	open  atomic.Int64
}

// admit takes a slot for p, or says why not.
func (c *connCounter) admit(p Peer) (*uidConns, func(), string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	u := c.perUID[p.UID]
	if u != nil && u.conns >= c.lim.PerUID {
		return nil, nil, fmt.Sprintf("uid %d holds %d connections (limits.max_connections_per_uid)", p.UID, u.conns)
	}
	if p.UID != 0 && c.nonRoot >= c.lim.Max-c.lim.Reserved {
		return nil, nil, fmt.Sprintf("the last %d connections are kept for uid 0", c.lim.Reserved)
	}
	if u == nil {
		u = &uidConns{}
		c.perUID[p.UID] = u
	}
	u.conns++
	if p.UID != 0 {
		c.nonRoot++
	}
	var once sync.Once
	return u, func() { once.Do(func() { c.release(p.UID) }) }, ""
}

func (c *connCounter) release(uid uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if u := c.perUID[uid]; u != nil {
		if u.conns--; u.conns <= 0 {
			delete(c.perUID, uid)
		}
	}
	if uid != 0 {
		c.nonRoot--
	}
}

// LimitedCredentials is Credentials for a server that also applies lim at
// each handshake: a connection over its uid's share is closed before any
// byte of HTTP/2 is read from it. It counts each uid's open calls too
// (OpenStreams); the server must then read unbuffered
// (grpc.ReadBufferSize(0)): the connection buffers. Pair it with LimitListener(l, lim.Max).
func LimitedCredentials(lim ConnLimits) credentials.TransportCredentials {
	return limitedCreds{c: &connCounter{lim: lim, perUID: map[uint32]*uidConns{}}}
}

type limitedCreds struct {
	transportCreds
	c *connCounter
}

func (l limitedCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	ai, err := handshake(c)
	if err != nil {
		return nil, nil, err
	}
	u, release, why := l.c.admit(ai.Peer)
	if release == nil {
		if l.c.lim.Refused != nil {
			l.c.lim.Refused(ai.Peer, why)
		}
		return nil, nil, fmt.Errorf("socket: %s: %s: %w", ai.Peer, why, ErrConnLimit)
	}
	ai.open = &u.open
	return newStreamConn(c, &u.open, release), ai, nil
}

func (l limitedCreds) ClientHandshake(ctx context.Context, a string, c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return l.transportCreds.ClientHandshake(ctx, a, c)
}

func (l limitedCreds) Clone() credentials.TransportCredentials { return l }
