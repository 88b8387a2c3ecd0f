package socket

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"sync/atomic"
	"testing"
)

func frame(typ, flags byte, id uint32, payload int) []byte {
	b := []byte{byte(payload >> 16), byte(payload >> 8), byte(payload), typ, flags}
	b = binary.BigEndian.AppendUint32(b, id)
	return append(b, make([]byte, payload)...)
}

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// TestStreamCount: calls count from the end of the client's header block
// (HEADERS, or its last CONTINUATION) until the server's trailers or a
// reset either way, whatever the read and write boundaries, each once; a
// header block that never ends is no call; Close ends them all.
func TestStreamCount(t *testing.T) {
	preface := []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
	client := cat(preface, frame(0x4, 0, 0, 6), // SETTINGS
		frame(frameHeaders, 0x4, 1, 40), frame(0x0, 0x1, 1, 5000), // call 1 and its message
		frame(frameHeaders, 0, 3, 40), frame(0x9, 0, 3, 10), frame(0x9, 0x4, 3, 10), // call 3, ended by its second CONTINUATION
		frame(frameHeaders, 0x5, 5, 40),                                 // call 5, no message
		frame(frameHeaders, 0x4, 7, 40), frame(frameRSTStream, 0, 7, 4), // call 7, reset by the client
		frame(frameHeaders, 0x4, 9, 40),
		frame(frameHeaders, 0, 11, 40), frame(0x9, 0, 11, 10)) // call 11's block never ends
	server := cat(frame(0x4, 0, 0, 0),
		frame(frameHeaders, 0x4, 1, 20), frame(0x0, 0, 1, 100), frame(frameHeaders, 0x5, 1, 30), // reply and trailers
		frame(frameHeaders, 0x5, 5, 30), frame(frameRSTStream, 0, 5, 4), // trailers-only, then a reset
		frame(frameHeaders, 0x4, 3, 20)) // a reply started: 3 stays open
	for _, chunk := range []int{1, 7, 9, 100, 1 << 20} {
		var n atomic.Int64
		a, b := net.Pipe()
		closed := 0
		c := newStreamConn(a, &n, func() { closed++ })
		go func() {
			for i := 0; i < len(client); i += chunk {
				b.Write(client[i:min(i+chunk, len(client))])
			}
		}()
		buf := make([]byte, chunk)
		for read := 0; read < len(client); {
			k, err := c.Read(buf)
			if err != nil {
				t.Fatal(err)
			}
			read += k
		}
		if got := n.Load(); got != 4 { // 1, 3, 5, 9 open; 7 reset
			t.Fatalf("chunk %d: %d open after the client's frames, want 4", chunk, got)
		}
		go func() {
			buf := make([]byte, 1<<16)
			for {
				if _, err := b.Read(buf); err != nil {
					return
				}
			}
		}()
		for i := 0; i < len(server); i += chunk {
			c.Write(server[i:min(i+chunk, len(server))])
		}
		if got := n.Load(); got != 2 { // 3 and 9
			t.Fatalf("chunk %d: %d open after the server's frames, want 2", chunk, got)
		}
		c.Close()
		c.Close()
		if got := n.Load(); got != 0 || closed != 2 {
			t.Fatalf("chunk %d: %d open after Close (onClosed %d)", chunk, got, closed)
		}
		b.Close()
	}
}

// TestStreamConnClearsReadBuffer: bytes handed out to gRPC do not stay in
// the connection's own buffer (requests carry plaintexts).
func TestStreamConnClearsReadBuffer(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	var n atomic.Int64
	c := newStreamConn(b, &n, func() {})
	defer c.Close()
	secret := []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nplaintext-marker")
	go a.Write(secret)
	got := make([]byte, len(secret))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(c.rbuf, []byte("plaintext-marker")) {
		t.Error("the read buffer still holds bytes handed out")
	}
}
