// Package safepath tells whether a directory can be changed only by trusted
// users, so that a path inside it names the same file from one system call
// to the next.
//
// # The rule
//
// Trusted users are root and the uids the caller names (the daemon's own, or
// the uid a client expects the daemon to run as). Every directory on the way
// to dir, following symlinks as the kernel would, and every symlink met, must
// be owned by a trusted user. Above dir, a directory that its group or others
// may write must also be sticky: /tmp (1777, root) lets nobody rename or
// delete another user's entry, so /tmp/x, owned by a trusted user, stays
// where it is; without the sticky bit anyone allowed to write could rename
// x and put their own x in its place. dir itself must not be writable by its
// group or others, sticky or not: there anyone could create the names we
// are about to use (a socket, a lock file, a token file) before we do.
//
// Everything is checked with lstat: a symlink is read, not followed blindly,
// and its target is walked with the same rule.
package safepath

// maxLinks bounds the symlinks followed on one path, as the kernel's ELOOP.
const maxLinks = 40
