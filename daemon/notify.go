package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"
)

// Notifier delivers sd_notify(3) state lines ("READY=1", "STATUS=...",
// "WATCHDOG=1", several joined by newlines) to the service manager.
// SystemdNotifier returns the one for $NOTIFY_SOCKET; tests pass their own.
type Notifier interface {
	Notify(state string) error
}

// SystemdNotifier returns a Notifier writing to $NOTIFY_SOCKET and the
// watchdog timeout systemd set ($WATCHDOG_USEC; 0 when there is none or
// $WATCHDOG_PID names another process), or nil and 0 when keywardd was not
// started by a service manager that listens (Type=notify).
func SystemdNotifier() (Notifier, time.Duration, error) {
	if os.Getenv("NOTIFY_SOCKET") == "" {
		return nil, 0, nil
	}
	wd, err := sd.SdWatchdogEnabled(false)
	if err != nil {
		return nil, 0, fmt.Errorf("systemd watchdog: %w", err)
	}
	return sdNotifier{}, wd, nil
}

type sdNotifier struct{}

func (sdNotifier) Notify(state string) error {
	_, err := sd.SdNotify(false, state)
	return err
}

// keyringTimeout bounds the key count taken for STATUS= after a reload. The
// count at start has no bound of its own: until it is taken the daemon is not
// ready, and the unit's TimeoutStartSec= decides how long that may last.
const keyringTimeout = 10 * time.Second

// lifecycle tells the service manager what Run is doing: READY=1 once the
// keyring has been read through the backend, STATUS= lines, RELOADING=1 and
// READY=1 around a reload, STOPPING=1, and watchdog pings that stop when the
// backend stops answering its health probe, so that a wedged device gets
// the daemon restarted rather than leaving a socket that accepts calls it
// cannot serve. Without a Notifier it only loads the keyring.
type lifecycle struct {
	n        Notifier // nil: no service manager listens
	watchdog time.Duration
	svc      *Service
	log      *slog.Logger
	keys     atomic.Int64 // keys in the keyring at the last count
	ready    atomic.Bool  // READY=1 was sent: a SIGHUP before it says nothing
	healthy  atomic.Bool  // the last health probe succeeded
	probing  chan error   // a probe that outlived its timeout, until it returns
}

func newLifecycle(opts Options, svc *Service, log *slog.Logger) *lifecycle {
	lc := &lifecycle{n: opts.Notifier, watchdog: opts.Watchdog, svc: svc, log: log}
	lc.healthy.Store(true)
	return lc
}

// start reads the keyring once (the backend is already logged in: READY=1
// promises that calls can be served), then reports READY=1 and starts the
// watchdog pings, which end with ctx.
func (lc *lifecycle) start(ctx context.Context) error {
	if err := lc.countKeys(ctx); err != nil {
		return fmt.Errorf("loading the keyring: %w", err)
	}
	ping := ""
	if lc.watchdog > 0 {
		// The keyring was just read: the backend answered. The first ping
		// arms the watchdog from now rather than from the exec.
		ping = "\nWATCHDOG=1"
		go lc.watch(ctx)
	}
	lc.notify("READY=1\n" + lc.status() + ping)
	lc.ready.Store(true)
	return nil
}

// reloading reports that the configuration is being re-read.
func (lc *lifecycle) reloading() {
	if !lc.ready.Load() {
		return
	}
	lc.notify("RELOADING=1\n" + sd.SdNotifyMonotonicUsec() + "\nSTATUS=reloading the configuration")
}

// reloaded reports READY=1 again after a reload, whether the new
// configuration applied or the old one was kept.
func (lc *lifecycle) reloaded(ctx context.Context) {
	if lc.n == nil || !lc.ready.Load() {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, keyringTimeout)
	defer cancel()
	if err := lc.countKeys(cctx); err != nil {
		lc.log.Warn("counting keys after the reload", "err", err)
	}
	lc.notify("READY=1\n" + lc.status())
}

// stopping reports the start of the shutdown.
func (lc *lifecycle) stopping() {
	lc.notify("STOPPING=1\nSTATUS=stopping: draining calls in flight")
}

func (lc *lifecycle) countKeys(ctx context.Context) error {
	all, err := lc.svc.be.ListKeys(ctx)
	if err != nil {
		return err
	}
	lc.keys.Store(int64(len(all)))
	return nil
}

// status is the STATUS= line systemctl status shows. It says no more than
// the log: no key names, no error detail.
func (lc *lifecycle) status() string {
	health := "healthy"
	if !lc.healthy.Load() {
		health = "NOT answering its health probe (watchdog pings withheld)"
	}
	return fmt.Sprintf("STATUS=serving: backend %s %s; %d keys; %d requests served",
		lc.svc.kind, health, lc.keys.Load(), lc.svc.Served())
}

func (lc *lifecycle) notify(state string) {
	if lc.n == nil {
		return
	}
	if err := lc.n.Notify(state); err != nil {
		lc.log.Warn("sd_notify", "state", strings.SplitN(state, "\n", 2)[0], "err", err)
	}
}

// watch probes the backend every half watchdog period and pings only after a
// probe that succeeded, logging when the probes start failing and when they
// succeed again. A probe may take a quarter of the period, so that a ping
// that is due is never late because of a slow answer.
func (lc *lifecycle) watch(ctx context.Context) {
	every := lc.watchdog / 2
	t := time.NewTicker(every)
	defer t.Stop()
	var since time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := lc.probe(ctx, every/2)
		if ctx.Err() != nil {
			return
		}
		switch {
		case err != nil && lc.healthy.Load():
			since = time.Now()
			lc.healthy.Store(false)
			lc.log.Error("backend health probe failed: watchdog pings stop, the service manager restarts keywardd unless the backend recovers first",
				"backend", lc.svc.kind, "err", err, "watchdog", lc.watchdog)
		case err != nil:
			lc.log.Debug("backend health probe failed again", "err", err)
		case !lc.healthy.Load():
			lc.healthy.Store(true)
			lc.log.Info("backend health probe succeeds again: watchdog pings resume", "backend", lc.svc.kind,
				"down_for", time.Since(since).Round(time.Millisecond))
		}
		if err != nil {
			lc.notify(lc.status())
			continue
		}
		lc.notify("WATCHDOG=1\n" + lc.status())
	}
}

// probe runs keys.Backend.Health, waiting at most timeout. A call into a
// wedged device cannot be interrupted, so a probe that outlives its timeout
// is left to finish in its goroutine and no other one starts until it has:
// a stuck device costs one goroutine, not one per tick.
func (lc *lifecycle) probe(ctx context.Context, timeout time.Duration) error {
	if lc.probing != nil {
		select {
		case <-lc.probing: // finished late: its answer is stale, probe again
			lc.probing = nil
		default:
			return errProbeStuck
		}
	}
	done := make(chan error, 1)
	go func() {
		pctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		done <- lc.svc.be.Health(pctx)
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case err := <-done:
		return err
	case <-timer.C:
		lc.probing = done
		return fmt.Errorf("no answer within %v", timeout)
	}
}
