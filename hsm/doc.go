// Package hsm is keyward's PKCS#11 backend (SoftHSM2 in tests, any PKCS#11
// token in production), built on github.com/miekg/pkcs11.
//
// What it promises:
//   - Every key version is its own object generated in the token with
//     CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE, CKA_EXTRACTABLE=false and
//     CKA_MODIFIABLE=false, and only the usage attributes its type needs.
//     Key material never crosses the PKCS#11 boundary. A secret or private
//     key object is used only with those protections and
//     CKA_ALWAYS_SENSITIVE, CKA_NEVER_EXTRACTABLE (objRef.protected); a
//     public key object only once its private key signed a challenge it
//     verifies (matchesPrivate): both can be replaced on the token by
//     someone who does not hold what they would need to forge them.
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
// read it, but can never read key material from the token. PKCS#11 does not
// serialise two daemons changing one key; a record is published in two
// steps (a claim readers never search, a check for a competing claim or
// record of the same generation, then the record: storeMeta), so at most
// one writer of a generation publishes and no reader uses a record that is
// later withdrawn. SoftHSM2's file store needs more (a process-wide lock
// around object creation, a file lock across processes): see
// docs/softhsm2-facts.md.
package hsm
