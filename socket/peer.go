package socket

import (
	"bufio"
	"bytes"
	"strconv"
	"strings"
)

// Peer is the identity of the process at the other end of a Unix socket, as
// the kernel recorded it when that process connected.
type Peer struct {
	UID, GID uint32
	// Groups are the supplementary groups at connect time (SO_PEERGROUPS), in
	// the kernel's (ascending) order. The primary GID is not repeated here.
	Groups []uint32
	PID    int32
	// Unit is the systemd unit of the peer's cgroup ("payments.service"), or ""
	// when it is unknown: no SO_PEERPIDFD, /proc unreadable, the peer already
	// gone, or a cgroup that is not a systemd unit.
	Unit string
	// PIDFDVerified reports that the cgroup was read for the process that
	// connected: through a pidfd, with the process alive after the read. Unit
	// is "" whenever it is false.
	PIDFDVerified bool
}

// String formats the peer for logs: "uid=1000 gid=1000 pid=42 unit=payments.service".
// The unit is left out when unknown.
func (p Peer) String() string {
	var b strings.Builder
	b.WriteString("uid=")
	b.WriteString(strconv.FormatUint(uint64(p.UID), 10))
	b.WriteString(" gid=")
	b.WriteString(strconv.FormatUint(uint64(p.GID), 10))
	b.WriteString(" pid=")
	b.WriteString(strconv.FormatInt(int64(p.PID), 10))
	if p.Unit != "" {
		b.WriteString(" unit=")
		b.WriteString(p.Unit)
	}
	return b.String()
}

// unitFromCgroupFile returns the systemd unit named by the contents of a
// /proc/PID/cgroup file: from the cgroup v2 line ("0::/path"), or, on a pure
// cgroup v1 host, from the name=systemd hierarchy.
func unitFromCgroupFile(data []byte) string {
	var v1 string
	haveV1 := false
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		// hierarchy-ID:controller-list:cgroup-path; the path may contain ':'.
		f := strings.SplitN(sc.Text(), ":", 3)
		if len(f) != 3 {
			continue
		}
		if f[0] == "0" && f[1] == "" {
			return unitFromCgroupPath(f[2])
		}
		for _, c := range strings.Split(f[1], ",") {
			if c == "name=systemd" && !haveV1 {
				v1, haveV1 = f[2], true
			}
		}
	}
	if haveV1 {
		return unitFromCgroupPath(v1)
	}
	return ""
}

// unitFromCgroupPath returns the unit systemd placed the process in: the first
// path element after a run of slices, which must be a service, scope or socket.
// Elements below it are chosen by the unit itself (delegation), so they are
// ignored. A path that does not have this shape (the root, a cgroup a container
// runtime made, a path relative to another cgroup namespace with "..") yields "".
func unitFromCgroupPath(path string) string {
	if !strings.HasPrefix(path, "/") {
		return ""
	}
	for _, el := range strings.Split(path[1:], "/") {
		switch {
		case !validUnitName(el):
			return ""
		case strings.HasSuffix(el, ".slice"):
			continue
		case strings.HasSuffix(el, ".service"),
			strings.HasSuffix(el, ".scope"),
			strings.HasSuffix(el, ".socket"):
			return el
		default:
			return ""
		}
	}
	return ""
}

// validUnitName reports whether s is spelled like a systemd unit name: at most
// 255 bytes of [A-Za-z0-9:_.\-@\\], a non-empty prefix before the type suffix.
func validUnitName(s string) bool {
	dot := strings.LastIndexByte(s, '.')
	if len(s) > 255 || dot <= 0 || dot == len(s)-1 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == ':', c == '_', c == '.', c == '-', c == '@', c == '\\':
		default:
			return false
		}
	}
	return true
}
