package tpm

import (
	"bytes"
	"context"
	"crypto/sha256"
)

// Templates for tests outside the package (raw baselines, outside checks).
var (
	KeyedHashTemplate = keyedHashTemplate
	ECCTemplate       = eccTemplate
)

// TapWire records every command and response of connections opened while
// set (nil stops it).
func TapWire(record func(cmd, rsp []byte)) {
	if record == nil {
		wireTap = nil
		return
	}
	wireTap = func(c Conn) Conn { return &tapConn{Conn: c, record: record} }
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

// FailCounterStep makes a step of key changes ("record", "manifest" or
// "increment") fail with err until called with nil.
func FailCounterStep(step string, err error) {
	if err == nil {
		counterFaultHook = nil
		return
	}
	OnCounterStep(func(s string) error {
		if s == step {
			return err
		}
		return nil
	})
}

// OnCounterStep runs fn at each step of key changes; its error fails the
// step (nil fn: none).
func OnCounterStep(fn func(step string) error) { counterFaultHook = fn }

// Status reports the rollback counter's state as the backend sees it.
func (b *TPM) CounterStatus() (index uint32, nv, mf uint64, settled bool) {
	b.lock(context.Background())
	defer b.unlock()
	return uint32(b.ctr.index), b.ctr.nv, b.ctr.mf, b.ctr.settled()
}

// WithoutCounter opens backends without a rollback counter until undone, as
// keyward did before it had one (state directories to migrate).
func WithoutCounter(on bool) { testNoCounter = on }
