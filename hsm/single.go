package hsm

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stddef.h>
#include <stdlib.h>

#include "p11.h"

// binding_list returns the function list the binding (miekg/pkcs11) called
// C_Initialize through, read from its context, struct ctx { void *handle;
// CK_FUNCTION_LIST_PTR sym; }, or NULL if the context does not hold path's
// handle where that layout puts it. The binding's own list, not a second
// C_GetFunctionList: p11-kit's client module gives every caller a list of
// its own, not initialised.
static struct function_list_head *binding_list(void *binding_ctx, const char *path) {
	void **c = (void **)binding_ctx;
	void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
	if (h == NULL)
		return NULL;
	dlclose(h); // the binding's own handle keeps the module loaded
	if (c == NULL || c[0] != h)
		return NULL;
	return (struct function_list_head *)c[1];
}

// binding_without_list: the binding's context holds path's handle but no
// function list (the module's C_GetFunctionList failed, which the binding
// does not check: its C_Initialize would then call through NULL).
static int binding_without_list(void *binding_ctx, const char *path) {
	void **c = (void **)binding_ctx;
	void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
	if (h == NULL)
		return 0;
	dlclose(h);
	return c != NULL && c[0] == h && c[1] == NULL;
}

static ck_ulong call_single(single_part_fn f, ck_ulong session, unsigned char *in, ck_ulong in_len,
			    unsigned char *out, ck_ulong *out_len) {
	return f(session, in, in_len, out, out_len);
}
*/
import "C"

import (
	"bytes"
	"errors"
	"fmt"
	"time"
	"unsafe"

	"github.com/miekg/pkcs11"
)

// The binding's single-part calls (Encrypt, Decrypt, Sign) ask the module
// for the output's length first: a second round trip on a network HSM.
// keyward knows the length of every output it asks for, so it makes these
// calls itself, through the function list the binding initialised the
// module with, into a buffer of that size: Init (through the binding) and
// one call.

// singlePart is one of the module's C_Encrypt, C_Decrypt or C_Sign.
type singlePart struct{ fn C.single_part_fn }

// functions are the calls keyward makes itself on one loaded module: the
// Inits and single-part calls of its data operations.
type functions struct {
	encrypt, decrypt, sign                         singlePart
	encryptInit, decryptInit, signInit, verifyInit C.init_fn
	verify                                         C.verify_fn
	pace                                           pace // of the module's device calls (offload.go)
}

// loadFunctions finds those calls of the module at path through the
// binding's context p, or returns nil when it cannot (the binding's calls
// are then used). The list is valid until the binding unloads the module
// (module.finalizeLocked).
func loadFunctions(p *pkcs11.Ctx, path string) *functions {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	// pkcs11.Ctx is struct{ ctx *C.struct_ctx }.
	l := C.binding_list(*(*unsafe.Pointer)(unsafe.Pointer(p)), cpath)
	if l == nil {
		return nil
	}
	f := &functions{
		encrypt: singlePart{l.encrypt}, decrypt: singlePart{l.decrypt}, sign: singlePart{l.sign},
		encryptInit: l.encrypt_init, decryptInit: l.decrypt_init, signInit: l.sign_init,
		verifyInit: l.verify_init, verify: l.verify,
	}
	if f.encrypt.fn == nil || f.decrypt.fn == nil || f.sign.fn == nil || f.encryptInit == nil ||
		f.decryptInit == nil || f.signInit == nil || f.verifyInit == nil || f.verify == nil {
		return nil
	}
	return f
}

// noFunctionList reports whether the binding loaded the module at path
// without a function list: its C_GetFunctionList failed.
func noFunctionList(p *pkcs11.Ctx, path string) bool {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	return C.binding_without_list(*(*unsafe.Pointer)(unsafe.Pointer(p)), cpath) != 0
}

// The data operations: Init with m on key h, then the single-part call on
// in, whose output is size bytes. When the module's functions are at hand
// both run as one job on a worker thread (offload.go), else through the
// binding, which asks for the output's length first.

func (s *sess) encrypt(m mechanism, h pkcs11.ObjectHandle, in []byte, size int) ([]byte, error) {
	f := s.st.fns
	if f.offload() {
		return s.offloaded(&job{init: f.encryptInit, call: f.encrypt.fn, mech: m}, f, f.encrypt, h, in, size)
	}
	mech, gp := m.binding()
	defer m.release(gp)
	defer f.since(time.Now())
	if err := s.p.EncryptInit(s.sh, mech, h); err != nil {
		return nil, initError{err}
	}
	if f != nil {
		return f.encrypt.call(s.sh, in, size, 2)
	}
	return s.p.Encrypt(s.sh, in)
}

func (s *sess) decrypt(m mechanism, h pkcs11.ObjectHandle, in []byte, size int) ([]byte, error) {
	f := s.st.fns
	if f.offload() {
		return s.offloaded(&job{init: f.decryptInit, call: f.decrypt.fn, mech: m}, f, f.decrypt, h, in, size)
	}
	mech, gp := m.binding()
	defer gp.Free() // decrypting, the module's IV is the blob's: nothing to check
	defer f.since(time.Now())
	if err := s.p.DecryptInit(s.sh, mech, h); err != nil {
		return nil, initError{err}
	}
	if f != nil {
		return f.decrypt.call(s.sh, in, size, 2)
	}
	return s.p.Decrypt(s.sh, in)
}

func (s *sess) sign(m mechanism, h pkcs11.ObjectHandle, in []byte, size int) ([]byte, error) {
	f := s.st.fns
	if f.offload() {
		return s.offloaded(&job{init: f.signInit, call: f.sign.fn, mech: m}, f, f.sign, h, in, size)
	}
	mech, gp := m.binding()
	defer m.release(gp)
	defer f.since(time.Now())
	if err := s.p.SignInit(s.sh, mech, h); err != nil {
		return nil, initError{err}
	}
	if f != nil {
		return f.sign.call(s.sh, in, size, 2)
	}
	return s.p.Sign(s.sh, in)
}

// verify checks sig over in: VerifyInit with m on h, then C_Verify.
func (s *sess) verify(m mechanism, h pkcs11.ObjectHandle, in, sig []byte) error {
	if f := s.st.fns; f.offload() {
		r := workers().run(&job{init: f.verifyInit, verify: f.verify, mech: m, sh: C.ck_ulong(s.sh), key: C.ck_ulong(h), in: in, out: sig})
		f.pace.observe(r.took, true)
		if r.initRV != 0 {
			return initError{pkcs11.Error(r.initRV)}
		}
		if r.rv != 0 {
			return pkcs11.Error(r.rv)
		}
		return nil
	}
	mech, gp := m.binding()
	defer m.release(gp)
	defer s.st.fns.since(time.Now())
	if err := s.p.VerifyInit(s.sh, mech, h); err != nil {
		return initError{err}
	}
	return s.p.Verify(s.sh, in, sig)
}

// offloaded runs j (Init and the single-part call f) on a worker with an
// output of size bytes. A module that asks for more room leaves the
// operation active: the call is then made again from here (call).
func (s *sess) offloaded(j *job, fns *functions, f singlePart, h pkcs11.ObjectHandle, in []byte, size int) ([]byte, error) {
	j.sh, j.key, j.in, j.out = C.ck_ulong(s.sh), C.ck_ulong(h), in, make([]byte, max(size, 1))
	r := workers().run(j)
	fns.pace.observe(r.took, true)
	if r.initRV != 0 {
		return nil, initError{pkcs11.Error(r.initRV)}
	}
	out, retry, err := singleResult(uint(r.rv), r.n, j.out, size)
	if retry { // the module's one more ask is the call made from here
		return f.call(s.sh, in, r.n, 1)
	}
	return out, err
}

// initError is the error of an operation's Init call: a failure of the
// key, session or device, never a verdict on the data (authFailure), with
// the module's error inside for recoverable.
type initError struct{ err error }

func (e initError) Error() string { return e.err.Error() }
func (e initError) Unwrap() error { return e.err }

// offload: f's module is slow enough for the worker threads, and they run.
func (f *functions) offload() bool {
	return f != nil && f.pace.slow.Load() && workers() != nil
}

// since adds the time since start, an operation made from Go, to f's
// pace. Without f (the binding's calls only) nothing is measured.
func (f *functions) since(start time.Time) {
	if f != nil {
		f.pace.observe(time.Since(start), false)
	}
}

// binding is m as the binding takes it, and the binding's GCM parameters
// (nil for other mechanisms) for release.
func (m mechanism) binding() ([]*pkcs11.Mechanism, *pkcs11.GCMParams) {
	switch {
	case m.gcm != nil:
		p := pkcs11.NewGCMParams(m.gcm.iv, m.gcm.aad, m.gcm.tagBits)
		return []*pkcs11.Mechanism{pkcs11.NewMechanism(m.typ, p)}, p
	case m.pssSalt != 0:
		p := pkcs11.NewPSSParams(pkcs11.CKM_SHA256, pkcs11.CKG_MGF1_SHA256, uint(m.pssSalt))
		return []*pkcs11.Mechanism{pkcs11.NewMechanism(m.typ, p)}, nil
	}
	return []*pkcs11.Mechanism{pkcs11.NewMechanism(m.typ, nil)}, nil
}

// release frees the binding's copy of GCM parameters, first noting whether
// the module used another IV than m's (gcmParams.moved).
func (m mechanism) release(p *pkcs11.GCMParams) {
	if p == nil {
		return
	}
	if iv := p.IV(); iv != nil && !bytes.Equal(iv, m.gcm.iv) {
		m.gcm.moved = true
	}
	p.Free()
}

// call runs the operation the session's Init started on in, into a buffer
// of size bytes, and returns the output, in at most tries calls. A module
// that needs more room says CKR_BUFFER_TOO_SMALL with the length it needs
// and keeps the operation active (PKCS#11 5.2): the call is then made once
// more with that length, if tries allow (an operation makes at most 2).
func (f singlePart) call(sh pkcs11.SessionHandle, in []byte, size, tries int) ([]byte, error) {
	for range tries {
		out := make([]byte, max(size, 1))
		n := C.ck_ulong(size)
		rv := C.call_single(f.fn, C.ck_ulong(sh), bytePtr(in), C.ck_ulong(len(in)), bytePtr(out), &n)
		res, retry, err := singleResult(uint(rv), int(n), out, size) // out cleared on failure
		if !retry {
			return res, err
		}
		size = int(n)
	}
	return nil, fmt.Errorf("module asked twice for a larger output buffer: %w", errOperationActive)
}

// singleResult checks a single-part call's return value rv and output
// length n in out, a buffer of size bytes. retry: the module asked for n
// bytes and keeps the operation active for a call with that much room.
func singleResult(rv uint, n int, out []byte, size int) (res []byte, retry bool, err error) {
	if rv != 0 {
		clear(out) // a module may have written part of a plaintext before failing
	}
	switch {
	case rv == pkcs11.CKR_BUFFER_TOO_SMALL && n > size && n <= maxOutput:
		return nil, true, nil
	case rv == pkcs11.CKR_BUFFER_TOO_SMALL:
		return nil, false, fmt.Errorf("module asked for a %d-byte output buffer: %w", n, errOperationActive)
	case rv != 0:
		return nil, false, pkcs11.Error(rv)
	case n < 0 || n > len(out): // n < 0: a length of 2^63 or more, made an int
		// Reported, not prevented: a module that wrote past the buffer
		// has already done so.
		clear(out)
		return nil, false, fmt.Errorf("module wrote %d bytes into a %d-byte buffer: %w", n, len(out), errOperationActive)
	}
	return out[:n], false, nil
}

// errOperationActive: a single-part call ended without ending its
// operation (CKR_BUFFER_TOO_SMALL leaves it active, PKCS#11 5.2), so the
// session is not lent again (sessionBroken): the next Init on it would
// fail with CKR_OPERATION_ACTIVE, for another caller.
var errOperationActive = errors.New("the operation is still active on its session")

// maxOutput bounds the length a module may ask for: keyward's largest
// output is a ciphertext of a maximal message plus a tag.
const maxOutput = 64 << 20

// bytePtr is b's first byte for C. An empty b still gets a pointer (to a
// byte of its own, with length 0): SoftHSM2 refuses a NULL input with
// CKR_ARGUMENTS_BAD even when its length is 0.
func bytePtr(b []byte) *C.uchar {
	if len(b) == 0 {
		b = make([]byte, 1)
	}
	return (*C.uchar)(unsafe.Pointer(&b[0]))
}
