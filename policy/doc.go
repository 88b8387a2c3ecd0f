// Package policy decides whether a caller may perform an operation on a key.
//
// Rules (from the daemon's config) are compiled once into an immutable Policy;
// Decide then answers from the caller's kernel identity, the operation, the key
// name and the request context, with a Reason for logs and audit.
//
// Promises:
//   - default deny: only a rule that names the caller, lists the operation,
//     matches the key and finds its context pairs in the request allows;
//   - data and admin operations are granted separately and there are no
//     operation wildcards: managing a key never implies using it;
//   - every rule is validated at Compile (names resolved, globs checked, no
//     rule that can match nobody), so a typo is an error, not a silent no-match;
//   - a Policy is safe for concurrent use and never changes after Compile.
//
// Threat model: the Identity must come from the kernel (SO_PEERCRED,
// SO_PEERGROUPS, the pidfd's cgroup), never from anything the client says.
// The request context is chosen by the client, so a context condition only
// narrows what an identity already named may do (it binds blobs to a
// purpose); it never grants anything by itself. User and group names are
// resolved at Compile: a user recreated with another uid after load is not
// seen until the policy is compiled again. Reasons name rules and ids and are
// meant for logs and audit only; they never contain request context values.
package policy
