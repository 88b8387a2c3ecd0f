package socket

import (
	"context"
	"encoding/binary"
	"net"
	"sync"
	"sync/atomic"
)

// HTTP/2 frame types and flags the stream count reads (RFC 9113).
const (
	frameHeaders      = 0x1
	frameRSTStream    = 0x3
	frameContinuation = 0x9
	flagEndStream     = 0x1
	flagEndHeaders    = 0x4
	clientPreface     = len("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
)

// frameScanner follows the frame boundaries of one direction of an HTTP/2
// connection from the bytes as they pass, reading only frame headers.
type frameScanner struct {
	skip int // bytes left of the preface or of a frame's payload
	hdr  [9]byte
	n    int // bytes of hdr read
}

// scan calls frame for each frame header completed in b.
func (s *frameScanner) scan(b []byte, frame func(typ, flags byte, stream uint32)) {
	for len(b) > 0 {
		if s.skip > 0 {
			k := min(s.skip, len(b))
			s.skip -= k
			b = b[k:]
			continue
		}
		k := copy(s.hdr[s.n:], b)
		s.n += k
		b = b[k:]
		if s.n < len(s.hdr) {
			return
		}
		s.n = 0
		s.skip = int(s.hdr[0])<<16 | int(s.hdr[1])<<8 | int(s.hdr[2])
		frame(s.hdr[3], s.hdr[4], binary.BigEndian.Uint32(s.hdr[5:9])&0x7fffffff)
	}
}

// streamConn counts, on a server connection, the calls its client opened
// (a header block, HEADERS and any CONTINUATION, ended on a new stream:
// only then does gRPC see the call, and start its receive_timeout) that
// the server has not finished (its
// trailers, HEADERS with END_STREAM, written, or a reset either way). A
// call whose reply the client does not take (its flow-control window is
// closed) stays counted, although gRPC ends a call's context once it has
// queued the reply: that is what such a client makes the server hold. The
// count is shared by the uid's connections (OpenStreams).
//
// Frames are counted as they are handed to gRPC's framer, which must read
// from the connection unbuffered (grpc.ReadBufferSize(0)): streamConn does
// the buffering, so the count never runs ahead of the frame gRPC is
// handling.
type streamConn struct {
	net.Conn
	uid *atomic.Int64

	rbuf []byte // read from the connection, not yet handed out: rbuf[r:w]
	r, w int

	in  frameScanner // the reader's: Read runs in one goroutine
	out frameScanner // the writer's: Write runs in one goroutine
	// partial: the client stream whose header block has begun and not
	// ended (RFC 9113 allows no other frame in between), 0 when none.
	// The reader's alone.
	partial uint32

	mu       sync.Mutex // guards open and closed
	open     map[uint32]struct{}
	closed   bool
	onClosed func()
}

// readBufferSize is streamConn's read buffer, gRPC's default.
const readBufferSize = 32 << 10

func newStreamConn(c net.Conn, uid *atomic.Int64, onClosed func()) *streamConn {
	return &streamConn{Conn: c, uid: uid, rbuf: make([]byte, readBufferSize), in: frameScanner{skip: clientPreface},
		open: map[uint32]struct{}{}, onClosed: onClosed}
}

func (c *streamConn) Read(b []byte) (int, error) {
	if c.r == c.w {
		n, err := c.Conn.Read(c.rbuf)
		if n == 0 {
			return 0, err
		}
		c.r, c.w = 0, n // an error with data comes back on the next read
	}
	n := copy(b, c.rbuf[c.r:c.w])
	c.r += n
	if c.r == c.w {
		// Handed out whole: requests carry plaintexts, which must not
		// stay in a buffer the connection keeps for its life.
		clear(c.rbuf[:c.w])
	}
	c.in.scan(b[:n], c.fromClient) // in is the reader's alone; the callback locks
	return n, nil
}

// Write counts before the bytes leave, so a call is no longer counted by
// the time its client can see the reply and make the next one.
func (c *streamConn) Write(b []byte) (int, error) {
	c.out.scan(b, c.fromServer) // out is the writer's alone; the callback locks
	return c.Conn.Write(b)
}

func (c *streamConn) fromClient(typ, flags byte, id uint32) {
	switch {
	case typ == frameHeaders && id%2 == 1 && flags&flagEndHeaders == 0:
		c.partial = id // counted when its block ends
	case typ == frameHeaders && id%2 == 1, typ == frameContinuation && id == c.partial && flags&flagEndHeaders != 0:
		c.partial = 0
		c.opened(id)
	case typ == frameRSTStream:
		c.finish(id)
	}
}

// opened counts client stream id, once.
func (c *streamConn) opened(id uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.open[id]; !ok && !c.closed {
		c.open[id] = struct{}{}
		c.uid.Add(1)
	}
}

func (c *streamConn) fromServer(typ, flags byte, id uint32) {
	if typ == frameRSTStream || typ == frameHeaders && flags&flagEndStream != 0 {
		c.finish(id)
	}
}

func (c *streamConn) finish(id uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.open[id]; ok {
		delete(c.open, id)
		c.uid.Add(-1)
	}
}

// Close ends every call still counted and frees the connection's slot.
func (c *streamConn) Close() error {
	err := c.Conn.Close()
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		c.uid.Add(-int64(len(c.open)))
		clear(c.open)
	}
	c.mu.Unlock()
	c.onClosed()
	return err
}

// NetConn returns the wrapped connection.
func (c *streamConn) NetConn() net.Conn { return c.Conn }

// OpenStreams returns how many calls the uid of the call in ctx has open
// over all its connections, this call included, as LimitedCredentials
// counts them; ok is false for a connection it does not count.
func OpenStreams(ctx context.Context) (n int64, ok bool) {
	ai, ok := authInfoFrom(ctx)
	if !ok || ai.open == nil {
		return 0, false
	}
	return ai.open.Load(), true
}
