package policy

import (
	"fmt"
	"os/user"
	"strconv"
)

// Resolver turns user and group names into ids. Compile calls it once per
// name; a Policy never resolves names afterwards.
type Resolver interface {
	LookupUser(name string) (uint32, error)
	LookupGroup(name string) (uint32, error)
}

// SystemResolver resolves names through os/user: NSS with cgo, /etc/passwd
// and /etc/group without.
func SystemResolver() Resolver { return systemResolver{} }

type systemResolver struct{}

func (systemResolver) LookupUser(name string) (uint32, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return 0, err
	}
	return parseSystemID("uid", u.Uid)
}

func (systemResolver) LookupGroup(name string) (uint32, error) {
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, err
	}
	return parseSystemID("gid", g.Gid)
}

func parseSystemID(kind, s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%s %q is not a 32-bit number", kind, s)
	}
	return uint32(n), nil
}
