package envelope

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"

	"github.com/keyward/keyward/keys"
)

// Magic starts every wrapped blob.
const Magic = "KW"

// FormatV1 is the only format byte this package reads and writes.
const FormatV1 byte = 0x01

// TagSize is the GCM tag length of every algorithm; the ciphertext of a blob
// is never shorter.
const TagSize = 16

// Alg says how the ciphertext was sealed, and so how long the nonce is.
type Alg byte

const (
	// AlgPKCS11GCM: CKM_AES_GCM inside the token; the 12-byte nonce is the IV,
	// the tag is 16 bytes.
	AlgPKCS11GCM Alg = 1
	// AlgTPMHMACGCM: a per-message key k = HMAC-SHA256(master, "keyward/v1/wrap"
	// || 0x00 || nonce) from one TPM2_HMAC over a 32-byte random nonce, then
	// AES-256-GCM in software with k and a zero 12-byte IV, safe because
	// each k seals one message (docs/envelope.md).
	AlgTPMHMACGCM Alg = 2
)

// NonceSize returns the nonce length of a, or 0 if a is not a known Alg.
func (a Alg) NonceSize() int {
	switch a {
	case AlgPKCS11GCM:
		return 12
	case AlgTPMHMACGCM:
		return 32
	}
	return 0
}

// Offsets of the fixed-position fields, for error messages.
const (
	offFormat  = len(Magic)
	offAlg     = offFormat + 1
	offNameLen = offAlg + 1
	offName    = offNameLen + 1
)

// Header is everything in a blob before the ciphertext.
type Header struct {
	Alg     Alg
	Name    string
	Version uint32
	Nonce   []byte
}

// Validate checks that h can be encoded and would be accepted by Decode: a
// known Alg, a name that passes keys.ValidateName, a version in
// 1..keys.MaxVersion and a nonce of the Alg's length.
func (h Header) Validate() error {
	n := h.Alg.NonceSize()
	if n == 0 {
		return fmt.Errorf("envelope header: algorithm %d: %w", h.Alg, ErrUnknownAlg)
	}
	if keys.ValidateName(h.Name) != nil {
		// keys' message quotes the name; this one does not.
		return fmt.Errorf("envelope header: name of %d bytes: %w", len(h.Name), ErrBadName)
	}
	if h.Version == 0 || h.Version > keys.MaxVersion {
		return fmt.Errorf("envelope header: version %d not in 1..%d: %w", h.Version, keys.MaxVersion, ErrBadVersion)
	}
	if len(h.Nonce) != n {
		return fmt.Errorf("envelope header: nonce of %d bytes, algorithm %d needs %d: %w", len(h.Nonce), h.Alg, n, ErrBadNonce)
	}
	return nil
}

func (h Header) size() int {
	return offName + len(h.Name) + 4 + 1 + len(h.Nonce)
}

// appendTo appends the header bytes of an already validated h to b.
func (h Header) appendTo(b []byte) []byte {
	b = append(b, Magic...)
	b = append(b, FormatV1, byte(h.Alg), byte(len(h.Name)))
	b = append(b, h.Name...)
	b = binary.BigEndian.AppendUint32(b, h.Version)
	b = append(b, byte(len(h.Nonce)))
	return append(b, h.Nonce...)
}

// Marshal returns the header bytes: the blob up to, not including, the
// ciphertext.
func (h Header) Marshal() ([]byte, error) {
	if err := h.Validate(); err != nil {
		return nil, err
	}
	return h.appendTo(make([]byte, 0, h.size())), nil
}

// AAD returns the additional authenticated data for sealing or opening a blob
// with header h under context c: the header bytes followed by
// CanonicalContext(c). It fails if h is invalid or c fails keys.CheckContext.
func (h Header) AAD(c keys.Context) ([]byte, error) {
	if err := h.Validate(); err != nil {
		return nil, err
	}
	if err := keys.CheckContext(c); err != nil {
		return nil, fmt.Errorf("envelope: %w", err)
	}
	return appendContext(h.appendTo(make([]byte, 0, h.size()+contextSize(c))), c), nil
}

// Encode returns the blob for header h and ciphertext (with its tag appended,
// so at least TagSize bytes). The result is at most keys.MaxBlob bytes.
func Encode(h Header, ciphertext []byte) ([]byte, error) {
	if err := h.Validate(); err != nil {
		return nil, err
	}
	if len(ciphertext) < TagSize {
		return nil, fmt.Errorf("envelope: ciphertext of %d bytes, at least %d: %w", len(ciphertext), TagSize, ErrTruncated)
	}
	n := h.size() + len(ciphertext)
	if n > keys.MaxBlob {
		return nil, fmt.Errorf("envelope: blob would be %d bytes, at most %d: %w", n, keys.MaxBlob, ErrTooLarge)
	}
	return append(h.appendTo(make([]byte, 0, n)), ciphertext...), nil
}

// Open decodes a blob that backend alg made and returns its header, its
// ciphertext (see Decode) and the AAD to open it with under context c. A
// blob of another backend's algorithm fails with keys.ErrUnsupported.
func Open(blob []byte, alg Alg, c keys.Context) (Header, []byte, []byte, error) {
	h, ct, err := Decode(blob)
	if err != nil {
		return Header{}, nil, nil, err
	}
	if h.Alg != alg {
		return Header{}, nil, nil, fmt.Errorf("blob algorithm %d belongs to another backend: %w", h.Alg, keys.ErrUnsupported)
	}
	aad, err := h.AAD(c)
	if err != nil {
		return Header{}, nil, nil, err
	}
	return h, ct, aad, nil
}

// Decode parses a blob. It returns the header and the ciphertext with its
// tag. The ciphertext aliases blob (it is its tail); Header.Nonce is a copy.
// Decode accepts exactly the blobs Encode produces: every error wraps one of
// this package's sentinels and keys.ErrMalformed.
func Decode(blob []byte) (Header, []byte, error) {
	var h Header
	if len(blob) > keys.MaxBlob {
		return Header{}, nil, fmt.Errorf("envelope: blob of %d bytes, at most %d: %w", len(blob), keys.MaxBlob, ErrTooLarge)
	}
	n := min(len(blob), len(Magic))
	if !bytes.Equal(blob[:n], []byte(Magic[:n])) {
		return Header{}, nil, fmt.Errorf("envelope: offset 0: not %q: %w", Magic, ErrBadMagic)
	}
	// Each fixed field is checked as soon as it is there, so a short blob
	// with a wrong format or alg says so rather than "truncated".
	if len(blob) > offFormat && blob[offFormat] != FormatV1 {
		return Header{}, nil, fmt.Errorf("envelope: offset %d: format %d: %w", offFormat, blob[offFormat], ErrUnknownFormat)
	}
	if len(blob) > offAlg && Alg(blob[offAlg]).NonceSize() == 0 {
		return Header{}, nil, fmt.Errorf("envelope: offset %d: algorithm %d: %w", offAlg, blob[offAlg], ErrUnknownAlg)
	}
	if len(blob) < offName {
		return Header{}, nil, fmt.Errorf("envelope: blob of %d bytes ends inside the fixed header (%d bytes): %w", len(blob), offName, ErrTruncated)
	}
	h.Alg = Alg(blob[offAlg])
	nonceSize := h.Alg.NonceSize()

	off := offName
	nameLen := int(blob[offNameLen])
	if len(blob)-off < nameLen {
		return Header{}, nil, fmt.Errorf("envelope: offset %d: name of %d bytes runs past the end of a %d-byte blob: %w", off, nameLen, len(blob), ErrTruncated)
	}
	name := blob[off : off+nameLen]
	if keys.ValidateName(string(name)) != nil {
		return Header{}, nil, fmt.Errorf("envelope: offset %d: name of %d bytes: %w", off, nameLen, ErrBadName)
	}
	h.Name = string(name)
	off += nameLen

	if len(blob)-off < 4 {
		return Header{}, nil, fmt.Errorf("envelope: offset %d: version (4 bytes) runs past the end of a %d-byte blob: %w", off, len(blob), ErrTruncated)
	}
	h.Version = binary.BigEndian.Uint32(blob[off:])
	if h.Version == 0 || h.Version > keys.MaxVersion {
		return Header{}, nil, fmt.Errorf("envelope: offset %d: version %d not in 1..%d: %w", off, h.Version, keys.MaxVersion, ErrBadVersion)
	}
	off += 4

	if len(blob)-off < 1 {
		return Header{}, nil, fmt.Errorf("envelope: offset %d: nonce length missing at the end of a %d-byte blob: %w", off, len(blob), ErrTruncated)
	}
	if got := int(blob[off]); got != nonceSize {
		return Header{}, nil, fmt.Errorf("envelope: offset %d: nonce of %d bytes, algorithm %d needs %d: %w", off, got, h.Alg, nonceSize, ErrBadNonce)
	}
	off++
	if len(blob)-off < nonceSize {
		return Header{}, nil, fmt.Errorf("envelope: offset %d: nonce of %d bytes runs past the end of a %d-byte blob: %w", off, nonceSize, len(blob), ErrTruncated)
	}
	h.Nonce = bytes.Clone(blob[off : off+nonceSize])
	off += nonceSize

	if len(blob)-off < TagSize {
		return Header{}, nil, fmt.Errorf("envelope: offset %d: ciphertext of %d bytes, at least %d: %w", off, len(blob)-off, TagSize, ErrTruncated)
	}
	return h, blob[off:len(blob):len(blob)], nil
}

// CanonicalContext encodes c for the AAD: its pairs sorted bytewise by key,
// each as u32 BE len(key) | key | u32 BE len(value) | value. A nil or empty
// context encodes to no bytes. The encoding is injective; it does not check
// c against keys.CheckContext (Header.AAD does).
func CanonicalContext(c keys.Context) []byte {
	if len(c) == 0 {
		return nil
	}
	return appendContext(make([]byte, 0, contextSize(c)), c)
}

func contextSize(c keys.Context) int {
	n := 0
	for k, v := range c {
		n += 8 + len(k) + len(v)
	}
	return n
}

func appendContext(b []byte, c keys.Context) []byte {
	ks := make([]string, 0, len(c))
	for k := range c {
		ks = append(ks, k)
	}
	slices.Sort(ks) // Go compares strings bytewise
	for _, k := range ks {
		v := c[k]
		b = binary.BigEndian.AppendUint32(b, uint32(len(k)))
		b = append(b, k...)
		b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
		b = append(b, v...)
	}
	return b
}

// ContextDigest returns the plain SHA-256 of CanonicalContext(c). Audit
// records no longer carry it (a dictionary of likely values reverses it):
// they carry an HMAC under the audit directory's context key
// (audit.ContextDigest); records written before that carry this.
func ContextDigest(c keys.Context) [32]byte {
	return sha256.Sum256(CanonicalContext(c))
}

// EncodeText returns the text form of a blob: standard base64 with padding.
func EncodeText(blob []byte) string {
	return base64.StdEncoding.EncodeToString(blob)
}

// textSpace is what DecodeText tolerates around the base64.
const textSpace = " \t\r\n"

// DecodeText reverses EncodeText. Surrounding spaces, tabs and newlines are
// ignored; anything else that is not canonical padded standard base64
// (including line breaks inside, or an empty text) fails with ErrBadText, and
// text decoding to more than keys.MaxBlob bytes with ErrTooLarge. The result
// still has to go through Decode.
func DecodeText(s string) ([]byte, error) {
	lead := len(s) - len(strings.TrimLeft(s, textSpace))
	t := strings.Trim(s, textSpace)
	if t == "" {
		return nil, fmt.Errorf("envelope: empty text: %w", ErrBadText)
	}
	if limit := base64.StdEncoding.EncodedLen(keys.MaxBlob); len(t) > limit {
		return nil, fmt.Errorf("envelope: text of %d characters, at most %d: %w", len(t), limit, ErrTooLarge)
	}
	// The decoder skips inner \r and \n; the text form has none.
	if i := strings.IndexAny(t, "\r\n"); i >= 0 {
		return nil, fmt.Errorf("envelope: text offset %d: line break inside the base64: %w", lead+i, ErrBadText)
	}
	b, err := base64.StdEncoding.Strict().DecodeString(t)
	if err != nil {
		if ce, ok := err.(base64.CorruptInputError); ok {
			return nil, fmt.Errorf("envelope: text offset %d: not padded standard base64: %w", lead+int(ce), ErrBadText)
		}
		return nil, fmt.Errorf("envelope: text is not padded standard base64: %w", ErrBadText)
	}
	if len(b) > keys.MaxBlob {
		return nil, fmt.Errorf("envelope: text decodes to %d bytes, at most %d: %w", len(b), keys.MaxBlob, ErrTooLarge)
	}
	return b, nil
}
