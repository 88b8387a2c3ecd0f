package softhsmtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyward/keyward/hsm"
)

// ErrNotInstalled reports that softhsm2-util or the SoftHSM2 PKCS#11 module
// cannot be found. Main and Need turn it into a skip (or, under CI, a failure).
var ErrNotInstalled = errors.New("softhsm2 is not installed")

// EnvModule overrides the PKCS#11 module path that ModulePath returns.
const EnvModule = "KEYWARD_PKCS11_MODULE"

// EnvConf is the variable SoftHSM2 reads its configuration file path from.
const EnvConf = "SOFTHSM2_CONF"

// notInstalledMsg is what a developer sees when SoftHSM2 is missing: the
// one command that fixes it.
const notInstalledMsg = "softhsm2 is not installed: run `make test`, which installs it (apt-get install softhsm2 opensc)"

// pinBytes is the number of random bytes in a PIN (hex encoded: 32 chars).
const pinBytes = 16

// initTimeout bounds one softhsm2-util run. softhsm2-util loops forever
// re-prompting when it reads EOF at a PIN prompt, so it must never be left
// to run unbounded.
const initTimeout = 60 * time.Second

// maxLabelLen is the PKCS#11 token label field size (CK_TOKEN_INFO.label).
const maxLabelLen = 32

// modulePaths: one list for the project, kept by the PKCS#11 backend.
var modulePaths = hsm.SoftHSMModules

// ModulePath returns the SoftHSM2 PKCS#11 module: $KEYWARD_PKCS11_MODULE if
// set (an error if that file does not exist: an explicit setting that is wrong
// is a mistake, not a missing package), else the first existing of the
// Debian/Ubuntu paths. It returns an error wrapping ErrNotInstalled when none
// exists.
func ModulePath() (string, error) {
	if p := os.Getenv(EnvModule); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("$%s: %w", EnvModule, err)
		}
		return p, nil
	}
	for _, p := range modulePaths {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: no libsofthsm2.so in %s", ErrNotInstalled, strings.Join(modulePaths, ", "))
}

// Token is a private SoftHSM2 configuration with one initialised token (Label,
// PIN, SOPIN) and possibly more added by InitToken.
type Token struct {
	Dir      string // private temporary directory (0700) holding everything below
	TokenDir string // directories.tokendir of the configuration
	ConfPath string // the softhsm2.conf that SOFTHSM2_CONF points at
	Module   string // PKCS#11 module path
	Label    string // label of the first token
	PIN      string // user PIN of the first token
	SOPIN    string // SO PIN, shared by every token of this configuration
	PINFile  string // file (0600) holding PIN, without a trailing newline

	mu       sync.Mutex
	dirs     map[string]string // label -> the token's own directory
	prevConf string
	hadPrev  bool
	closed   bool
	util     string
}

// New creates a private SoftHSM2 configuration in a new temporary directory,
// points SOFTHSM2_CONF at it and initialises a token called label with random
// user and SO PINs. The user PIN is also written to PINFile. Close undoes all
// of it.
func New(label string) (*Token, error) {
	if err := checkLabel(label); err != nil {
		return nil, err
	}
	util, err := exec.LookPath("softhsm2-util")
	if err != nil {
		return nil, fmt.Errorf("%w: softhsm2-util not found in $PATH", ErrNotInstalled)
	}
	module, err := ModulePath()
	if err != nil {
		return nil, err
	}
	if err := ptyAvailable(); err != nil {
		return nil, err
	}
	so, err := randomPIN()
	if err != nil {
		return nil, err
	}

	dir, err := os.MkdirTemp("", "keyward-softhsm-")
	if err != nil {
		return nil, fmt.Errorf("softhsmtest: %w", err)
	}
	t := &Token{
		Dir:      dir,
		TokenDir: filepath.Join(dir, "tokens"),
		ConfPath: filepath.Join(dir, "softhsm2.conf"),
		Module:   module,
		SOPIN:    so,
		PINFile:  filepath.Join(dir, "pin"),
		dirs:     map[string]string{},
		util:     util,
	}
	t.prevConf, t.hadPrev = os.LookupEnv(EnvConf)
	fail := func(err error) (*Token, error) {
		_ = t.Close()
		return nil, err
	}

	if err := os.Mkdir(t.TokenDir, 0o700); err != nil {
		return fail(fmt.Errorf("softhsmtest: %w", err))
	}
	conf := fmt.Sprintf("# written by keyward softhsmtest\n"+
		"directories.tokendir = %s\n"+
		"objectstore.backend = file\n"+
		"log.level = ERROR\n"+
		"slots.mechanisms = ALL\n", t.TokenDir)
	if err := os.WriteFile(t.ConfPath, []byte(conf), 0o600); err != nil {
		return fail(fmt.Errorf("softhsmtest: %w", err))
	}
	if err := os.Setenv(EnvConf, t.ConfPath); err != nil {
		return fail(fmt.Errorf("softhsmtest: %w", err))
	}

	pin, err := t.InitToken(label)
	if err != nil {
		return fail(err)
	}
	t.Label, t.PIN = label, pin
	if err := writeSecret(t.PINFile, pin); err != nil {
		return fail(err)
	}
	return t, nil
}

// InitToken initialises another token called label in the same configuration,
// with a fresh random user PIN (returned) and the configuration's SOPIN.
// Labels must be unique: keyward selects tokens by label.
func (t *Token) InitToken(label string) (pin string, err error) {
	if err := checkLabel(label); err != nil {
		return "", err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return "", errors.New("softhsmtest: InitToken on a closed Token")
	}
	if _, ok := t.dirs[label]; ok {
		return "", fmt.Errorf("softhsmtest: a token labelled %q already exists", label)
	}
	pin, err = randomPIN()
	if err != nil {
		return "", err
	}

	before, err := subdirs(t.TokenDir)
	if err != nil {
		return "", err
	}
	if err := t.runInit(label, pin); err != nil {
		return "", err
	}
	after, err := subdirs(t.TokenDir)
	if err != nil {
		return "", err
	}
	var added []string
	for _, d := range after {
		if !slices.Contains(before, d) {
			added = append(added, d)
		}
	}
	if len(added) != 1 {
		return "", fmt.Errorf("softhsmtest: init token %q: expected one new token directory in %s, found %d", label, t.TokenDir, len(added))
	}
	t.dirs[label] = filepath.Join(t.TokenDir, added[0])
	return pin, nil
}

// runInit runs softhsm2-util --init-token with the PINs typed into its
// terminal prompts rather than passed with --so-pin/--pin, which would put
// them on argv (readable by every user through /proc/PID/cmdline).
// softhsm2-util 2.6.1 reads a PIN only from a terminal (tcgetattr on stdin;
// a pipe makes it fail with "Could not get SO PIN"), hence the pty.
func (t *Token) runInit(label, pin string) error {
	ctx, cancel := context.WithTimeout(context.Background(), initTimeout)
	defer cancel()

	master, slave, err := openPTY()
	if err != nil {
		return fmt.Errorf("softhsmtest: init token %q: %w", label, err)
	}
	defer master.Close()

	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, t.util,
		"--init-token", "--free", "--label", label, "--module", t.Module)
	cmd.Env = append(withoutVar(os.Environ(), EnvConf), EnvConf+"="+t.ConfPath)
	cmd.Stdin = slave
	cmd.Stdout = &capWriter{buf: &out, max: 64 << 10}
	cmd.Stderr = cmd.Stdout
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		slave.Close()
		return fmt.Errorf("softhsmtest: init token %q: %w", label, err)
	}
	slave.Close()

	// SO PIN twice, then user PIN twice, as softhsm2-util prompts for them.
	// The slave has echo off, so nothing of this comes back on the master.
	_, werr := fmt.Fprintf(master, "%s\n%s\n%s\n%s\n", t.SOPIN, t.SOPIN, pin, pin)
	err = cmd.Wait()
	if err == nil && werr != nil {
		err = werr
	}
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (timed out after %s)", err, initTimeout)
		}
		msg := strings.TrimSpace(out.String())
		return fmt.Errorf("softhsmtest: softhsm2-util --init-token --label %q: %w: %s", label, err, msg)
	}
	return nil
}

// TokenDirOf returns the directory SoftHSM2 created for the token called
// label (one directory per token under TokenDir), as recorded at init time.
func (t *Token) TokenDirOf(label string) (string, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	d, ok := t.dirs[label]
	if !ok {
		return "", fmt.Errorf("softhsmtest: no token labelled %q", label)
	}
	return d, nil
}

// Close removes Dir and everything in it and restores the SOFTHSM2_CONF that
// was set before New. Calling it again does nothing.
func (t *Token) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	var errs []error
	if t.hadPrev {
		errs = append(errs, os.Setenv(EnvConf, t.prevConf))
	} else {
		errs = append(errs, os.Unsetenv(EnvConf))
	}
	if err := os.RemoveAll(t.Dir); err != nil {
		errs = append(errs, fmt.Errorf("softhsmtest: %w", err))
	}
	return errors.Join(errs...)
}

// Main is meant for TestMain: it creates a token labelled "keyward-test",
// stores it in *tok, runs the tests and closes the token. When SoftHSM2 is not
// installed it prints how to install it and, under CI ($CI set), fails; else
// it runs the tests with *tok nil, so that tests calling Need skip.
func Main(m *testing.M, tok **Token) int {
	t, err := New("keyward-test")
	switch {
	case errors.Is(err, ErrNotInstalled):
		if os.Getenv("CI") != "" {
			fmt.Fprintf(os.Stderr, "%s\n(%v)\n", notInstalledMsg, err)
			return 1
		}
		fmt.Fprintf(os.Stderr, "%s\n(%v; tests that need it are skipped)\n", notInstalledMsg, err)
		*tok = nil
		return m.Run()
	case err != nil:
		fmt.Fprintf(os.Stderr, "%v\n", err)
		return 1
	}
	*tok = t
	code := m.Run()
	if err := t.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "%v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// Need skips the test when there is no token (SoftHSM2 is not installed).
func Need(t testing.TB, tok *Token) {
	t.Helper()
	if tok == nil {
		t.Skip(notInstalledMsg)
	}
}

func checkLabel(label string) error {
	if label == "" || len(label) > maxLabelLen || strings.TrimSpace(label) != label {
		return fmt.Errorf("softhsmtest: token label %q: want 1..%d bytes without leading or trailing spaces", label, maxLabelLen)
	}
	return nil
}

func randomPIN() (string, error) {
	b := make([]byte, pinBytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("softhsmtest: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// writeSecret creates path 0600 (failing if it exists) and writes s.
func writeSecret(path, s string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("softhsmtest: %w", err)
	}
	_, err = f.WriteString(s)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("softhsmtest: %w", err)
	}
	return nil
}

func subdirs(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("softhsmtest: %w", err)
	}
	var names []string
	for _, e := range ents {
		if e.IsDir() {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

func withoutVar(env []string, name string) []string {
	return slices.DeleteFunc(slices.Clone(env), func(kv string) bool {
		return strings.HasPrefix(kv, name+"=")
	})
}

// capWriter keeps at most max bytes: softhsm2-util can print prompts in a
// loop, and only the start is useful in an error.
type capWriter struct {
	buf *bytes.Buffer
	max int
}

func (w *capWriter) Write(p []byte) (int, error) {
	if room := w.max - w.buf.Len(); room > 0 {
		w.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}
