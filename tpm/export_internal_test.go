package tpm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Templates for tests outside the package (raw baselines, outside checks).
var (
	KeyedHashTemplate = keyedHashTemplate
	ECCTemplate       = eccTemplate
)

// TapWire returns cfg with every command and response of the backend's
// connections passed to record.
func TapWire(cfg Config, record func(cmd, rsp []byte)) Config {
	cfg.test.wireTap = func(c Conn) Conn { return &tapConn{Conn: c, record: record} }
	return cfg
}

type tapConn struct {
	Conn
	record func(cmd, rsp []byte)
}

func (t *tapConn) Send(cmd []byte) ([]byte, error) {
	rsp, err := t.Conn.Send(cmd)
	t.record(append([]byte(nil), cmd...), append([]byte(nil), rsp...))
	return rsp, err
}

// AuthValue is the object auth value derived from secret.
func AuthValue(secret []byte) []byte {
	v, err := objectAuth(Config{Auth: secret})
	if err != nil {
		panic(err)
	}
	return v
}

// FirstRoundHasZero reports whether the first derivation round of secret
// holds a zero byte.
func FirstRoundHasZero(secret []byte) bool {
	h := sha256.Sum256(append([]byte(labelAuth), secret...))
	return bytes.IndexByte(h[:], 0) >= 0
}

// FailCounterStep makes a step of b's key changes ("record", "manifest" or
// "increment") fail with err until called with nil.
func (b *TPM) FailCounterStep(step string, err error) {
	if err == nil {
		b.OnCounterStep(nil)
		return
	}
	b.OnCounterStep(func(s string) error {
		if s == step {
			return err
		}
		return nil
	})
}

// OnCounterStep runs fn at each step of b's key changes; its error fails
// the step (nil fn: none).
func (b *TPM) OnCounterStep(fn func(step string) error) {
	b.lock(context.Background())
	defer b.unlock()
	b.counterFaultHook = fn
}

// Status reports the rollback counter's state as the backend sees it.
func (b *TPM) CounterStatus() (index uint32, nv, mf uint64, settled bool) {
	b.lock(context.Background())
	defer b.unlock()
	return uint32(b.ctr.index), b.ctr.nv, b.ctr.mf, b.ctr.settled()
}

// WithoutCounter returns cfg opening without a rollback counter, as
// keyward did before it had one (state directories to migrate).
func WithoutCounter(cfg Config) Config {
	cfg.test.noCounter = true
	return cfg
}

// SetGrantLimit makes b refuse a new grant id while n grants are stored
// (keys.MaxGrants otherwise), until the test ends.
func (b *TPM) SetGrantLimit(tb testing.TB, n int) {
	set := func(n int) {
		b.lock(context.Background())
		defer b.unlock()
		b.maxGrants = n
	}
	set(n)
	tb.Cleanup(func() { set(0) })
}

// HoldWire makes every command sent once *armed is set wait, after
// signalling entered, until its connection is closed (a hung TPM), and
// Close wait at most closeWait for a command in flight.
func HoldWire(cfg Config, armed *atomic.Bool, entered chan<- struct{}, closeWait time.Duration) Config {
	cfg.test.closeWait = closeWait
	cfg.test.wireTap = func(c Conn) Conn {
		return &holdConn{Conn: c, armed: armed, entered: entered, closed: make(chan struct{})}
	}
	return cfg
}

type holdConn struct {
	Conn
	armed   *atomic.Bool
	entered chan<- struct{}
	closed  chan struct{}
	once    sync.Once
}

func (h *holdConn) Send(cmd []byte) ([]byte, error) {
	if h.armed.Load() {
		select {
		case h.entered <- struct{}{}:
		default:
		}
		<-h.closed
		return nil, errClosed // a transport error, as a real connection's: the backend would reconnect
	}
	return h.Conn.Send(cmd)
}

func (h *holdConn) Close() error {
	h.once.Do(func() { close(h.closed) })
	return h.Conn.Close()
}
