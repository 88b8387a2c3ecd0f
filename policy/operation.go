package policy

import (
	"fmt"
	"slices"
	"strings"
)

// Operation is something a caller asks the daemon to do with a key. The set is
// closed; rules name operations exactly, without wildcards.
type Operation string

// Data operations: using a key.
const (
	OpWrap      Operation = "wrap"
	OpUnwrap    Operation = "unwrap"
	OpRewrap    Operation = "rewrap"
	OpDataKey   Operation = "datakey"
	OpSign      Operation = "sign"
	OpVerify    Operation = "verify"
	OpMAC       Operation = "mac"
	OpVerifyMAC Operation = "verify-mac"
	OpPublicKey Operation = "public-key"
	// OpKMSEncrypt and OpKMSDecrypt are the Kubernetes KMS v2 endpoint's
	// Encrypt and Decrypt (kms_socket): data operations on kms_key, never
	// implied by any other operation. They carry no context: the endpoint
	// binds its blobs to a fixed one.
	OpKMSEncrypt Operation = "kms.encrypt"
	OpKMSDecrypt Operation = "kms.decrypt"
)

// Admin operations: managing a key. None of them implies any data operation.
const (
	OpKeyCreate  Operation = "key.create"
	OpKeyRotate  Operation = "key.rotate"
	OpKeyDisable Operation = "key.disable"
	OpKeyEnable  Operation = "key.enable"
	OpKeyDestroy Operation = "key.destroy"
	OpKeyRead    Operation = "key.read" // list and describe
	OpKeySetMin  Operation = "key.set-min-version"
	OpKeyAdopt   Operation = "key.adopt"
	// OpKeySetRotation sets or stops a key's scheduled rotation.
	OpKeySetRotation Operation = "key.set-rotation"
	// OpKeySetDisableAfter sets or stops the scheduled disabling of a
	// key's superseded versions.
	OpKeySetDisableAfter Operation = "key.set-disable-after"
)

// Credential operations (systemd's LoadCredential=). OpCredential is a data
// operation: keywardd unwraps a stored credential for the unit a rule names,
// with the context {unit, credential}. OpCredentialPut is an admin one:
// writing, listing, removing and rewrapping stored credentials.
const (
	OpCredential    Operation = "credential"
	OpCredentialPut Operation = "credential.put"
)

// DataOperations and AdminOperations list every operation in a stable order.
// They are for display and iteration; changing them changes nothing in the
// package, which keeps its own copy.
var (
	DataOperations  = []Operation{OpWrap, OpUnwrap, OpRewrap, OpDataKey, OpSign, OpVerify, OpMAC, OpVerifyMAC, OpPublicKey, OpKMSEncrypt, OpKMSDecrypt, OpCredential}
	AdminOperations = []Operation{OpKeyCreate, OpKeyRotate, OpKeyDisable, OpKeyEnable, OpKeyDestroy, OpKeyRead, OpKeySetMin, OpKeyAdopt,
		OpKeySetRotation, OpKeySetDisableAfter, OpCredentialPut}
)

// allOps is the package's own order: an operation's index is its bit in an
// opSet.
var allOps = [...]Operation{
	OpWrap, OpUnwrap, OpRewrap, OpDataKey, OpSign, OpVerify, OpMAC, OpVerifyMAC, OpPublicKey,
	OpKeyCreate, OpKeyRotate, OpKeyDisable, OpKeyEnable, OpKeyDestroy, OpKeyRead, OpKeySetMin, OpKeyAdopt, OpKeySetRotation,
	OpKeySetDisableAfter,
	OpKMSEncrypt, OpKMSDecrypt,
	OpCredential, OpCredentialPut,
}

type opSet uint32

func opIndex(o Operation) (int, bool) {
	for i, a := range allOps {
		if a == o {
			return i, true
		}
	}
	return 0, false
}

// ParseOperation returns the Operation named exactly s, or an error wrapping
// ErrUnknownOperation.
func ParseOperation(s string) (Operation, error) {
	if i, ok := opIndex(Operation(s)); ok {
		return allOps[i], nil
	}
	if strings.ContainsAny(s, "*?") {
		return "", fmt.Errorf("operation %s: there are no wildcards, list each operation: %w", quote(s), ErrUnknownOperation)
	}
	return "", fmt.Errorf("operation %s (want one of %s): %w", quote(s), joinOps(allOps[:], ", "), ErrUnknownOperation)
}

// CarriesContext reports whether requests for o carry the caller's context
// to the policy: wrap, unwrap, rewrap and datakey bind a blob to it. Every
// other operation is decided with no context at all, so a rule with context
// pairs can never grant it, and Compile refuses such a rule.
func (o Operation) CarriesContext() bool {
	switch o {
	case OpWrap, OpUnwrap, OpRewrap, OpDataKey, OpCredential:
		return true
	}
	return false
}

// Admin reports whether o manages keys rather than uses them.
func (o Operation) Admin() bool { return slices.Contains(AdminOperations, o) }

func (s opSet) has(i int) bool { return s&(1<<uint(i)) != 0 }

// list returns the operations in s in allOps order.
func (s opSet) list() []Operation {
	var out []Operation
	for i, o := range allOps {
		if s.has(i) {
			out = append(out, o)
		}
	}
	return out
}

func joinOps(ops []Operation, sep string) string {
	var b strings.Builder
	for i, o := range ops {
		if i > 0 {
			b.WriteString(sep)
		}
		b.WriteString(string(o))
	}
	return b.String()
}
