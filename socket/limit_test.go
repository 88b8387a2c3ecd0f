package socket

import (
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"
)

func TestLimitListener(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	inner, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	l := LimitListener(inner, 2)
	accepted := make(chan net.Conn)
	done := make(chan error, 1)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				done <- err
				return
			}
			accepted <- c
		}
	}()
	next := func(what string) net.Conn {
		t.Helper()
		select {
		case c := <-accepted:
			return c
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: not accepted", what)
			return nil
		}
	}
	none := func(what string) {
		t.Helper()
		select {
		case c := <-accepted:
			c.Close()
			t.Fatalf("%s: accepted beyond the limit", what)
		case <-time.After(200 * time.Millisecond):
		}
	}

	var clients []net.Conn
	for range 4 {
		c, err := net.Dial("unix", path) // completes in the backlog
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients = append(clients, c)
	}
	c1, c2 := next("first"), next("second")
	none("third while two are open")

	// The wrapped conn still leads to the peer's identity.
	if uc, err := unwrapUnix(c1); err != nil {
		t.Errorf("unwrapUnix: %v", err)
	} else if _, err := PeerOf(uc); err != nil {
		t.Errorf("PeerOf through the wrapper: %v", err)
	}

	// Closing twice frees one slot, not two.
	c1.Close()
	c1.Close()
	c3 := next("third after a close")
	none("fourth after a double close")
	c2.Close()
	c4 := next("fourth")
	c3.Close()
	c4.Close()

	// Close wakes an Accept blocked at the limit... or in the inner Accept.
	l.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Accept after Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Accept did not return after Close")
	}
}

func TestLimitListenerCloseWhileFull(t *testing.T) {
	inner, err := net.Listen("unix", filepath.Join(t.TempDir(), "s.sock"))
	if err != nil {
		t.Fatal(err)
	}
	l := LimitListener(inner, 1)
	c, err := net.Dial("unix", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	held, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	done := make(chan error, 1)
	go func() {
		_, err := l.Accept() // blocks on the limit, not in the kernel
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	l.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Accept = %v, want net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("blocked Accept not woken by Close")
	}
}

func TestLimitListenerBadN(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("LimitListener(l, 0) did not panic")
		}
	}()
	LimitListener(nil, 0)
}
