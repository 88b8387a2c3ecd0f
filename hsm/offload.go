package hsm

/*
#include <stdlib.h>
#include "p11.h"
*/
import "C"

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/miekg/pkcs11"
	"golang.org/x/sys/unix"
)

// A PKCS#11 call made from Go keeps its goroutine's scheduler slot (P) for
// as long as the module takes to answer: a cgo call counts as running Go
// code until the runtime's monitor notices it has lasted more than one of
// its ticks, and once nothing has needed taking back for a while the
// monitor sleeps 10 ms between ticks, longer than a whole network round
// trip. With GOMAXPROCS calls waiting on the device, every other goroutine
// (the connection readers, the next caller's handler, the audit writer)
// then waits for one of them to finish: on a 2-core machine, 64 callers at
// a 1 ms round trip got 900-4,500 wraps/s and a p50 of 10-70 ms.
//
// So on a device that makes calls wait (pace), the calls of an operation
// (its Init and its single-part call, made as one job) run on worker
// threads started in C
// (offload.c), which the Go runtime does not schedule: the caller hands
// the job over, waits on a channel (giving up its P), and a goroutine
// reading the workers' notification pipe through the runtime's poller
// wakes it. Buffers stay in Go memory, pinned while a worker uses them.

// maxJobs bounds the jobs handed to workers at once, and so the worker
// threads; a call beyond it waits for a job slot.
const maxJobs = 512

// offloader hands jobs to offload.c's workers. Process-wide: the workers
// call whatever functions a job names, of any module.
type offloader struct {
	jobs *[maxJobs]C.struct_offload_job // C memory: the workers read and write it
	done [maxJobs]chan struct{}
	free chan int
}

var (
	offloadOnce sync.Once
	offload     *offloader // nil: workers could not be set up; calls are made from Go
	offloadErr  error      // why not
)

// workers returns the process's offloader, setting it up on first use;
// nil if it cannot be (startWorkers has the error).
func workers() *offloader {
	offloadOnce.Do(func() { offload, offloadErr = newOffloader() })
	return offload
}

// startWorkers sets the offloader up if it is not yet, and returns why it
// cannot be: without it a slow module's calls hold Go's scheduler slots
// while they wait, as described above.
func startWorkers() error {
	workers()
	return offloadErr
}

func newOffloader() (*offloader, error) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return nil, fmt.Errorf("notification pipe: %w", err)
	}
	// The reading end through the runtime's poller; the workers' end
	// blocks (it never fills: at most maxJobs ids are in it).
	if err := unix.SetNonblock(p[0], true); err != nil {
		unix.Close(p[0])
		unix.Close(p[1])
		return nil, fmt.Errorf("notification pipe: %w", err)
	}
	mem := C.calloc(maxJobs, C.size_t(unsafe.Sizeof(C.struct_offload_job{})))
	if mem == nil {
		unix.Close(p[0])
		unix.Close(p[1])
		return nil, fmt.Errorf("job memory: out of memory")
	}
	o := &offloader{jobs: (*[maxJobs]C.struct_offload_job)(mem), free: make(chan int, maxJobs)}
	for i := range maxJobs {
		o.done[i] = make(chan struct{}, 1)
		o.free <- i
	}
	C.offload_start(C.int(p[1]), maxJobs)
	go o.dispatch(os.NewFile(uintptr(p[0]), "pkcs11-workers"))
	return o, nil
}

// dispatch wakes the caller of every job a worker announces finished.
func (o *offloader) dispatch(r *os.File) {
	buf := make([]byte, 8*maxJobs)
	held := 0 // bytes of an id cut by a read (never with whole 8-byte writes)
	for {
		n, err := r.Read(buf[held:])
		if err != nil {
			// The pipe is never closed: a read error is a broken process.
			panic(fmt.Sprintf("pkcs11 worker notifications: %v", err))
		}
		n += held
		for i := 0; i+8 <= n; i += 8 {
			o.done[binary.NativeEndian.Uint64(buf[i:])] <- struct{}{}
		}
		held = n % 8
		copy(buf, buf[n-held:n])
	}
}

// job is one device call as offload.c runs it: Init with the mechanism on
// key, then call (a single-part call writing into out) or verify (C_Verify
// of in against the signature in out).
type job struct {
	init   C.init_fn
	call   C.single_part_fn
	verify C.verify_fn
	sh     C.ck_ulong
	key    C.ck_ulong
	mech   mechanism
	in     []byte
	out    []byte
}

// jobResult is what the worker reported: Init's return value, the call's
// and the output's length.
type jobResult struct {
	initRV, rv C.ck_ulong
	n          int
	took       time.Duration // the device calls' time, on the worker
}

// run hands j to a worker and waits for it. It always waits for the
// worker to finish, even if the caller gives up: the worker uses j's
// buffers and the session until then.
func (o *offloader) run(j *job) jobResult {
	id := <-o.free
	defer func() { o.free <- id }()
	var pin runtime.Pinner
	defer pin.Unpin()
	c := &o.jobs[id]
	*c = C.struct_offload_job{
		init: j.init, call: j.call, verify: j.verify,
		session: j.sh, key: j.key, id: C.ulonglong(id),
	}
	c.in, c.in_len = pinned(&pin, j.in), C.ck_ulong(len(j.in))
	c.out, c.out_len = pinned(&pin, j.out), C.ck_ulong(len(j.out))
	j.mech.fill(c, &pin)
	C.offload_submit(c)
	<-o.done[id]
	j.mech.readBack(c)
	return jobResult{initRV: c.init_rv, rv: c.rv, n: int(c.out_len), took: time.Duration(c.ns)}
}

// workerThreads returns the worker threads started in this process, by
// scheduling policy: SCHED_BATCH, or the default where the policy could not
// be set (offload.c's batch_policy).
func workerThreads() (batch, other int) {
	var b, o C.int
	C.offload_threads(&b, &o)
	return int(b), int(o)
}

// pinned returns b's first byte for a worker, b pinned until pin is
// released. An empty b gets a byte of its own (with length 0): SoftHSM2
// refuses a NULL input even when its length is 0.
func pinned(pin *runtime.Pinner, b []byte) *C.uchar {
	if len(b) == 0 {
		b = make([]byte, 1)
	}
	pin.Pin(&b[0])
	return (*C.uchar)(unsafe.Pointer(&b[0]))
}

// mechanism is the mechanism of a job: its type, and the parameters of
// the two that have any.
type mechanism struct {
	typ     uint
	gcm     *gcmParams
	pssSalt int // CKM_SHA256_RSA_PKCS_PSS: SHA-256, MGF1-SHA-256, this salt
}

type gcmParams struct {
	iv, aad []byte
	tagBits int
	// moved: the module used another IV than iv (it pointed the
	// parameters elsewhere, changed the length or wrote its own IV into
	// the copy it was given), which would make the blob undecryptable.
	moved bool
}

// readBack notes in m's GCM parameters whether the module moved the IV.
func (m mechanism) readBack(c *C.struct_offload_job) {
	if m.gcm == nil {
		return
	}
	g := (*C.struct_ck_gcm_params)(unsafe.Pointer(&c.params))
	m.gcm.moved = int(g.iv_len) != len(m.gcm.iv) || unsafe.Pointer(g.iv) != unsafe.Pointer(&c.iv[0]) ||
		!bytes.Equal(unsafe.Slice((*byte)(unsafe.Pointer(&c.iv[0])), len(m.gcm.iv)), m.gcm.iv) // the length is checked first
}

// fill writes m into the job's C structures, pointing into pinned Go
// memory.
func (m mechanism) fill(c *C.struct_offload_job, pin *runtime.Pinner) {
	c.mech.mechanism = C.ck_ulong(m.typ)
	switch {
	case m.gcm != nil:
		// The IV is copied into the job: a module that chooses its own
		// writes it there (readBack), never into the caller's.
		g := (*C.struct_ck_gcm_params)(unsafe.Pointer(&c.params))
		n := copy(unsafe.Slice((*byte)(unsafe.Pointer(&c.iv[0])), len(c.iv)), m.gcm.iv)
		g.iv, g.iv_len, g.iv_bits = &c.iv[0], C.ck_ulong(n), C.ck_ulong(8*n)
		g.aad, g.aad_len = pinned(pin, m.gcm.aad), C.ck_ulong(len(m.gcm.aad))
		g.tag_bits = C.ck_ulong(m.gcm.tagBits)
		c.mech.parameter = unsafe.Pointer(g)
		c.mech.parameter_len = C.ck_ulong(unsafe.Sizeof(*g))
	case m.pssSalt != 0:
		p := (*C.struct_ck_pss_params)(unsafe.Pointer(&c.params))
		p.hash_alg, p.mgf, p.salt_len = C.ck_ulong(pkcs11.CKM_SHA256), C.ck_ulong(pkcs11.CKG_MGF1_SHA256), C.ck_ulong(m.pssSalt)
		c.mech.parameter = unsafe.Pointer(p)
		c.mech.parameter_len = C.ck_ulong(unsafe.Sizeof(*p))
	}
}

// pace tells whether a module's calls wait long enough on the device to be
// handed to the workers. Handing a call over costs a thread's wake-up and
// the pipe's (10-40 us on a loaded 2-core machine): more than a call to an
// in-process SoftHSM2 takes, a small part of a network round trip.
//
// It judges by the fastest operation of each window of paceWindow: an
// operation's time, measured where its calls run, also holds the waits for
// a CPU or a lock around them, which a busy machine makes long for any
// module, but a network HSM never answers faster than its round trips and
// an in-process module often answers in microseconds. Slow when the
// fastest took longer than slowOperation, fast again when it took less
// than half of that.
type pace struct {
	fastest atomic.Int64 // nanoseconds, of the window so far
	seen    atomic.Uint64
	slow    atomic.Bool
	handed  atomic.Uint64 // operations handed to the workers
}

// paceWindow is how many operations one judgement looks at.
const paceWindow = 16

// slowOperation: when even the fastest of an operation's two calls
// together take longer than this, they are handed to the workers (a
// network HSM's round trips are 0.3-2 ms each; SoftHSM2's HMAC and AES-GCM
// take 15-30 us, its ECDSA signature 60).
const slowOperation = 200 * time.Microsecond

// observe adds one operation's device time. Concurrent observers may make
// a window a little longer or shorter; a judgement needs no more.
func (p *pace) observe(d time.Duration, handed bool) {
	if handed {
		p.handed.Add(1)
	}
	if p.seen.Add(1) == 1 {
		p.fastest.Store(int64(d))
	}
	for f := p.fastest.Load(); int64(d) < f && !p.fastest.CompareAndSwap(f, int64(d)); f = p.fastest.Load() {
	}
	if p.seen.Load() < paceWindow {
		return
	}
	f := time.Duration(p.fastest.Load())
	p.seen.Store(0)
	switch {
	case f > slowOperation:
		p.slow.Store(true)
	case f < slowOperation/2:
		p.slow.Store(false)
	}
}
