// Package daemon is keywardd's server: the keyward.v1 gRPC service over a
// Unix socket (Run), on one keys.Backend, under one policy.Policy.
//
// What it promises:
//   - Every call is decided from the caller's kernel identity (uid, gid,
//     groups, systemd unit, read by package socket at accept), never from
//     anything the caller sends; the policy is default-deny, and managing a
//     key never implies using it.
//   - Admission happens before a request's message is read (gate.go, from
//     the HEADERS frame): per-uid connection and concurrency limits, and
//     rate limits per uid and unit,
//     refuse a flood without reading it, decoding it or touching the device.
//   - Every operation, allowed or not, is recorded in the audit log before
//     its reply (auditing.go); a call whose record cannot be written fails.
//     Refusals by a limit are summarised per caller and interval
//     (refusals.go), so a flood cannot fill the disk.
//   - Callers get a closed set of wire reasons and fixed messages
//     (errors.go); details go to the log, never a secret, plaintext,
//     context value or PIN.
//   - SIGHUP swaps the policy and the per-call limits atomically, or keeps
//     the running ones if the file is bad; SIGTERM drains calls in flight.
//
// Threat model: any process that may open the socket is untrusted; its
// bytes are bounded (message size, batch size, receive deadline) before
// they are parsed. The daemon's own process is hardened (HardenProcess:
// not dumpable, no core files), since its memory holds plaintexts and the
// PIN while it runs. Root on the host is not defended against (see
// docs/security-model.md).
package daemon
