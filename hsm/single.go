package hsm

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stddef.h>
#include <stdlib.h>

typedef unsigned long ck_ulong;
typedef ck_ulong (*single_part_fn)(ck_ulong session, unsigned char *in, ck_ulong in_len,
				   unsigned char *out, ck_ulong *out_len);

// The head of CK_FUNCTION_LIST, whose layout PKCS#11 has kept since v2.01:
// the version, then the functions in the standard's order. Only the
// single-part calls keyward makes itself are named.
struct function_list_head {
	unsigned char version[2];
	void *initialize_to_encrypt_init[30];     // C_Initialize .. C_EncryptInit
	single_part_fn encrypt;                   // C_Encrypt
	void *encrypt_update_to_decrypt_init[3];  // C_EncryptUpdate .. C_DecryptInit
	single_part_fn decrypt;                   // C_Decrypt
	void *decrypt_update_to_sign_init[8];     // C_DecryptUpdate .. C_SignInit
	single_part_fn sign;                      // C_Sign
};

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

static single_part_fn encrypt_fn(struct function_list_head *l) { return l->encrypt; }
static single_part_fn decrypt_fn(struct function_list_head *l) { return l->decrypt; }
static single_part_fn sign_fn(struct function_list_head *l) { return l->sign; }

static ck_ulong call_single(single_part_fn f, ck_ulong session, unsigned char *in, ck_ulong in_len,
			    unsigned char *out, ck_ulong *out_len) {
	return f(session, in, in_len, out, out_len);
}
*/
import "C"

import (
	"errors"
	"fmt"
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

// functions are the single-part calls of one loaded module.
type functions struct{ encrypt, decrypt, sign singlePart }

// loadFunctions finds the single-part calls of the module at path through
// the binding's context p, or returns nil when it cannot (the binding's
// calls are then used). The list is valid until the binding unloads the
// module (module.finalizeLocked).
func loadFunctions(p *pkcs11.Ctx, path string) *functions {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	// pkcs11.Ctx is struct{ ctx *C.struct_ctx }.
	l := C.binding_list(*(*unsafe.Pointer)(unsafe.Pointer(p)), cpath)
	if l == nil {
		return nil
	}
	f := &functions{singlePart{C.encrypt_fn(l)}, singlePart{C.decrypt_fn(l)}, singlePart{C.sign_fn(l)}}
	if f.encrypt.fn == nil || f.decrypt.fn == nil || f.sign.fn == nil {
		return nil
	}
	return f
}

// encrypt, decrypt and sign finish the operation the session's Init
// started on in, with an output of size bytes: one call when the module's
// functions are at hand, else the binding's two.
func (s *sess) encrypt(in []byte, size int) ([]byte, error) {
	if f := s.st.fns; f != nil {
		return f.encrypt.call(s.sh, in, size)
	}
	return s.p.Encrypt(s.sh, in)
}

func (s *sess) decrypt(in []byte, size int) ([]byte, error) {
	if f := s.st.fns; f != nil {
		return f.decrypt.call(s.sh, in, size)
	}
	return s.p.Decrypt(s.sh, in)
}

func (s *sess) sign(in []byte, size int) ([]byte, error) {
	if f := s.st.fns; f != nil {
		return f.sign.call(s.sh, in, size)
	}
	return s.p.Sign(s.sh, in)
}

// call runs the operation the session's Init started on in, into a buffer
// of size bytes, and returns the output. A module that needs more room says
// CKR_BUFFER_TOO_SMALL with the length it needs and keeps the operation
// active (PKCS#11 5.2): the call is then made once more with that length.
func (f singlePart) call(sh pkcs11.SessionHandle, in []byte, size int) ([]byte, error) {
	for range 2 {
		out := make([]byte, max(size, 1))
		n := C.ck_ulong(size)
		rv := C.call_single(f.fn, C.ck_ulong(sh), bytePtr(in), C.ck_ulong(len(in)), bytePtr(out), &n)
		switch {
		case rv == C.ck_ulong(pkcs11.CKR_BUFFER_TOO_SMALL) && int(n) > size && n <= maxOutput:
			size = int(n)
			continue
		case rv == C.ck_ulong(pkcs11.CKR_BUFFER_TOO_SMALL):
			return nil, fmt.Errorf("module asked for a %d-byte output buffer: %w", n, errOperationActive)
		case rv != 0:
			clear(out) // a module may have written part of a plaintext before failing
			return nil, pkcs11.Error(rv)
		case int(n) > len(out):
			// Reported, not prevented: a module that wrote past the buffer
			// has already done so.
			clear(out)
			return nil, fmt.Errorf("module wrote %d bytes into a %d-byte buffer: %w", n, len(out), errOperationActive)
		}
		return out[:n], nil
	}
	return nil, fmt.Errorf("module asked twice for a larger output buffer: %w", errOperationActive)
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
