// Package hsm is keyward's PKCS#11 backend (SoftHSM2 in tests, any PKCS#11
// token in production), built on github.com/miekg/pkcs11.
//
// What it promises:
//   - Every key version is its own object generated in the token with
//     CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE, CKA_EXTRACTABLE=false and
//     CKA_MODIFIABLE=false, and only the usage attributes its type needs.
//     Key material never crosses the PKCS#11 boundary.
//   - The token is the single source of truth: each key's metadata (type,
//     versions, states, minimum decrypt version) is a private CKO_DATA object
//     in the token, MAC'd by a non-extractable HMAC key in the same token, so
//     several daemons on one token (or one network HSM partition) share one
//     keyring and an edited record is refused with keys.ErrIntegrity.
//   - Only 96-bit IVs from crypto/rand and 128-bit tags are used for AES-GCM
//     (tokens accept any length; SoftHSM2 accepts zero).
//   - Every PKCS#11 call runs under a read lock; re-initialising the module
//     (C_Finalize + C_Initialize, after a removed token or lost sessions) takes
//     the write lock, so it never races an in-flight call. After
//     re-initialising, object handles are found again from label and CKA_ID,
//     because handles are reassigned and an old one may name another key.
//
// Threat model: the PIN is held in memory for re-login; root on the host can
// read it, but can never read key material from the token. Admin operations
// on one key from two processes at the same instant are not serialised by
// PKCS#11; the backend detects a concurrent change of the record before it
// writes and retries, which leaves only a window of one attribute write.
package hsm
