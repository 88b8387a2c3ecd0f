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

// function_list returns the function list of a module this process has
// already loaded (RTLD_NOLOAD: never a second copy), or NULL.
static struct function_list_head *function_list(const char *path) {
	struct function_list_head *list = NULL;
	ck_ulong (*get)(struct function_list_head **);
	void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
	if (h == NULL)
		return NULL;
	get = (ck_ulong (*)(struct function_list_head **)) dlsym(h, "C_GetFunctionList");
	if (get == NULL || get(&list) != 0)
		list = NULL;
	dlclose(h); // the handle the binding opened keeps the module loaded
	return list;
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
	"fmt"
	"unsafe"

	"github.com/miekg/pkcs11"
)

// The binding's single-part calls (Encrypt, Decrypt, Sign) ask the module
// for the output's length first: a second round trip on a network HSM.
// keyward knows the length of every output it asks for, so it makes these
// calls itself, through the module's own function list, into a buffer of
// that size: Init (through the binding) and one call.

// singlePart is one of the module's C_Encrypt, C_Decrypt or C_Sign.
type singlePart struct{ fn C.single_part_fn }

// functions are the single-part calls of one loaded module.
type functions struct{ encrypt, decrypt, sign singlePart }

// loadFunctions finds the single-part calls of the module at path, which
// the binding has loaded. The list is valid until the binding unloads it
// (module.finalizeLocked).
func loadFunctions(path string) (*functions, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	l := C.function_list(cpath)
	if l == nil {
		return nil, fmt.Errorf("C_GetFunctionList of %s: %w", path, ErrModule)
	}
	f := &functions{singlePart{C.encrypt_fn(l)}, singlePart{C.decrypt_fn(l)}, singlePart{C.sign_fn(l)}}
	if f.encrypt.fn == nil || f.decrypt.fn == nil || f.sign.fn == nil {
		return nil, fmt.Errorf("%s lacks C_Encrypt, C_Decrypt or C_Sign: %w", path, ErrModule)
	}
	return f, nil
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
		case rv != 0:
			return nil, pkcs11.Error(rv)
		case int(n) > len(out):
			return nil, fmt.Errorf("module wrote %d bytes into a %d-byte buffer", n, len(out))
		}
		return out[:n], nil
	}
	return nil, fmt.Errorf("module asked twice for a larger output buffer: %w", pkcs11.Error(pkcs11.CKR_BUFFER_TOO_SMALL))
}

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
