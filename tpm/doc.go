// Package tpm is keyward's TPM 2.0 backend (backend.kind = "tpm"): the
// kernel's resource manager /dev/tpmrm0, swtpm (tests, development) or, in
// builds with the tpmsim tag, the in-process reference simulator.
//
// What it promises:
//   - Every key version is a TPM object generated inside the TPM
//     (fixedtpm, fixedparent, sensitivedataorigin, noda) whose private part
//     leaves the TPM only encrypted under the parent key: the blobs in the
//     state directory load on this TPM, under this parent, and nowhere else.
//   - The parent's public area is pinned at the first start; another TPM, a
//     cleared owner hierarchy or another parent is refused
//     (ErrParentMismatch).
//   - Each key's record is MAC'd by a TPM-held keyring key, and an NV
//     counter in the TPM stamps every key change (record, manifest.json,
//     counter: rollback.go), so an edited record or an older copy of the
//     state directory is refused (keys.ErrIntegrity, ErrRollback).
//   - Every authorised command runs in an HMAC session salted with the
//     parent key, with parameter encryption where it carries secrets (HMAC
//     inputs and results, new auth values, random bytes for data keys), so
//     a watcher of the bus sees none of them in clear.
//   - All TPM access is serialised by one slot per TPM value, taken in turns
//     between callers (fair.go: keys.WithCaller names them); any transport
//     error or vanished handle resets the connection, sessions and loaded
//     objects, and idempotent work is retried once.
//
// Threat model: whoever can read the state directory and the auth secret
// and open this TPM can use the keys outside keyward; a TPM cannot forget a
// blob, so destroying a version is not revocation against a copy taken
// before. Keys cannot be moved to another TPM or exported: a lost or
// cleared TPM loses every key. See docs/tpm.md.
package tpm
