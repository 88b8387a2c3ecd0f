package hsm

import (
	"bytes"
	"errors"
	"testing"

	"github.com/miekg/pkcs11"
)

// TestSingleResult: a single-part call's answer is taken only when the
// module reports success with a length that fits the buffer; any other
// answer clears the buffer (it may hold part of a plaintext). A length of
// 2^63 or more (a negative int once converted) is refused, not sliced.
func TestSingleResult(t *testing.T) {
	const size = 16
	tests := []struct {
		name      string
		rv        uint
		n         int
		retry     bool
		ok        bool
		wantError error
	}{
		{"fits", pkcs11.CKR_OK, 10, false, true, nil},
		{"fills", pkcs11.CKR_OK, size, false, true, nil},
		{"wrote past the buffer", pkcs11.CKR_OK, size + 1, false, false, errOperationActive},
		{"length of 2^63 or more", pkcs11.CKR_OK, -1 << 62, false, false, errOperationActive},
		{"asks for more room", pkcs11.CKR_BUFFER_TOO_SMALL, size + 8, true, false, nil},
		{"asks for too much room", pkcs11.CKR_BUFFER_TOO_SMALL, maxOutput + 1, false, false, errOperationActive},
		{"asks for a negative length", pkcs11.CKR_BUFFER_TOO_SMALL, -5, false, false, errOperationActive},
		{"fails", pkcs11.CKR_DEVICE_ERROR, 0, false, false, pkcs11.Error(pkcs11.CKR_DEVICE_ERROR)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := bytes.Repeat([]byte{0xaa}, size)
			res, retry, err := singleResult(tt.rv, tt.n, out, size)
			if retry != tt.retry || (err == nil) != (tt.wantError == nil) || tt.wantError != nil && !errors.Is(err, tt.wantError) {
				t.Fatalf("retry %v err %v, want retry %v err %v", retry, err, tt.retry, tt.wantError)
			}
			if tt.ok != (res != nil) || tt.ok && len(res) != tt.n {
				t.Fatalf("result %x, want %d bytes: %v", res, tt.n, tt.ok)
			}
			if !tt.ok && tt.rv != pkcs11.CKR_BUFFER_TOO_SMALL && !bytes.Equal(out, make([]byte, size)) {
				t.Fatalf("buffer not cleared: %x", out)
			}
		})
	}
}
