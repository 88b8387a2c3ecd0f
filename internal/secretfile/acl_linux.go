//go:build linux

package secretfile

import (
	"encoding/binary"
	"os"

	"golang.org/x/sys/unix"
)

// POSIX ACL as the kernel stores it in system.posix_acl_access: a version
// word, then (tag u16, perm u16, id u32) entries, little endian.
const (
	aclXattr    = "system.posix_acl_access"
	aclVersion  = 2
	aclUserObj  = 0x01
	aclUser     = 0x02
	aclGroupObj = 0x04
	aclGroup    = 0x08
	aclMask     = 0x10
	aclOther    = 0x20
)

// privateByACL reports whether f, whose mode has group bits, can still be
// read by nobody but its owner and this process's user. A systemd credential
// given to a service that is not root is such a file when the credentials
// file system has ACLs (tmpfs, from systemd 255 on): 0400, owned by root, with
// an entry granting the service's user read, which stat shows as mode 0440
// (the ACL's mask in the group bits) although no group may read it.
func privateByACL(f *os.File, perm os.FileMode) bool {
	if perm&0o027 != 0 { // others, or a mask that lets anyone write
		return false
	}
	buf := make([]byte, 4+8*32)
	n, err := unix.Fgetxattr(int(f.Fd()), aclXattr, buf)
	if err != nil || n < 4 || (n-4)%8 != 0 || binary.LittleEndian.Uint32(buf) != aclVersion {
		return false
	}
	me := uint32(os.Geteuid())
	for e := buf[4:n]; len(e) > 0; e = e[8:] {
		tag, p, id := binary.LittleEndian.Uint16(e), binary.LittleEndian.Uint16(e[2:]), binary.LittleEndian.Uint32(e[4:])
		switch tag {
		case aclUserObj, aclMask:
		case aclUser:
			if p != 0 && id != me {
				return false
			}
		case aclGroupObj, aclGroup, aclOther:
			if p != 0 {
				return false
			}
		default:
			return false
		}
	}
	return true
}
