// Package systemdtest boots the installed systemd as PID 1 of fresh
// namespaces, so that tests run units under the real manager: socket
// activation, Type=notify, the watchdog, the sandbox, LoadCredential=.
//
// The guest's root is an overlay: the host's "/" read-only below, a tmpfs
// above (nothing is written to the host). It gets a fresh /proc (with
// /proc/sys read-only), a read-only /sys, its own cgroup2 subtree (a new
// cgroup namespace rooted at a cgroup made for it), a minimal /dev with a
// pseudo-terminal as /dev/console, a private /run, and its own pid, mount,
// UTS, IPC and network namespaces. "/" is made shared before systemd
// starts: without it, LoadCredential= delivers nothing, because the
// credential mount is made in the helper's namespace. Capabilities a guest
// must not have (sys_module, sys_time...) are dropped from the bounding set.
//
// A test binary that uses Boot must let the package's init run before
// its TestMain does anything (it does, being imported): the binary re-runs
// itself as the guest's first process.
package systemdtest
