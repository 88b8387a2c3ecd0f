package tpm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"

	"github.com/keyward/keyward/internal/devspec"
)

// Conn is one connection to a TPM. Send takes one complete TPM command and
// returns the complete response, whatever its response code: a TPM error is
// in the response (bytes 6..10), not in err. Every error Send returns wraps
// ErrTransport; after one the command may or may not have run on the TPM, so
// only an idempotent command may be sent again.
//
// Send resends a command answered with TPM_RC_RETRY, TPM_RC_YIELDED or
// TPM_RC_TESTING (backoff from 1 ms, doubling, for about 2 s) and then hands
// back the last response. Conn is meant for one goroutine at a time; calls
// from several are serialised, and Close may come from another goroutine.
type Conn interface {
	Send(cmd []byte) ([]byte, error)
	Close() error
}

var _ transport.TPMCloser = Conn(nil)

const (
	defaultDevice = "/dev/tpmrm0"

	headerSize = 10       // tag u16, size u32, code u32
	maxMessage = 64 << 10 // far above any TPM's buffer: a larger size is garbage

	// RSA key generation on a slow chip takes tens of seconds.
	defaultIOTimeout = 60 * time.Second
	dialTimeout      = 2 * time.Second

	retryFirstDelay = time.Millisecond
	retryBudget     = 2 * time.Second

	rcYielded = 0x908
	rcTesting = 0x90A
	rcRetry   = 0x922
)

const acceptedDevices = devspec.Accepted

// simDial opens the in-process simulator. It is set by sim.go in builds
// tagged tpmsim and nil otherwise.
var simDial func(seed uint64, fixed bool) (Conn, error)

var errClosed = fmt.Errorf("%w: connection closed", ErrTransport)

// Dial opens the TPM named by device (config syntax):
//
//	"" or "/dev/tpmrm0" or any path under /dev/  the kernel's TPM device (go-tpm linuxtpm)
//	"swtpm:HOST:PORT"                             swtpm's data channel over TCP
//	"swtpm+unix:/path/to/sock"                    swtpm's data channel over a Unix socket
//	"sim" or "sim:N" (N a uint64 seed)            the in-process simulator (-tags tpmsim only)
//
// A swtpm connection is made at once; if it breaks, the next Send dials again.
// swtpm serves one client at a time: a second client waits until the first
// disconnects. The simulator is one per process: a second Dial("sim") while
// one is open fails with ErrTransport.
//
// A malformed device wraps ErrConfig; "sim" in a build without the simulator
// is ErrNoSimulator; a TPM that cannot be reached wraps ErrTransport.
func Dial(device string) (Conn, error) {
	if err := CheckDevice(device); err != nil {
		return nil, err
	}
	switch {
	case device == "":
		return dialDevice(defaultDevice)
	case strings.HasPrefix(device, "/dev/"):
		return dialDevice(device)
	case strings.HasPrefix(device, "swtpm:"):
		return dialStream("tcp", strings.TrimPrefix(device, "swtpm:"), defaultIOTimeout)
	case strings.HasPrefix(device, "swtpm+unix:"):
		return dialStream("unix", strings.TrimPrefix(device, "swtpm+unix:"), defaultIOTimeout)
	}
	// "sim" or "sim:SEED", checked above.
	s, fixed := strings.CutPrefix(device, "sim:")
	var seed uint64
	if fixed {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	return simDial(seed, fixed)
}

// CheckDevice checks a device string's form without opening it (for config
// validation): nil, an error wrapping ErrConfig, or ErrNoSimulator for "sim"
// in a build without the simulator.
// Whether this build has the simulator is simDial's to say (devspec only
// checks the form here).
func CheckDevice(device string) error {
	err := devspec.Check(device)
	switch {
	case err != nil && !errors.Is(err, devspec.ErrNoSimulator):
		return deviceError{err}
	case (device == "sim" || strings.HasPrefix(device, "sim:")) && simDial == nil:
		return ErrNoSimulator
	}
	return nil
}

// deviceError is devspec's error, with the same text, that is also ErrConfig.
type deviceError struct{ error }

func (e deviceError) Unwrap() []error { return []error{e.error, ErrConfig} }

func redactDevice(device string) string { return devspec.Redact(device) }

// retryConn is the wrapper every transport sits behind: it checks the
// framing of commands and responses, serialises Sends, and resends commands
// the TPM asked to have resent.
type retryConn struct {
	mu     sync.Mutex // one command (with its retries) in flight
	inner  Conn
	closed atomic.Bool

	firstDelay time.Duration
	budget     time.Duration
	now        func() time.Time    // time.Now; tests move time by hand
	sleep      func(time.Duration) // time.Sleep
}

func newRetryConn(inner Conn) *retryConn {
	return &retryConn{inner: inner, firstDelay: retryFirstDelay, budget: retryBudget, now: time.Now, sleep: time.Sleep}
}

func (r *retryConn) Send(cmd []byte) ([]byte, error) {
	if err := checkFrame("command", cmd); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()

	deadline := r.now().Add(r.budget)
	delay := r.firstDelay
	for {
		if r.closed.Load() {
			return nil, errClosed
		}
		resp, err := r.inner.Send(cmd)
		if err != nil {
			return nil, err
		}
		// A stream conn has framed it already; the device and the
		// simulator hand back whatever they read.
		if err := checkFrame("response", resp); err != nil {
			return nil, err
		}
		switch binary.BigEndian.Uint32(resp[6:10]) {
		case rcRetry, rcYielded, rcTesting:
		default:
			return resp, nil
		}
		left := deadline.Sub(r.now())
		if left <= 0 {
			return resp, nil
		}
		r.sleep(min(delay, left))
		delay *= 2
	}
}

func (r *retryConn) Close() error {
	if r.closed.Swap(true) {
		return nil
	}
	return r.inner.Close()
}

// checkFrame checks that b is one whole TPM message.
func checkFrame(what string, b []byte) error {
	n := len(b)
	if n < headerSize || n > maxMessage {
		return fmt.Errorf("%w: protocol error: %s of %d bytes", ErrTransport, what, n)
	}
	if size := binary.BigEndian.Uint32(b[2:6]); size != uint32(n) {
		return fmt.Errorf("%w: protocol error: %s of %d bytes says it has %d", ErrTransport, what, n, size)
	}
	return nil
}

func dialDevice(path string) (Conn, error) {
	t, err := linuxtpm.Open(path)
	switch {
	case errors.Is(err, linuxtpm.ErrFileIsNotDevice):
		return nil, fmt.Errorf("%w: %w; accepted: %s", ErrConfig, err, acceptedDevices)
	case errors.Is(err, fs.ErrPermission):
		return nil, fmt.Errorf("%w: %w (the device is usually group tss)", ErrTransport, err)
	case err != nil:
		return nil, fmt.Errorf("%w: %w", ErrTransport, err)
	}
	return newRetryConn(&deviceConn{t: t}), nil
}

// deviceConn is a kernel TPM device through go-tpm's linuxtpm, which
// itself resends TPM_RC_RETRY for about 2 s and then returns no response
// and no error.
type deviceConn struct {
	t transport.TPMCloser
}

func (d *deviceConn) Send(cmd []byte) ([]byte, error) {
	resp, err := d.t.Send(cmd)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrTransport, err)
	}
	if resp == nil {
		return nil, fmt.Errorf("%w: no response from the TPM device", ErrTransport)
	}
	return resp, nil
}

func (d *deviceConn) Close() error { return d.t.Close() }

// streamConn speaks swtpm's data channel: raw TPM commands and responses on
// a byte stream, each response framed by the size in its header.
type streamConn struct {
	network, addr string
	ioTimeout     time.Duration // per command: write and whole response

	mu     sync.Mutex // guards c and closed; never held during I/O, so Close aborts a Send
	c      net.Conn   // nil after an error: the next Send dials
	closed bool
}

// dialStream connects to a swtpm data channel and returns it behind the
// retry wrapper.
func dialStream(network, addr string, ioTimeout time.Duration) (*retryConn, error) {
	s := &streamConn{network: network, addr: addr, ioTimeout: ioTimeout}
	c, err := s.dial()
	if err != nil {
		return nil, err
	}
	s.c = c
	return newRetryConn(s), nil
}

func (s *streamConn) dial() (net.Conn, error) {
	c, err := net.DialTimeout(s.network, s.addr, dialTimeout)
	if err != nil {
		return nil, fmt.Errorf("%w: swtpm: %w", ErrTransport, err)
	}
	return c, nil
}

// Send never resends on an I/O error: after a partial write or read the TPM
// may have run the command. It drops the connection instead.
func (s *streamConn) Send(cmd []byte) ([]byte, error) {
	c, err := s.conn()
	if err != nil {
		return nil, err
	}
	resp, err := s.roundTrip(c, cmd)
	if err != nil {
		s.drop(c)
		return nil, fmt.Errorf("%w: swtpm %s %s: %w", ErrTransport, s.network, s.addr, err)
	}
	return resp, nil
}

func (s *streamConn) conn() (net.Conn, error) {
	s.mu.Lock()
	c, closed := s.c, s.closed
	s.mu.Unlock()
	if closed {
		return nil, errClosed
	}
	if c != nil {
		return c, nil
	}
	c, err := s.dial()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		c.Close()
		return nil, errClosed
	}
	s.c = c
	return c, nil
}

func (s *streamConn) roundTrip(c net.Conn, cmd []byte) ([]byte, error) {
	if err := c.SetDeadline(time.Now().Add(s.ioTimeout)); err != nil {
		return nil, err
	}
	if _, err := c.Write(cmd); err != nil {
		return nil, fmt.Errorf("write command: %w", err)
	}
	var hdr [headerSize]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return nil, fmt.Errorf("read response header: %w", err)
	}
	size := binary.BigEndian.Uint32(hdr[2:6])
	if size < headerSize || size > maxMessage {
		return nil, fmt.Errorf("protocol error: response header says %d bytes", size)
	}
	resp := make([]byte, size)
	copy(resp, hdr[:])
	if _, err := io.ReadFull(c, resp[headerSize:]); err != nil {
		return nil, fmt.Errorf("read response body (%d bytes): %w", size, err)
	}
	return resp, nil
}

func (s *streamConn) drop(c net.Conn) {
	c.Close()
	s.mu.Lock()
	if s.c == c {
		s.c = nil
	}
	s.mu.Unlock()
}

func (s *streamConn) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if s.c == nil {
		return nil
	}
	err := s.c.Close()
	s.c = nil
	return err
}
