//go:build linux

package secretfile

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// aclEntry is one ACL entry; the kernel wants them sorted by tag, then id.
type aclEntry struct {
	tag, perm uint16
	id        uint32
}

func setACL(t *testing.T, path string, entries ...aclEntry) {
	t.Helper()
	b := binary.LittleEndian.AppendUint32(nil, aclVersion)
	for _, e := range entries {
		b = binary.LittleEndian.AppendUint16(b, e.tag)
		b = binary.LittleEndian.AppendUint16(b, e.perm)
		b = binary.LittleEndian.AppendUint32(b, e.id)
	}
	if err := unix.Setxattr(path, aclXattr, b, 0); err != nil {
		if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP) {
			t.Skipf("no ACLs on %s", filepath.Dir(path))
		}
		t.Fatal(err)
	}
}

// TestReadCredentialWithACL: the file systemd writes for a credential when
// its file system has ACLs (0400 + user:SERVICE:r, shown as 0440) is read;
// an ACL that lets anyone else read is refused.
func TestReadCredentialWithACL(t *testing.T) {
	const r = 4
	me := uint32(os.Geteuid())
	tests := []struct {
		name    string
		acl     []aclEntry
		wantErr error
	}{
		{"read granted to this user", []aclEntry{{aclUserObj, r, 0}, {aclUser, r, me}, {aclGroupObj, 0, 0}, {aclMask, r, 0}, {aclOther, 0, 0}}, nil},
		{"read granted to another user", []aclEntry{{aclUserObj, r, 0}, {aclUser, r, me + 1}, {aclGroupObj, 0, 0}, {aclMask, r, 0}, {aclOther, 0, 0}}, ErrTooOpen},
		{"the owning group may read", []aclEntry{{aclUserObj, r, 0}, {aclUser, r, me}, {aclGroupObj, r, 0}, {aclMask, r, 0}, {aclOther, 0, 0}}, ErrTooOpen},
		{"a named group may read", []aclEntry{{aclUserObj, r, 0}, {aclGroupObj, 0, 0}, {aclGroup, r, 4242}, {aclMask, r, 0}, {aclOther, 0, 0}}, ErrTooOpen},
		{"mask allows writing", []aclEntry{{aclUserObj, r, 0}, {aclUser, r | 2, me}, {aclGroupObj, 0, 0}, {aclMask, r | 2, 0}, {aclOther, 0, 0}}, ErrTooOpen},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "pin")
			if err := os.WriteFile(p, []byte("1234\n"), 0o400); err != nil {
				t.Fatal(err)
			}
			setACL(t, p, tt.acl...)
			got, err := Read(p)
			if !errors.Is(err, tt.wantErr) {
				fi, _ := os.Stat(p)
				t.Fatalf("mode %04o: err = %v, want %v", fi.Mode().Perm(), err, tt.wantErr)
			}
			if err == nil && string(got) != "1234" {
				t.Fatalf("got %q", got)
			}
		})
	}
}
