// Package osuser resolves the host's user and group names the way the
// configuration and the socket both need it, without the server's packages.
package osuser

import (
	"fmt"
	"os/user"
	"strconv"
)

// LookupGroup resolves a group given by number or by name to its gid.
func LookupGroup(s string) (int, error) {
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		return int(n), nil
	}
	g, err := user.LookupGroup(s)
	if err != nil {
		return 0, fmt.Errorf("group %q: %w", s, err)
	}
	n, err := strconv.ParseUint(g.Gid, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("group %q has gid %q: %w", s, g.Gid, err)
	}
	return int(n), nil
}
