package socket

import (
	"net"
	"sync"
)

// LimitListener returns a listener that keeps at most n accepted connections
// open: Accept blocks while n are open and resumes when one is closed. Further
// clients wait in the kernel's backlog meanwhile (their connect succeeds). It
// panics if n < 1.
//
// The connections it returns wrap the underlying ones and expose them with
// NetConn(), which Credentials uses to reach the *net.UnixConn.
func LimitListener(l net.Listener, n int) net.Listener {
	if n < 1 {
		panic("socket: LimitListener: n must be at least 1")
	}
	return &limitListener{Listener: l, sem: make(chan struct{}, n), done: make(chan struct{})}
}

type limitListener struct {
	net.Listener
	sem       chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.sem <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.sem
		return nil, err
	}
	return &limitConn{Conn: c, release: func() { <-l.sem }}, nil
}

// Close closes the listener and wakes an Accept blocked at the limit.
func (l *limitListener) Close() error {
	err := l.Listener.Close()
	l.closeOnce.Do(func() { close(l.done) })
	return err
}

type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

// Close closes the connection and frees its slot, once however often it is
// called.
func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// NetConn returns the wrapped connection.
func (c *limitConn) NetConn() net.Conn { return c.Conn }
