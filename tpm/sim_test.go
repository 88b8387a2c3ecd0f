//go:build tpmsim

package tpm

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/tpm2"
)

func TestDialSim(t *testing.T) {
	c, err := Dial("sim")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	getRandom(t, c)
	// The simulator is started already, as swtpm is with startup-clear.
	if _, err := (tpm2.Startup{StartupType: tpm2.TPMSUClear}).Execute(c); !errors.Is(err, tpm2.TPMRCInitialize) {
		t.Fatalf("Startup = %v, want TPM_RC_INITIALIZE", err)
	}

	// One simulator per process: a second Dial fails, without waiting for
	// the first to be closed (the bound only ends a hang).
	dialed := make(chan error, 1)
	go func() {
		c2, err := Dial("sim")
		if c2 != nil {
			c2.Close()
		}
		dialed <- err
	}()
	select {
	case err := <-dialed:
		if !errors.Is(err, ErrTransport) {
			t.Fatalf("second Dial(sim) = %v, want ErrTransport", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("second Dial(sim) waits for the first to be closed")
	}

	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Send(testCommand); !errors.Is(err, ErrTransport) {
		t.Fatalf("Send after Close = %v, want ErrTransport", err)
	}
	c2, err := Dial("sim") // free again
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	getRandom(t, c2)
}

// "sim:N" derives the seeds from N: the same N gives the same primary key
// in every run, another N another key.
func TestDialSimSeed(t *testing.T) {
	srk := func(device string) []byte {
		t.Helper()
		c, err := Dial(device)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		rsp, err := (tpm2.CreatePrimary{
			PrimaryHandle: tpm2.TPMRHOwner,
			InPublic:      tpm2.New2B(tpm2.ECCSRKTemplate),
		}).Execute(c)
		if err != nil {
			t.Fatalf("%s: CreatePrimary: %v", device, err)
		}
		return rsp.OutPublic.Bytes()
	}
	a, b, other := srk("sim:42"), srk("sim:42"), srk("sim:18446744073709551615")
	if !bytes.Equal(a, b) {
		t.Fatal("sim:42 twice gave two primary keys")
	}
	if bytes.Equal(a, other) {
		t.Fatal("two seeds gave the same primary key")
	}
	if bytes.Equal(srk("sim"), srk("sim")) {
		t.Fatal("sim without a seed repeated a primary key")
	}
}

// Other code holding go-tpm-tools' simulator makes Dial fail after a wait
// rather than hang; once it lets go, Dial works again.
func TestDialSimHeldElsewhere(t *testing.T) {
	saved := simGetTimeout
	simGetTimeout = 100 * time.Millisecond
	defer func() { simGetTimeout = saved }()

	held, err := simulator.Get()
	if err != nil {
		t.Fatal(err)
	}
	if c, err := Dial("sim"); !errors.Is(err, ErrTransport) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("Dial(sim) while held = %v, want ErrTransport", err)
	}
	if err := held.Close(); err != nil {
		t.Fatal(err)
	}
	// The abandoned Get gets the simulator, closes it and frees Dial.
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := Dial("sim")
		if err == nil {
			getRandom(t, c)
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Dial(sim) after release: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
