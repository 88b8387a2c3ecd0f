//go:build tpmsim

package tpm

import (
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-tpm-tools/simulator"

	"github.com/keyward/keyward/internal/devspec"
)

func init() {
	simDial = dialSim
	devspec.SetSimulator()
}

// go-tpm-tools runs one simulator per process, and its Get blocks until the
// holder closes it. simOpen makes a second Dial("sim") from this package fail
// at once instead; simGetTimeout bounds the wait when other code in the
// process (go-tpm's simulator transport, say) holds it.
var (
	simOpen       atomic.Bool
	simGetTimeout = 5 * time.Second
)

// dialSim starts the Microsoft reference simulator: a fresh TPM (new seeds)
// per Dial, or with fixed the seeds derived from seed, so that key blobs
// made by one process load in the next. Insecure by design: tests only.
func dialSim(seed uint64, fixed bool) (Conn, error) {
	if !simOpen.CompareAndSwap(false, true) {
		return nil, fmt.Errorf("%w: the in-process simulator is already open (one per process: close the other Conn first)", ErrTransport)
	}
	type result struct {
		s   *simulator.Simulator
		err error
	}
	got := make(chan result, 1)
	go func() {
		var r result
		if fixed {
			r.s, r.err = simulator.GetWithFixedSeedInsecure(int64(seed))
		} else {
			r.s, r.err = simulator.Get()
		}
		got <- r
	}()
	select {
	case r := <-got:
		if r.err != nil {
			simOpen.Store(false)
			return nil, fmt.Errorf("%w: start simulator: %w", ErrTransport, r.err)
		}
		return newRetryConn(&simConn{s: r.s}), nil
	case <-time.After(simGetTimeout):
		go func() {
			if r := <-got; r.err == nil {
				r.s.Close()
			}
			simOpen.Store(false)
		}()
		return nil, fmt.Errorf("%w: the in-process simulator is held by other code in this process", ErrTransport)
	}
}

type simConn struct {
	mu sync.Mutex // the simulator is C with global state: Send and Close never overlap
	s  *simulator.Simulator
}

func (c *simConn) Send(cmd []byte) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.s == nil {
		return nil, errClosed
	}
	if _, err := c.s.Write(cmd); err != nil {
		return nil, fmt.Errorf("%w: simulator: %w", ErrTransport, err)
	}
	resp, err := io.ReadAll(c.s)
	if err != nil {
		return nil, fmt.Errorf("%w: simulator: %w", ErrTransport, err)
	}
	return resp, nil
}

func (c *simConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.s == nil {
		return nil
	}
	err := c.s.Close()
	c.s = nil
	simOpen.Store(false)
	if err != nil {
		return fmt.Errorf("tpm: close simulator: %w", err)
	}
	return nil
}
