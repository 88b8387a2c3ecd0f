// Package keys defines what keyward asks of a key device: the Backend
// interface, key types and states, the key-name grammar and the sentinel
// errors every backend returns.
//
// Promises a Backend keeps (checked by keys/keystest on every backend):
//   - master keys are generated inside the device and never leave it; no
//     method returns or logs key material;
//   - every version is its own device object; encrypt, sign and mac use the
//     newest enabled version; decrypt and verify accept any enabled version at
//     or above the key's minimum decrypt version, and refuse the rest with
//     ErrVersionDisabled, ErrVersionDestroyed or ErrBelowMinVersion;
//   - wrapped blobs bind the key name, version and the caller's context: a blob
//     opened under another context, or altered, fails with ErrDecrypt;
//   - a Backend is safe for concurrent use.
//
// The package imports nothing of the project and holds no secrets itself.
package keys
