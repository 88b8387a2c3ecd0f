package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	keywardv1 "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/client"
)

// defaultWait is how long `status --wait` waits when given no TIMEOUT.
const defaultWait = 30 * time.Second

// waitPoll is the pause between two attempts of `status --wait`.
const waitPoll = 100 * time.Millisecond

// waitHealthy asks the daemon for its status until it answers with a
// healthy backend or `within` has passed. A daemon that is not there yet
// (no socket, nothing listening, shutting down) or not healthy yet is
// asked again; an answer that waiting cannot change (this user may not
// open the socket, another uid serves it) ends the wait at once. --timeout
// bounds each attempt.
func (a *app) waitHealthy(ctx context.Context, within time.Duration) (*keywardv1.StatusResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	var last error
	for {
		st, err := a.statusOnce(ctx)
		switch {
		case err == nil && st.GetBackendHealthy():
			return st, nil
		case err == nil:
			last = fmt.Errorf("backend %s is unhealthy: %s: %w", st.GetBackend(), orText(st.GetBackendError(), "no reason given"), client.ErrUnavailable)
		case !errors.Is(err, client.ErrUnavailable) || errors.Is(err, client.ErrUntrustedDaemon):
			return nil, err
		case ctx.Err() == nil:
			last = err
		}
		select {
		case <-ctx.Done():
			if last == nil {
				last = err
			}
			if last == nil { // the caller's context ended first
				last = fmt.Errorf("%w: %w", client.ErrUnavailable, ctx.Err())
			}
			return nil, fmt.Errorf("status --wait: keywardd did not answer healthy within %v; last: %w", within, last)
		case <-time.After(waitPoll):
		}
	}
}

// statusOnce is one attempt: dial, Status, close.
func (a *app) statusOnce(ctx context.Context) (*keywardv1.StatusResponse, error) {
	if a.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, a.timeout)
		defer cancel()
	}
	kc, err := a.dial(ctx, client.WithRetry(1, 0))
	if err != nil {
		return nil, err
	}
	defer kc.Close()
	return kc.Status(ctx)
}
