// Package devmode is what keywardd --dev runs on: a private SoftHSM2 token
// or TPM (the in-process simulator, or a swtpm child process) in a
// directory of its own, the configuration that uses it, and a policy that
// allows the invoking uid everything. It is kept out of the serving code:
// the daemon serves whatever configuration it is handed.
//
// Threat model: the dev directory holds the PINs and the TPM's seeds, so it
// is created 0700 and refused if it is a symlink or another user could write
// or move it (internal/safepath); its files are written 0600 without
// following a symlink. It is for a developer's machine, never for
// production keys.
package devmode

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/hsm"
	"github.com/keyward/keyward/internal/safepath"
	"github.com/keyward/keyward/internal/secretfile"
	"github.com/keyward/keyward/policy"
	"github.com/keyward/keyward/tpm"
)

// TokenLabel is the label of the token --dev makes.
const TokenLabel = "keyward-dev"

// Dev is what keywardd --dev runs on: a private device, and a policy that
// allows the invoking uid every operation on every key. The device is a
// SoftHSM2 token (random PINs, the user PIN in a 0600 file beside it) or a
// TPM: the in-process simulator in builds with -tags tpmsim, else a swtpm
// child process. Everything lives in a fresh temporary directory that Close
// removes, or in a directory the caller names, which is kept and reused on
// the next start (the same token, or the same TPM seeds, so that old blobs
// still unwrap).
type Dev struct {
	Dir    string
	Config config.Config
	Policy *policy.Policy
	// What names the device for the banner ("SoftHSM2 token", "TPM (swtpm)");
	// Device says where it is (never a PIN, an auth secret or a seed).
	What, Device string

	keep  bool
	lock  *os.File // TPM: held while the dev directory is in use
	swtpm *devSWTPM
}

// Dev directory layout for --backend tpm (beside the SoftHSM2 files, so one
// directory can serve both kinds):
const (
	devLock     = "dev.lock"     // flock: one keywardd --dev --backend tpm per directory
	devAuth     = "tpm-auth"     // the TPM auth secret: 32 random bytes, base64
	devSimSeed  = "tpm-sim-seed" // the simulator's seed (decimal uint64)
	devTPMState = "tpm-state"    // the backend's state directory
	devSWState  = "swtpm-state"  // swtpm's own state (its seeds: the TPM itself)
	devSWSock   = "swtpm.sock"   // swtpm's data channel; the control channel is .ctrl
	devSWLog    = "swtpm.log"
)

// New prepares the dev device and configuration in dir ("" for a fresh
// temporary directory). backend is "pkcs11" or "tpm". For pkcs11 it sets
// SOFTHSM2_CONF for this process, so it must run before any PKCS#11 module
// is loaded; for tpm on swtpm it starts swtpm, which Close stops.
func New(dir, socketPath, logLevel, backend string) (*Dev, error) {
	var module string
	switch backend {
	case "pkcs11":
		var err error
		if module, err = hsm.SoftHSMModule(); err != nil {
			return nil, err
		}
	case "tpm":
	default:
		return nil, fmt.Errorf("dev backend %q: want pkcs11 or tpm: %w", backend, config.ErrConfig)
	}
	d := &Dev{Dir: dir, keep: dir != ""}
	var err error
	if dir == "" {
		if d.Dir, err = os.MkdirTemp("", "keyward-dev-"); err != nil {
			return nil, err
		}
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	// Absolute: the configuration wants absolute paths (credentials_dir),
	// and a relative one would change meaning with the working directory.
	if d.Dir, err = filepath.Abs(d.Dir); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			d.Close()
		}
	}()
	if err := checkDevDir(d.Dir); err != nil {
		return nil, err
	}
	cfg := config.Defaults()
	cfg.Socket = socketPath
	cfg.LogLevel = logLevel
	cfg.AuditLog = filepath.Join(d.Dir, "audit.log")
	cfg.CredentialsDir = filepath.Join(d.Dir, "credstore")
	if backend == "pkcs11" {
		err = d.softHSM(&cfg, module)
	} else {
		err = d.tpm(&cfg)
	}
	if err != nil {
		return nil, err
	}
	cfg.Rules = []policy.Rule{{Name: "dev: the invoking user may do everything", UIDs: []uint32{uint32(os.Getuid())}, Keys: []string{"**"}, Operations: allOps()}}
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

// softHSM makes (or, in a kept directory, reuses) the SoftHSM2 token.
func (d *Dev) softHSM(cfg *config.Config, module string) error {
	tokens := filepath.Join(d.Dir, "tokens")
	conf := filepath.Join(d.Dir, "softhsm2.conf")
	pinFile := filepath.Join(d.Dir, "pin")
	reuse := d.keep && exists(pinFile)
	if !reuse {
		if err := os.MkdirAll(tokens, 0o700); err != nil {
			return err
		}
		body := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.mechanisms = ALL\n", tokens)
		if err := writeFile(conf, []byte(body), 0); err != nil {
			return fmt.Errorf("dev softhsm2.conf: %w", err)
		}
	}
	if err := checkDevDir(tokens); err != nil {
		return err
	}
	if err := os.Setenv("SOFTHSM2_CONF", conf); err != nil {
		return err
	}
	if !reuse {
		soPIN, userPIN := randomPIN(), randomPIN()
		defer secretfile.Zero(soPIN)
		defer secretfile.Zero(userPIN)
		if err := writeFile(pinFile, userPIN, os.O_EXCL); err != nil {
			return fmt.Errorf("dev pin: %w", err)
		}
		if err := hsm.InitToken(module, TokenLabel, soPIN, userPIN); err != nil {
			return fmt.Errorf("dev token: %w", err)
		}
	}
	cfg.Backend.Module = module
	cfg.Backend.Token = TokenLabel
	cfg.Backend.PINFile = pinFile
	d.What = "SoftHSM2 token"
	d.Device = fmt.Sprintf("pkcs11: token %s, module %s", TokenLabel, module)
	return nil
}

// tpm picks the dev TPM: the one a kept directory already has, else the
// in-process simulator when this build has it, else swtpm.
func (d *Dev) tpm(cfg *config.Config) error {
	dir, err := filepath.Abs(d.Dir) // device paths and state_dir must be absolute
	if err != nil {
		return err
	}
	lock, err := os.OpenFile(filepath.Join(dir, devLock), os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("dev directory lock: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("dev directory %s is in use by another keywardd --dev --backend tpm", dir)
		}
		return fmt.Errorf("dev directory lock: %w", err)
	}
	d.lock = lock

	authFile := filepath.Join(dir, devAuth)
	secret := make([]byte, 32)
	rand.Read(secret)
	enc := []byte(base64.StdEncoding.EncodeToString(secret) + "\n")
	clear(secret)
	err = writeNew(authFile, enc) // a kept directory keeps its secret
	clear(enc)
	if err != nil {
		return fmt.Errorf("dev tpm auth secret: %w", err)
	}

	seedFile := filepath.Join(dir, devSimSeed)
	swState := filepath.Join(dir, devSWState)
	haveSeed, haveSW := exists(seedFile), exists(swState)
	switch {
	case haveSeed || (!haveSW && tpm.HasSimulator()):
		if !tpm.HasSimulator() {
			return fmt.Errorf("dev directory %s holds an in-process TPM simulator's seed: run a keywardd built with -tags tpmsim, or use another --dev-dir", dir)
		}
		var b [8]byte
		rand.Read(b[:])
		if err := writeNew(seedFile, []byte(strconv.FormatUint(binary.BigEndian.Uint64(b[:]), 10)+"\n")); err != nil {
			return fmt.Errorf("dev tpm simulator seed: %w", err)
		}
		seed, err := secretfile.Read(seedFile)
		if err != nil {
			return fmt.Errorf("dev tpm simulator seed: %w", err)
		}
		cfg.Backend.Device = "sim:" + string(seed)
		d.What = "TPM (in-process simulator)"
		d.Device = fmt.Sprintf("tpm: device sim, the in-process simulator (its seed in %s)", seedFile)
	default:
		if _, err := exec.LookPath("swtpm"); err != nil {
			if haveSW {
				return fmt.Errorf("dev directory %s holds a swtpm TPM, but swtpm is not installed (make deps installs it)", dir)
			}
			return errors.New("--dev --backend tpm needs swtpm (make deps installs it) or a keywardd built with -tags tpmsim (the in-process simulator)")
		}
		sw, err := startSWTPM(dir)
		if err != nil {
			return err
		}
		d.swtpm = sw
		cfg.Backend.Device = "swtpm+unix:" + sw.sock
		d.What = "TPM (swtpm)"
		d.Device = fmt.Sprintf("tpm: device %s (swtpm pid %d, its state in %s)", cfg.Backend.Device, sw.cmd.Process.Pid, swState)
	}
	cfg.Backend.Kind = "tpm"
	cfg.Backend.StateDir = filepath.Join(dir, devTPMState)
	cfg.Backend.PINFile = authFile
	return nil
}

// devSWTPM is the swtpm child process of a TPM dev mode.
type devSWTPM struct {
	cmd  *exec.Cmd
	sock string
	done chan struct{} // closed once cmd has been waited for
}

// swtpmReady bounds swtpm's start.
const swtpmReady = 10 * time.Second

// startSWTPM runs swtpm on a Unix socket in dir, its state in
// dir/swtpm-state (kept with the directory: the same TPM seeds next time),
// and waits until the socket accepts connections.
func startSWTPM(dir string) (*devSWTPM, error) {
	sock := filepath.Join(dir, devSWSock)
	if n := len(sock + ".ctrl"); n >= len(unix.RawSockaddrUnix{}.Path) {
		return nil, fmt.Errorf("swtpm's socket path %s.ctrl is %d bytes, a Unix socket path holds at most %d: use a shorter --dev-dir",
			sock, n, len(unix.RawSockaddrUnix{}.Path)-1)
	}
	state := filepath.Join(dir, devSWState)
	if strings.ContainsRune(dir, ',') {
		return nil, fmt.Errorf("dev directory %q holds a comma, which swtpm's options cannot carry: use another --dev-dir", dir)
	}
	if err := os.MkdirAll(state, 0o700); err != nil {
		return nil, fmt.Errorf("swtpm state: %w", err)
	}
	if err := checkDevDir(state); err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, devSWLog)
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("swtpm log: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command("swtpm", "socket", "--tpm2",
		"--server", "type=unixio,path="+sock+",mode=0600",
		"--ctrl", "type=unixio,path="+sock+".ctrl,mode=0600",
		"--tpmstate", "dir="+state+",mode=0600",
		"--flags", "not-need-init,startup-clear")
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group: Ctrl-C in the terminal reaches keywardd only,
	// which drains its calls and then stops swtpm. Pdeathsig: no orphan if
	// keywardd is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start swtpm: %w", err)
	}
	sw := &devSWTPM{cmd: cmd, sock: sock, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(sw.done)
	}()
	deadline := time.Now().Add(swtpmReady)
	for {
		select {
		case <-sw.done:
			return nil, fmt.Errorf("swtpm exited at start (%v): %s", cmd.ProcessState, tail(logPath))
		default:
		}
		// swtpm serves one client at a time: the probe closes at once.
		if c, err := net.DialTimeout("unix", sock, 250*time.Millisecond); err == nil {
			c.Close()
			return sw, nil
		}
		if time.Now().After(deadline) {
			sw.stop()
			return nil, fmt.Errorf("swtpm did not accept on %s within %v: %s", sock, swtpmReady, tail(logPath))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stop ends swtpm (SIGTERM, then SIGKILL after 5 s) and waits for it.
func (s *devSWTPM) stop() {
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
}

// tail is the end of swtpm's log, for an error message.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	s := strings.TrimSpace(string(b))
	if len(s) > 2000 {
		s = s[len(s)-2000:]
	}
	if s == "" {
		return "(its log " + path + " is empty)"
	}
	return s
}

// checkDevDir refuses a dev directory (or one of its subdirectories) that
// is a symlink, or that a user other than root and this process's owns, can
// write or could move (internal/safepath): its token, PIN and TPM state would
// be theirs to read or replace.
func checkDevDir(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("dev directory: %w", err)
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("dev directory %s is a symlink: name the directory itself: %w", dir, config.ErrConfig)
	}
	if _, err := safepath.CheckDir(dir, uint32(os.Geteuid())); err != nil {
		return fmt.Errorf("dev directory %s: %w: %w", dir, config.ErrConfig, err)
	}
	return nil
}

// writeFile writes b to path, mode 0600, never through a symlink; flag
// adds os.O_EXCL to refuse an existing file (else it is truncated).
func writeFile(path string, b []byte, flag int) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|flag|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// writeNew writes b to a new 0600 file; an existing file is kept as it is.
func writeNew(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

func randomPIN() []byte {
	b := make([]byte, 16)
	rand.Read(b)
	out := make([]byte, hex.EncodedLen(len(b)))
	hex.Encode(out, b)
	secretfile.Zero(b)
	return out
}

// Close stops swtpm if dev mode started it (after the backend was closed),
// releases the directory, and removes it unless the caller named it.
func (d *Dev) Close() error {
	if d.swtpm != nil {
		d.swtpm.stop()
		d.swtpm = nil
	}
	if d.lock != nil {
		d.lock.Close()
		d.lock = nil
	}
	if d.keep {
		return nil
	}
	return os.RemoveAll(d.Dir)
}
