// Package envelope encodes and decodes keyward's wrapped blob (envelope v1):
//
//	"KW" | 0x01 | alg | len(name) | name | version (u32 BE) | len(nonce) | nonce | ciphertext+tag
//
// It holds no keys and does no cryptography; backends seal with the AAD from
// Header.AAD (every header byte followed by CanonicalContext of the caller's
// context), so the name, version, nonce and context are all authenticated.
//
// Promises:
//   - Decode treats its input as hostile: it checks the size (keys.MaxBlob)
//     before anything else, never panics, and refuses anything that Encode
//     would not produce, so Encode(Decode(b)) == b for every accepted b;
//   - each way a blob can be malformed has its own sentinel error, and every
//     one of them also matches keys.ErrMalformed under errors.Is;
//   - error strings name the field and offset at fault, never blob bytes or an
//     invalid key name;
//   - CanonicalContext is injective: distinct contexts never encode alike, and
//     the order in which a map was filled does not matter.
package envelope
