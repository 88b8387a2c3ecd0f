package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os/user"
	"strings"
	"time"

	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/policy"
)

// CheckBreakglassAtStart runs keywardd's start-up check of the grant store
// on be with the high-water file seenPath ("" none), as a daemon
// configured with [[breakglass]] does, and returns the grants it would
// honour as "id:generation:state" (sorted by id), or the reason it would
// not start.
func CheckBreakglassAtStart(ctx context.Context, be keys.Backend, seenPath string) (string, error) {
	pol, err := config.CompilePolicy(config.Config{Breakglass: []config.Breakglass{{Name: "check", Keys: []string{"**"},
		Operations: []string{"sign"}, Requesters: policy.Subjects{UIDs: []uint32{1}},
		Approvers: policy.Subjects{UIDs: []uint32{2}}, MaxDuration: config.Duration{Duration: time.Hour}}}}, nil)
	if err != nil {
		return "", err
	}
	b, err := newBreakglass(ctx, be, "pkcs11", seenPath, pol, time.Now, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil {
		return "", err
	}
	view, err := b.grants.current(ctx, false)
	if err != nil {
		return "", err
	}
	var out []string
	for _, g := range view {
		out = append(out, fmt.Sprintf("%s:%d:%s", g.id, g.gen, g.state(time.Now())))
	}
	return strings.Join(out, " "), nil
}

// SetUserLookup replaces the user database keywardd asks for a caller's
// user name until the test ends.
func SetUserLookup(t interface{ Cleanup(func()) }, f func(uid string) (*user.User, error)) {
	old := lookupUID.Swap(&f)
	t.Cleanup(func() { lookupUID.Store(old) })
}
