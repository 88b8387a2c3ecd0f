package client

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"

	"google.golang.org/grpc/codes"
)

// DaemonUser is the system user the keyward package runs keywardd as. When
// it exists in /etc/passwd, a daemon running as its uid is trusted without
// WithDaemonUID.
const DaemonUser = "keywardd"

// passwdFile is where DaemonUser is looked up.
const passwdFile = "/etc/passwd"

// WithDaemonUID adds uid to the uids keywardd may run as. A connection whose
// listening process (as the kernel recorded it at listen(2), SO_PEERCRED)
// runs as none of them is closed before anything is sent, and the call fails
// with ErrUntrustedDaemon. Without it, the daemon must run as root, as this
// process's effective uid, or as DaemonUser (the packaged daemon's user).
// Who owns the socket file or its directory does not matter: whoever runs
// the listening process chose both.
func WithDaemonUID(uid uint32) Option {
	return func(o *options) { o.daemonUID = &uid }
}

// trust checks every connection the client makes, reconnects included, and
// remembers the first untrusted one: from then on every call of the Client
// fails with it, and none is retried, so that an impersonator is never
// hidden by a retry that reaches the real daemon.
type trust struct {
	daemonUID *uint32
	euid      uint32
	passwd    string                 // where DaemonUser is looked up
	bad       atomic.Pointer[string] // the first refusal's message
}

// check is run on each new connection before gRPC writes to it.
func (t *trust) check(c net.Conn) error {
	peer, err := peerUID(c)
	if err != nil {
		return t.refuse(fmt.Sprintf("cannot tell which uid listens on the socket (%v); refusing to send anything", err))
	}
	if peer == 0 || peer == t.euid || (t.daemonUID != nil && peer == *t.daemonUID) {
		return nil
	}
	pkg, pkgErr := lookupPasswd(t.passwd, DaemonUser)
	if pkgErr == nil && peer == pkg {
		return nil
	}
	return t.refuse(fmt.Sprintf("the process listening on the socket runs as uid %d, but keywardd must run as %s; "+
		"nothing was sent to it: another user may be impersonating keywardd. Only if keywardd is configured to run "+
		"as that uid, name it (WithDaemonUID, keyward --daemon-uid, $KEYWARD_DAEMON_UID)", peer, t.allowed(pkg, pkgErr)))
}

// allowed lists the uids the daemon may run as, for an error message.
func (t *trust) allowed(pkg uint32, pkgErr error) string {
	uids := []string{"root", fmt.Sprintf("this process's uid (%d)", t.euid)}
	if t.daemonUID != nil {
		uids = append(uids, fmt.Sprintf("uid %d (as configured)", *t.daemonUID))
	}
	note := ""
	if pkgErr == nil {
		uids = append(uids, fmt.Sprintf("%s (uid %d)", DaemonUser, pkg))
	} else {
		note = fmt.Sprintf(" (user %s: %v)", DaemonUser, pkgErr)
	}
	last := len(uids) - 1
	return strings.Join(uids[:last], ", ") + " or " + uids[last] + note
}

// errNoUser: the passwd file has no such user.
var errNoUser = errors.New("not in the passwd file")

// lookupPasswd returns name's uid from a passwd(5) file. It reads the file
// itself, not NSS, so that the answer is the local system user the package
// made, whatever the build (cgo or not) and whatever a directory service
// says.
func lookupPasswd(path, name string) (uint32, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Split(s.Text(), ":")
		if len(fields) < 3 || fields[0] != name {
			continue
		}
		uid, err := strconv.ParseUint(fields[2], 10, 32)
		if err != nil {
			return 0, fmt.Errorf("%s: bad uid %q for %s", path, fields[2], name)
		}
		return uint32(uid), nil
	}
	if err := s.Err(); err != nil {
		return 0, err
	}
	return 0, errNoUser
}

func (t *trust) refuse(msg string) error {
	t.bad.CompareAndSwap(nil, &msg)
	return errors.New(msg)
}

// err returns the Client's error for op once an untrusted daemon was seen.
func (t *trust) err(op string) error {
	msg := t.bad.Load()
	if msg == nil {
		return nil
	}
	return &Error{Op: op, Code: codes.Unauthenticated, Message: *msg, sentinel: ErrUntrustedDaemon}
}
