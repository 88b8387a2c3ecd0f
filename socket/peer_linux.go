package socket

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"
)

// maxCgroupFile bounds the read of /proc/PID/cgroup (a line per hierarchy).
const maxCgroupFile = 64 << 10

// peerPIDFD returns a pidfd for the socket's peer. A variable so tests can
// play a kernel without SO_PEERPIDFD.
var peerPIDFD = func(fd int) (int, error) {
	return unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PEERPIDFD)
}

// PeerOf returns the identity of the process at the other end of c. UID, GID,
// Groups and PID come from the socket and are always set; an error means the
// kernel would not say. Unit is best effort and never wrong: see Peer.
//
// The cost is a few system calls and, with SO_PEERPIDFD, one read of
// /proc/PID/cgroup: call it once per connection, not per request.
func PeerOf(c *net.UnixConn) (Peer, error) {
	if c == nil {
		return Peer{}, fmt.Errorf("socket: peer of a nil connection: %w", ErrNotUnix)
	}
	raw, err := c.SyscallConn()
	if err != nil {
		return Peer{}, fmt.Errorf("socket: peer credentials: %w", err)
	}
	var (
		p     Peer
		pidfd = -1
		opErr error
	)
	if err := raw.Control(func(fd uintptr) {
		p, pidfd, opErr = peerCreds(int(fd))
	}); err != nil {
		return Peer{}, fmt.Errorf("socket: peer credentials: %w", err)
	}
	if opErr != nil {
		return Peer{}, fmt.Errorf("socket: peer credentials: %w", opErr)
	}
	if pidfd >= 0 {
		p.Unit, p.PIDFDVerified = unitOf(p.PID, pidfd)
		unix.Close(pidfd)
	}
	return p, nil
}

// peerCreds reads what the kernel recorded at connect time. pidfd is -1 when
// the kernel has no SO_PEERPIDFD or could not make one (the peer may be gone).
func peerCreds(fd int) (p Peer, pidfd int, err error) {
	uc, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil {
		return Peer{}, -1, fmt.Errorf("SO_PEERCRED: %w", err)
	}
	groups, err := peerGroups(fd)
	if err != nil {
		return Peer{}, -1, fmt.Errorf("SO_PEERGROUPS: %w", err)
	}
	p = Peer{UID: uc.Uid, GID: uc.Gid, Groups: groups, PID: uc.Pid}
	// PID 0: the peer is not visible in our PID namespace; /proc cannot help.
	if uc.Pid <= 0 {
		return p, -1, nil
	}
	pidfd, err = peerPIDFD(fd)
	if err != nil {
		// ENOPROTOOPT: kernel < 6.5. Anything else (EMFILE, ESRCH/EINVAL for a
		// reaped peer on some kernels): no unit, which policy treats as no match.
		return p, -1, nil
	}
	return p, pidfd, nil
}

// peerGroups reads SO_PEERGROUPS: the kernel answers ERANGE with the needed
// length when the buffer is short. The groups of a connected socket are fixed,
// so one retry is enough; a few are allowed anyway.
func peerGroups(fd int) ([]uint32, error) {
	buf := make([]uint32, 64)
	for range 4 {
		n := uint32(len(buf) * 4)
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd),
			unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
		switch errno {
		case 0:
			if n%4 != 0 || int(n/4) > len(buf) {
				return nil, fmt.Errorf("kernel returned %d bytes", n)
			}
			if n == 0 {
				return nil, nil
			}
			return append([]uint32(nil), buf[:n/4]...), nil
		case unix.ERANGE:
			want := int(n/4) + 1
			if want <= len(buf) {
				want = 2 * len(buf)
			}
			buf = make([]uint32, want)
		default:
			return nil, errno
		}
	}
	return nil, unix.ERANGE
}

// unitOf reads the unit of the process behind pidfd, whose PID was pid at
// connect time. Order matters: the pidfd already exists, then /proc/PID is
// read, then liveness is checked through the pidfd; if the process is still
// alive its PID was never released, so /proc/PID was this process.
func unitOf(pid int32, pidfd int) (unit string, verified bool) {
	data, err := readCgroup(pid)
	if err != nil {
		return "", false
	}
	// Signal 0 checks existence. EPERM (a daemon that may not signal the peer)
	// is only returned for a process that exists; ESRCH means it was reaped.
	if err := unix.PidfdSendSignal(pidfd, 0, nil, 0); err != nil && !errors.Is(err, unix.EPERM) {
		return "", false
	}
	return unitFromCgroupFile(data), true
}

func readCgroup(pid int32) ([]byte, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(int(pid)) + "/cgroup")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, maxCgroupFile))
}
