package daemon

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"

	"github.com/keyward/keyward/hsm"
	"github.com/keyward/keyward/internal/secretfile"
	"github.com/keyward/keyward/policy"
)

// DevTokenLabel is the label of the token --dev makes.
const DevTokenLabel = "keyward-dev"

// Dev is what keywardd --dev runs on: a private SoftHSM2 token (random
// PINs, the user PIN in a 0600 file beside it), and a policy that allows
// the invoking uid every operation on every key. The token lives in a fresh
// temporary directory that Close removes, or in a directory the caller
// names, which is kept and reused on the next start.
type Dev struct {
	Dir    string
	Config Config
	Policy *policy.Policy
	keep   bool
}

// NewDev prepares the dev token and configuration in dir ("" for a fresh
// temporary directory). It sets SOFTHSM2_CONF for this process, so it must
// run before any PKCS#11 module is loaded.
func NewDev(dir, socketPath, logLevel string) (*Dev, error) {
	module, err := hsm.SoftHSMModule()
	if err != nil {
		return nil, err
	}
	d := &Dev{Dir: dir, keep: dir != ""}
	if dir == "" {
		if d.Dir, err = os.MkdirTemp("", "keyward-dev-"); err != nil {
			return nil, err
		}
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			d.Close()
		}
	}()
	tokens := filepath.Join(d.Dir, "tokens")
	conf := filepath.Join(d.Dir, "softhsm2.conf")
	pinFile := filepath.Join(d.Dir, "pin")
	_, statErr := os.Stat(pinFile)
	reuse := d.keep && statErr == nil
	if !reuse {
		if err := os.MkdirAll(tokens, 0o700); err != nil {
			return nil, err
		}
		body := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.mechanisms = ALL\n", tokens)
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			return nil, err
		}
	}
	if err := os.Setenv("SOFTHSM2_CONF", conf); err != nil {
		return nil, err
	}
	if !reuse {
		soPIN, userPIN := randomPIN(), randomPIN()
		defer secretfile.Zero(soPIN)
		defer secretfile.Zero(userPIN)
		if err := os.WriteFile(pinFile, userPIN, 0o600); err != nil {
			return nil, err
		}
		if err := hsm.InitToken(module, DevTokenLabel, soPIN, userPIN); err != nil {
			return nil, fmt.Errorf("dev token: %w", err)
		}
	}
	cfg := Defaults()
	cfg.Socket = socketPath
	cfg.LogLevel = logLevel
	cfg.Backend.Module = module
	cfg.Backend.Token = DevTokenLabel
	cfg.Backend.PINFile = pinFile
	cfg.AuditLog = filepath.Join(d.Dir, "audit.log")
	var ops []string
	for _, o := range append(append([]policy.Operation{}, policy.DataOperations...), policy.AdminOperations...) {
		ops = append(ops, string(o))
	}
	cfg.Rules = []policy.Rule{{Name: "dev: the invoking user may do everything", UIDs: []uint32{uint32(os.Getuid())}, Keys: []string{"**"}, Operations: ops}}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	pol, err := policy.Compile(cfg.Rules, policy.SystemResolver())
	if err != nil {
		return nil, err
	}
	d.Config, d.Policy = cfg, pol
	ok = true
	return d, nil
}

func randomPIN() []byte {
	b := make([]byte, 16)
	rand.Read(b)
	out := make([]byte, hex.EncodedLen(len(b)))
	hex.Encode(out, b)
	secretfile.Zero(b)
	return out
}

// Close removes the dev token and its directory, unless the caller named
// the directory.
func (d *Dev) Close() error {
	if d.keep {
		return nil
	}
	return os.RemoveAll(d.Dir)
}
