package tpm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/keyward/keyward/tpm/swtpmtest"
)

func TestDialBadDevice(t *testing.T) {
	notDevice := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDevice, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		device  string
		wantErr error
	}{
		{name: "unknown scheme", device: "tcp:127.0.0.1:2321", wantErr: ErrConfig},
		{name: "relative path", device: "tpmrm0", wantErr: ErrConfig},
		{name: "path outside dev", device: notDevice, wantErr: ErrConfig},
		{name: "swtpm no port", device: "swtpm:127.0.0.1", wantErr: ErrConfig},
		{name: "swtpm empty host", device: "swtpm::2321", wantErr: ErrConfig},
		{name: "swtpm port zero", device: "swtpm:127.0.0.1:0", wantErr: ErrConfig},
		{name: "swtpm port too big", device: "swtpm:127.0.0.1:65536", wantErr: ErrConfig},
		{name: "swtpm port not a number", device: "swtpm:127.0.0.1:tpm", wantErr: ErrConfig},
		{name: "swtpm empty", device: "swtpm:", wantErr: ErrConfig},
		{name: "unix relative", device: "swtpm+unix:tpm.sock", wantErr: ErrConfig},
		{name: "unix empty", device: "swtpm+unix:", wantErr: ErrConfig},
		{name: "sim bad seed", device: "sim:-1", wantErr: ErrConfig},
		{name: "sim empty seed", device: "sim:", wantErr: ErrConfig},
		{name: "sim seed overflow", device: "sim:18446744073709551616", wantErr: ErrConfig},
		{name: "simulator", device: "simulator", wantErr: ErrConfig},
		{name: "dev not a device", device: "/dev/shm", wantErr: ErrConfig},
		{name: "dev missing", device: "/dev/keyward-no-such-tpm", wantErr: ErrTransport},
		{name: "unix nothing listening", device: "swtpm+unix:" + filepath.Join(t.TempDir(), "none"), wantErr: ErrTransport},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Dial(tt.device)
			if !errors.Is(err, tt.wantErr) {
				if c != nil {
					c.Close()
				}
				t.Fatalf("Dial(%q) = %v, want %v", tt.device, err, tt.wantErr)
			}
		})
	}
}

// Whatever the build, a nil simDial is a build without the simulator.
func TestDialNoSimulator(t *testing.T) {
	saved := simDial
	simDial = nil
	defer func() { simDial = saved }()
	for _, dev := range []string{"sim", "sim:42"} {
		if _, err := Dial(dev); !errors.Is(err, ErrNoSimulator) {
			t.Errorf("Dial(%q) = %v, want ErrNoSimulator", dev, err)
		}
	}
}

func TestDialClosedPort(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	if _, err := Dial("swtpm:" + addr); !errors.Is(err, ErrTransport) {
		t.Fatalf("Dial to a closed port: %v, want ErrTransport", err)
	}
}

func TestTransportSWTPM(t *testing.T) {
	for _, tt := range []struct {
		name  string
		start func(testing.TB) *swtpmtest.SWTPM
	}{
		{name: "tcp", start: swtpmtest.Start},
		{name: "unix", start: swtpmtest.StartUnix},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := tt.start(t)
			c, err := Dial(s.Device())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			getRandom(t, c)

			// The TPM dies: the command fails, and so does the next one
			// while nothing listens.
			s.Kill()
			if _, err := (tpm2.GetRandom{BytesRequested: 8}).Execute(c); !errors.Is(err, ErrTransport) {
				t.Fatalf("GetRandom on a killed swtpm: %v, want ErrTransport", err)
			}
			if _, err := (tpm2.GetRandom{BytesRequested: 8}).Execute(c); !errors.Is(err, ErrTransport) {
				t.Fatalf("GetRandom with swtpm down: %v, want ErrTransport", err)
			}

			// It comes back on the same state: the same Conn redials.
			s.Restart(t)
			_, err = (tpm2.Startup{StartupType: tpm2.TPMSUClear}).Execute(c)
			if err != nil && !errors.Is(err, tpm2.TPMRCInitialize) {
				t.Fatalf("Startup after restart: %v", err)
			}
			getRandom(t, c)

			if err := c.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if err := c.Close(); err != nil {
				t.Fatalf("second Close: %v", err)
			}
			if _, err := (tpm2.GetRandom{BytesRequested: 8}).Execute(c); !errors.Is(err, ErrTransport) {
				t.Fatalf("GetRandom after Close: %v, want ErrTransport", err)
			}
		})
	}
}

func getRandom(t *testing.T, c Conn) {
	t.Helper()
	rsp, err := (tpm2.GetRandom{BytesRequested: 16}).Execute(c)
	if err != nil {
		t.Fatalf("GetRandom: %v", err)
	}
	if n := len(rsp.RandomBytes.Buffer); n != 16 {
		t.Fatalf("GetRandom gave %d bytes, want 16", n)
	}
}

// fakeTPM is a stand-in swtpm data channel for framing and retry tests.
// Each accepted connection reads whole commands and answers each with the
// next reply; a nil reply closes the connection without answering, and so
// does a reply that is not one whole frame, after sending it.
type fakeTPM struct {
	l net.Listener

	mu       sync.Mutex
	replies  [][]byte
	commands [][]byte
	accepted int
}

func newFake(t *testing.T, replies ...[]byte) *fakeTPM {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeTPM{l: l, replies: replies}
	t.Cleanup(func() { l.Close() })
	go f.serve()
	return f
}

func (f *fakeTPM) device() string { return "swtpm:" + f.l.Addr().String() }

func (f *fakeTPM) serve() {
	for {
		c, err := f.l.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		f.accepted++
		f.mu.Unlock()
		go f.handle(c)
	}
}

func (f *fakeTPM) handle(c net.Conn) {
	defer c.Close()
	for {
		var hdr [headerSize]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		cmd := make([]byte, binary.BigEndian.Uint32(hdr[2:6]))
		copy(cmd, hdr[:])
		if _, err := io.ReadFull(c, cmd[headerSize:]); err != nil {
			return
		}
		f.mu.Lock()
		f.commands = append(f.commands, cmd)
		var reply []byte
		if len(f.replies) > 0 {
			reply, f.replies = f.replies[0], f.replies[1:]
		}
		f.mu.Unlock()
		if reply == nil {
			return
		}
		if _, err := c.Write(reply); err != nil {
			return
		}
		if len(reply) < headerSize || binary.BigEndian.Uint32(reply[2:6]) != uint32(len(reply)) {
			return // a broken frame, then the line drops (else the Conn waits out its deadline)
		}
	}
}

func (f *fakeTPM) seen() (commands [][]byte, accepted int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]byte(nil), f.commands...), f.accepted
}

// response is a TPM response with code rc and body.
func response(rc uint32, body ...byte) []byte {
	b := make([]byte, headerSize, headerSize+len(body))
	binary.BigEndian.PutUint16(b[0:2], 0x8001)
	binary.BigEndian.PutUint32(b[2:6], uint32(headerSize+len(body)))
	binary.BigEndian.PutUint32(b[6:10], rc)
	return append(b, body...)
}

// rawHeader is a response header claiming size bytes, followed by body.
func rawHeader(size uint32, body ...byte) []byte {
	b := make([]byte, headerSize)
	binary.BigEndian.PutUint16(b[0:2], 0x8001)
	binary.BigEndian.PutUint32(b[2:6], size)
	return append(b, body...)
}

// testCommand is TPM2_GetRandom(8).
var testCommand = []byte{0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 8}

func TestTransportFraming(t *testing.T) {
	ok := response(0, 0, 2, 0xaa, 0xbb)
	tests := []struct {
		name    string
		reply   []byte
		want    []byte
		wantErr error
	}{
		{name: "whole response", reply: ok, want: ok},
		{name: "header only", reply: response(0x101), want: response(0x101)},
		{name: "size below header", reply: rawHeader(9), wantErr: ErrTransport},
		{name: "size zero", reply: rawHeader(0), wantErr: ErrTransport},
		{name: "size above 64 KiB", reply: rawHeader(64<<10 + 1), wantErr: ErrTransport},
		{name: "size huge", reply: rawHeader(0xffffffff), wantErr: ErrTransport},
		{name: "body cut short", reply: rawHeader(100, 1, 2, 3), wantErr: ErrTransport},
		{name: "header cut short", reply: []byte{0x80, 0x01, 0, 0}, wantErr: ErrTransport},
		{name: "hang up", reply: nil, wantErr: ErrTransport},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// After the reply under test, a good one: the Conn must recover.
			f := newFake(t, tt.reply, ok)
			c, err := Dial(f.device())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			got, err := c.Send(testCommand)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Send = %v, want %v", err, tt.wantErr)
			}
			if err == nil && !bytes.Equal(got, tt.want) {
				t.Fatalf("Send = % x, want % x", got, tt.want)
			}
			got, err = c.Send(testCommand)
			if err != nil || !bytes.Equal(got, ok) {
				t.Fatalf("next Send = % x, %v; want % x", got, err, ok)
			}
			// One connection, or a second after an error: never a resend.
			cmds, accepted := f.seen()
			wantAccepted := 1
			if tt.wantErr != nil {
				wantAccepted = 2
			}
			if len(cmds) != 2 || accepted != wantAccepted {
				t.Fatalf("fake saw %d commands on %d connections, want 2 on %d", len(cmds), accepted, wantAccepted)
			}
		})
	}
}

func TestTransportMalformedCommand(t *testing.T) {
	f := newFake(t, response(0))
	c, err := Dial(f.device())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, cmd := range [][]byte{nil, testCommand[:9], append(bytes.Clone(testCommand), 0)} {
		if _, err := c.Send(cmd); !errors.Is(err, ErrTransport) {
			t.Errorf("Send(% x) = %v, want ErrTransport", cmd, err)
		}
	}
	if cmds, _ := f.seen(); len(cmds) != 0 {
		t.Fatalf("malformed commands reached the TPM: %d", len(cmds))
	}
}

func TestTransportRetry(t *testing.T) {
	ok := response(0, 0, 0)
	tests := []struct {
		name      string
		replies   [][]byte
		want      []byte
		wantSends int
	}{
		{name: "retry twice", replies: [][]byte{response(rcRetry), response(rcRetry), ok}, want: ok, wantSends: 3},
		{name: "yielded", replies: [][]byte{response(rcYielded), ok}, want: ok, wantSends: 2},
		{name: "testing", replies: [][]byte{response(rcTesting), response(rcYielded), ok}, want: ok, wantSends: 3},
		{name: "initialize not retried", replies: [][]byte{response(0x100), ok}, want: response(0x100), wantSends: 1},
		{name: "other warning not retried", replies: [][]byte{response(0x901), ok}, want: response(0x901), wantSends: 1},
		{name: "lockout not retried", replies: [][]byte{response(0x921), ok}, want: response(0x921), wantSends: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFake(t, tt.replies...)
			c, err := Dial(f.device())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			got, err := c.Send(testCommand)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tt.want) {
				t.Fatalf("Send = % x, want % x", got, tt.want)
			}
			cmds, _ := f.seen()
			if len(cmds) != tt.wantSends {
				t.Fatalf("fake saw %d commands, want %d", len(cmds), tt.wantSends)
			}
			for i, cmd := range cmds {
				if !bytes.Equal(cmd, testCommand) {
					t.Fatalf("command %d = % x, want % x", i, cmd, testCommand)
				}
			}
		})
	}
}

// A TPM that keeps saying RETRY: Send gives up after the budget and hands
// back the last answer.
func TestTransportRetryBudget(t *testing.T) {
	replies := make([][]byte, 100)
	for i := range replies {
		replies[i] = response(rcRetry)
	}
	f := newFake(t, replies...)
	c, err := Dial(f.device())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Time moves only by the sleeps: the machine's speed does not matter.
	rc := c.(*retryConn)
	rc.budget = 50 * time.Millisecond
	now := time.Now()
	var slept []time.Duration
	rc.now = func() time.Time { return now }
	rc.sleep = func(d time.Duration) { slept = append(slept, d); now = now.Add(d) }
	got, err := c.Send(testCommand)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, response(rcRetry)) {
		t.Fatalf("Send = % x, want the RETRY response", got)
	}
	// 1+2+4+8+16 ms, then the 19 ms left: 7 sends.
	ms := time.Millisecond
	if want := []time.Duration{ms, 2 * ms, 4 * ms, 8 * ms, 16 * ms, 19 * ms}; !slices.Equal(slept, want) {
		t.Fatalf("slept %v between resends, want %v", slept, want)
	}
	if cmds, _ := f.seen(); len(cmds) != 7 {
		t.Fatalf("fake saw %d commands, want 7", len(cmds))
	}
}

// A TPM that never answers: the I/O deadline ends the command.
func TestTransportDeadline(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go mute(l)
	c, err := dialStream("tcp", l.Addr().String(), 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Send(testCommand)
	if !errors.Is(err, ErrTransport) || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Send to a mute TPM = %v, want ErrTransport and a deadline", err)
	}
}

// Close from another goroutine ends a Send that waits for the TPM.
func TestTransportCloseAbortsSend(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	received := make(chan struct{})
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err == nil {
			close(received) // the command is on its way: Send waits for the answer
		}
		io.Copy(io.Discard, c)
	}()
	c, err := Dial("swtpm:" + l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := c.Send(testCommand)
		done <- err
	}()
	select {
	case <-received:
	case <-time.After(30 * time.Second):
		t.Fatal("the command never reached the TPM")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, ErrTransport) {
			t.Fatalf("aborted Send = %v, want ErrTransport", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Close did not end the Send in flight")
	}
}

// mute accepts one connection and reads from it, never answering.
func mute(l net.Listener) {
	c, err := l.Accept()
	if err != nil {
		return
	}
	defer c.Close()
	io.Copy(io.Discard, c)
}
