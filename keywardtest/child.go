package keywardtest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/keyward/keyward/daemon"
	"github.com/keyward/keyward/devmode"
	"github.com/keyward/keyward/keys"
)

// envChild, when set, makes a process that links this package serve as
// the daemon Start asked for (its value: a childRequest in JSON) instead
// of running its tests.
const envChild = "KEYWARDTEST_DAEMON"

// readyLine is what the child writes on stdout once it serves.
const readyLine = "keywardtest: ready"

// childRequest is what the test asks of its daemon. No secret is in it:
// the child makes the token's PINs itself.
type childRequest struct {
	Dir, Socket string
	Config      string // a config file with the rules and limits; "" for the defaults
	Keys        []keySpec
	AllowUIDs   []uint32
}

func init() {
	spec, ok := os.LookupEnv(envChild)
	if !ok {
		return
	}
	os.Unsetenv(envChild)
	if err := serveChild(spec); err != nil {
		fmt.Fprintf(os.Stderr, "keywardtest daemon: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// serveChild is the daemon's life: keywardd --dev on a token in req.Dir,
// with the test's policy, the keys asked for, until SIGTERM.
func serveChild(spec string) error {
	var req childRequest
	if err := json.Unmarshal([]byte(spec), &req); err != nil {
		return fmt.Errorf("request: %w", err)
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
