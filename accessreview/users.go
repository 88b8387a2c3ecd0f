package accessreview

import (
	"os/user"
	"strconv"
)

// Users resolves a uid on this host: its user name, and the groups its
// user is a member of (primary and supplementary), as gids.
type Users interface {
	Name(uid uint32) (string, bool)
	Groups(uid uint32) []uint32
}

// SystemUsers resolves uids through the system's user database (os/user).
func SystemUsers() Users { return systemUsers{} }

type systemUsers struct{}

func (systemUsers) Name(uid uint32) (string, bool) {
	u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10))
	if err != nil {
		return "", false
	}
	return u.Username, true
}

func (systemUsers) Groups(uid uint32) []uint32 {
	u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10))
	if err != nil {
		return nil
	}
	ids, err := u.GroupIds()
	if err != nil {
		return nil
	}
	var out []uint32
	for _, s := range ids {
		if n, err := strconv.ParseUint(s, 10, 32); err == nil {
			out = append(out, uint32(n))
		}
	}
	return out
}

// userCache asks Users once per uid: the review meets few distinct uids
// and many records.
type userCache struct {
	u      Users
	names  map[uint32]string
	groupz map[uint32][]uint32
}

func newUserCache(u Users) *userCache {
	return &userCache{u: u, names: map[uint32]string{}, groupz: map[uint32][]uint32{}}
}

func (c *userCache) name(uid uint32) string {
	if n, ok := c.names[uid]; ok {
		return n
	}
	n, _ := c.u.Name(uid)
	c.names[uid] = n
	return n
}

func (c *userCache) groups(uid uint32) []uint32 {
	if g, ok := c.groupz[uid]; ok {
		return g
	}
	g := c.u.Groups(uid)
	c.groupz[uid] = g
	return g
}
