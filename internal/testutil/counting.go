package testutil

import (
	"net"
	"sync"
	"sync/atomic"
)

// CountingListener counts the bytes read on every connection it accepts
// (a stand-in server that must prove it was sent nothing).
type CountingListener struct {
	net.Listener
	n  atomic.Int64
	wg sync.WaitGroup
}

// Accept wraps the next connection so that its reads are counted.
func (l *CountingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.wg.Add(1)
	return &countingConn{Conn: c, l: l}, nil
}

// Read waits until every accepted connection has been read to its end or
// closed, and returns the bytes read from them all.
func (l *CountingListener) Read() int64 {
	l.wg.Wait()
	return l.n.Load()
}

type countingConn struct {
	net.Conn
	l    *CountingListener
	once sync.Once
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.l.n.Add(int64(n))
	if err != nil {
		c.once.Do(c.l.wg.Done)
	}
	return n, err
}

// Close counts as done too: a connection accepted as the server stops is
// closed without ever being read.
func (c *countingConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.l.wg.Done)
	return err
}
