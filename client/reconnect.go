package client

import (
	"sync"

	"google.golang.org/grpc/codes"

	keywardv1 "github.com/keyward/keyward/api/keyward/v1"
)

// lastDial remembers how the latest connection attempt ended (nil: it
// succeeded), so that a call that fails for want of a connection can say
// why in keyward's terms.
type lastDial struct {
	mu  sync.Mutex
	err error
}

func (l *lastDial) set(err error) {
	l.mu.Lock()
	l.err = err
	l.mu.Unlock()
}

func (l *lastDial) get() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// explain replaces an UNAVAILABLE that gRPC's transport made (the daemon
// always attaches a keyward reason to its own) with keyward's account of
// it: the socket missing, nothing listening, or the connection lost. The
// sentinel stays ErrUnavailable; the transport's text goes.
func (l *lastDial) explain(op string, err error) error {
	e, ok := err.(*Error)
	if !ok || e.Code != codes.Unavailable || e.Reason != keywardv1.ErrorReason_ERROR_REASON_UNSPECIFIED || e.st == nil {
		return err
	}
	if de := l.get(); de != nil {
		return dialError(op, de)
	}
	return newError(op, codes.Unavailable, 0, "the connection to keywardd was lost; is it restarting?")
}
