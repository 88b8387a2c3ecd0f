package keywardtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/keyward/keyward/daemon"
	"github.com/keyward/keyward/devmode"
	"github.com/keyward/keyward/keys"
)

// envChild, when set by Start together with the pipe it describes (see
// handoff.go), makes a process that links this package serve as the daemon
// Start asked for instead of running its tests. Set alone, it does nothing.
const envChild = "KEYWARDTEST_DAEMON"

// readyLine is what the child writes on stdout once it serves.
const readyLine = "keywardtest: ready"

// childRequest is what the test asks of its daemon, sent through the pipe.
// No secret is in it: the child makes the token's PINs itself, in Dir,
// which must not exist yet.
type childRequest struct {
	Dir, Socket string
	Config      string // a config file with the rules and limits; "" for the defaults
	Keys        []keySpec
	AllowUIDs   []uint32
}

func init() {
	v, ok := os.LookupEnv(envChild)
	if !ok {
		return
	}
	os.Unsetenv(envChild)
	req, err := receive(v)
	if errors.Is(err, errNotChild) {
		fmt.Fprintf(os.Stderr, "keywardtest: ignoring $%s: %v\n", envChild, err)
		return
	}
	if err == nil {
		err = serveChild(req)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "keywardtest daemon: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// serveChild is the daemon's life: keywardd --dev on a fresh token in
// req.Dir, with the test's policy, the keys asked for, until SIGTERM.
func serveChild(req childRequest) error {
	// Start names a directory that does not exist yet: an existing one
	// would be someone's token, served to whoever the request allows.
	if err := os.Mkdir(req.Dir, 0o700); err != nil {
		return fmt.Errorf("the daemon's directory must be new: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := daemon.HardenProcess(); err != nil {
		return err
	}
	d, err := devmode.New(req.Dir, req.Socket, "warn", "pkcs11")
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Allow(devmode.Callers{File: req.Config, UIDs: req.AllowUIDs}); err != nil {
		return err
	}
	log := daemon.NewLogger(d.Config.LogLevel)
	be, err := daemon.OpenBackend(ctx, d.Config, log)
	if err != nil {
		return err
	}
	defer be.Close()
	for _, k := range req.Keys {
		if _, err := be.CreateKey(ctx, k.Name, keys.Type(k.Type)); err != nil {
			return fmt.Errorf("create key %s: %w", k.Name, err)
		}
	}
	return daemon.Run(ctx, d.Config, d.Policy, be, daemon.Options{Logger: log, Ready: func(string) {
		fmt.Println(readyLine)
	}})
}
