// Package socket is keyward's local transport: the listening socket, the
// identity of whoever connects to it, and the glue that hands that identity to
// gRPC handlers.
//
// # What it promises
//
//   - A Peer's UID, GID, supplementary Groups and PID are what the kernel
//     recorded when the client called connect(2) (SO_PEERCRED, SO_PEERGROUPS).
//     Nothing the client sends is ever part of its identity, and nothing is read
//     from /proc for them.
//   - Peer.Unit, the systemd unit the client runs in, is set only when it was read
//     through a pidfd of the connecting process (SO_PEERPIDFD, Linux >= 6.5) and
//     that process was still alive after /proc/PID/cgroup was read
//     (Peer.PIDFDVerified). Otherwise it is "". A policy that names units
//     therefore fails closed on older kernels, and wherever the daemon cannot
//     see its clients in /proc: ProtectProc=invisible (hidepid) hides other
//     users' processes from a daemon without CAP_SYS_PTRACE.
//   - Listen never removes a socket someone is serving, nor anything that is not
//     a socket, and a second daemon on the same path fails with ErrInUse instead
//     of stealing (and, on exit, deleting) the first one's socket.
//   - Listen binds only in a directory that root and the daemon's uid alone can
//     change (and below directories others can write only if sticky), and
//     never follows a symlink to create, chown or chmod the socket: a local
//     user cannot move the socket aside to answer clients in the daemon's place,
//     nor make the daemon change a file of their choosing (ErrUnsafeDir).
//   - Credentials identifies every gRPC connection once, at accept; handlers read
//     the result with PeerFromContext. It authenticates, it never authorises.
//
// # Threat model: PID reuse
//
// A PID is a name, not a process: between connect(2) and the moment the daemon
// looks, the client may exit and its PID may be given to an unrelated process,
// so reading /proc/PID for a peer would describe whoever holds that number now.
// That is why the credentials that matter come from the socket, and why the unit
// is read in the order pidfd, /proc/PID/cgroup, liveness through the pidfd: a
// PID number is only released once its process is reaped, so a process that is
// alive after the read is the one that was read. Without SO_PEERPIDFD the unit
// is not guessed. (spiffe/spire's peertracker states the same problem.)
//
// The unit is the outermost unit element of the cgroup path below the slices
// (the unit systemd itself started), not the innermost one: everything below a
// unit is named by whoever the unit delegates its cgroup subtree to (a user's
// systemd --user, a container runtime), so "user@1000.service/app.slice/payments.service"
// is user@1000.service, never payments.service.
//
// Root on the host is out of scope: it can connect as anyone and ptrace the
// daemon.
package socket
