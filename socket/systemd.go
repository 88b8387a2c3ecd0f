package socket

import (
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"

	"github.com/coreos/go-systemd/v22/activation"
)

// sd holds the sockets systemd passed. They are collected once (go-systemd
// unsets LISTEN_* on the way, so no child inherits them) and each is handed out
// at most once.
var sd struct {
	mu     sync.Mutex
	loaded bool
	err    error
	socks  []sdSocket
}

type sdSocket struct {
	name  string
	l     net.Listener
	taken bool
}

// Systemd returns the socket-activated listener named name (the unit's
// FileDescriptorName=, "keyward" in keyward.socket), or ok=false with a nil
// error when this process was not socket-activated. With name == "" the single
// passed socket is returned. It is an error, with ok=false, if sockets were
// passed but none (or more than one) matches, if the match is not a Unix stream
// socket, or if it was already returned.
//
// The listener does not unlink its path on Close: the socket belongs to
// systemd, which keeps it across daemon restarts.
func Systemd(name string) (l net.Listener, ok bool, err error) {
	sd.mu.Lock()
	defer sd.mu.Unlock()
	return systemdLocked(name)
}

// SystemdIfPassed is Systemd for a socket the unit may or may not pass: a
// socket-activated process that was passed none named name gets ok=false
// and a nil error, not an error.
func SystemdIfPassed(name string) (l net.Listener, ok bool, err error) {
	sd.mu.Lock()
	defer sd.mu.Unlock()
	loadSystemd()
	for _, s := range sd.socks {
		if s.name == name {
			return systemdLocked(name)
		}
	}
	return nil, false, sd.err
}

func systemdLocked(name string) (l net.Listener, ok bool, err error) {
	loadSystemd()
	if sd.err != nil {
		return nil, false, sd.err
	}
	return pick(name)
}

// loadSystemd collects the passed sockets, once.
func loadSystemd() {
	if !sd.loaded {
		sd.loaded = true
		byName, err := activation.ListenersWithNames()
		if err != nil {
			sd.err = fmt.Errorf("socket: systemd listeners: %w", err)
		}
		for n, ls := range byName {
			for _, l := range ls {
				sd.socks = append(sd.socks, sdSocket{name: n, l: l})
			}
		}
		sort.SliceStable(sd.socks, func(i, j int) bool { return sd.socks[i].name < sd.socks[j].name })
	}
}

// pick hands out the passed socket named name (see Systemd).
func pick(name string) (l net.Listener, ok bool, err error) {
	if len(sd.socks) == 0 {
		return nil, false, nil
	}
	var match []int
	for i, s := range sd.socks {
		if name == "" || s.name == name {
			match = append(match, i)
		}
	}
	switch {
	case len(match) == 0:
		return nil, false, fmt.Errorf("socket: systemd passed no socket named %q (have %s)", name, sdNames())
	case len(match) > 1 && name == "":
		return nil, false, fmt.Errorf("socket: systemd passed %d sockets (%s): name the one to use", len(match), sdNames())
	case len(match) > 1:
		return nil, false, fmt.Errorf("socket: systemd passed %d sockets named %q: expected one", len(match), name)
	}
	s := &sd.socks[match[0]]
	if s.taken {
		return nil, false, fmt.Errorf("socket: systemd socket %q was already taken", s.name)
	}
	ul, isUnix := s.l.(*net.UnixListener)
	if !isUnix || ul.Addr().Network() != "unix" {
		return nil, false, fmt.Errorf("socket: systemd socket %q is %s %s, not a unix stream socket",
			s.name, s.l.Addr().Network(), s.l.Addr())
	}
	ul.SetUnlinkOnClose(false)
	s.taken = true
	return ul, true, nil
}

func sdNames() string {
	names := make([]string, len(sd.socks))
	for i, s := range sd.socks {
		names[i] = fmt.Sprintf("%q", s.name)
	}
	return strings.Join(names, ", ")
}
