// Package accessreview builds an access review from actual use: it reads an
// audit trail (rotated files, then the current one) in one pass that also
// verifies the hash chain (audit.VerifyWith), and counts, per subject (uid
// and unit) x key x operation, the calls allowed, denied and failed, with
// the time of the last one. Given the daemon's policy, it lists the grants
// (rules, and any other kind listed in grantKinds) no allowed call in the
// window can be attributed to: candidates to remove.
//
// Memory is bounded by the number of distinct subject x key x operation
// groups (and, for attribution, distinct uid, gid, unit, key and operation),
// never by the number of records: a record is counted and dropped.
//
// A record counts as allowed when its result is OK, or INVALID (a signature
// or MAC checked and found wrong: the call was allowed and ran); as denied
// when the policy refused it (PERMISSION_DENIED) or a limit did
// (RATE_LIMITED, TOO_MANY_REQUESTS, CONNECTION_LIMIT, RECEIVE_TIMEOUT),
// including keywardd's refusal summaries (op "refused"), which count many
// refusals per record, by operation, with no key; as failed otherwise (the
// key does not exist, a blob did not decrypt, the device was unavailable:
// such a call may have failed before or after the policy's decision).
// Intent records (result STARTED, followed by the call's outcome record)
// and checkpoint records are not counted.
package accessreview
