// Package keywardtest starts a private keywardd for a test, the way
// net/http/httptest starts an HTTP server:
//
//	func TestSecrets(t *testing.T) {
//		kw := keywardtest.Start(t, keywardtest.WithKey("app/db", "aes-256-gcm"))
//		w, err := kw.Client.Wrap(context.Background(), "app/db", []byte("s3cr3t"), nil)
//		...
//	}
//
// Each Start makes a fresh SoftHSM2 token (random PINs) in the test's
// t.TempDir(), a daemon serving it on a private socket, and a ready
// *client.Client; t.Cleanup stops the daemon and removes everything. The
// policy is the test's (WithRules) or else one rule allowing the test's uid
// every operation on every key. Keys asked for with WithKey exist before
// the Client is handed over, whatever the policy says.
//
// The daemon is a child process: the test binary itself, started again
// with $KEYWARDTEST_DAEMON set and a pipe as fd 3, which this package's
// init recognises (it then serves and exits, and never runs the tests).
// The variable alone does nothing: it names the parent's pid, the pipe's
// inode and a one-time random nonce, and the request (the token's
// directory, the socket, the policy) comes only through the pipe, after
// the nonce. init serves only when its parent is still that pid, fd 3 is
// that pipe and the pipe starts with that nonce; otherwise a binary that
// imports this package runs normally, saying on stderr that it ignored the
// variable. Even then the token's directory must not exist yet (the child
// makes it): an existing one ends the child with an error. So setting the
// variable for a program cannot make it serve anyone's token. No keywardd
// binary is needed, each daemon has its own PKCS#11 module and SoftHSM2
// configuration (both are process-wide: one module per process, because
// C_Finalize is, and SoftHSM2 reads its configuration once), and tests
// calling Start may run in parallel. SoftHSM2 must be installed (Debian:
// softhsm2); $KEYWARD_PKCS11_MODULE overrides where its module is looked
// for. From Start to the answer of a first call takes about 25 ms (median
// of 20 on a 2-core machine at load average 2.8; 65-80 ms at load average
// 8: go test -bench StartToFirstCall -benchtime 20x ./keywardtest), so a
// daemon per test is affordable. New is the same without a test.
package keywardtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/keyward/keyward/client"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/policy"
)

// startTimeout bounds the wait for the daemon: it only ends a hang.
const startTimeout = 60 * time.Second

// Server is a running private keywardd.
type Server struct {
	// Socket is the daemon's Unix socket, for other clients (a child
	// process under test: KEYWARD_SOCKET=Socket).
	Socket string
	// Client is connected to Socket as the test's process.
	Client *client.Client
	// Dir holds the token, its PIN file, the audit log (audit.log) and the
	// daemon's log (keywardd.log); it is in t.TempDir().
	Dir string

	sockDir, ownDir, logPath string
	cmd                      *exec.Cmd
	done                     chan struct{}
	err                      error // the daemon's exit, once done is closed
}

// Option configures Start.
type Option func(*settings)

// keySpec is a key WithKey asks for.
type keySpec struct{ Name, Type string }

type settings struct {
	rules     []policy.Rule
	haveRules bool
	limits    string
	keys      []keySpec
	allowUIDs []uint32
	dialOpts  []client.Option
}

// WithRules makes rules the daemon's policy instead of the default (the
// test's uid allowed everything). policy.Rule is the config file's
// [[rule]]; with no rule at all, every call is denied.
func WithRules(rules ...policy.Rule) Option {
	return func(s *settings) { s.rules, s.haveRules = append(s.rules, rules...), true }
}

// WithLimits sets the daemon's [limits] from TOML key = value lines (as in
// keywardd's config file, e.g. "max_batch = 10").
func WithLimits(toml string) Option {
	return func(s *settings) { s.limits += toml + "\n" }
}

// WithKey creates the key name of type keyType ("aes-256-gcm",
// "hmac-sha256", "ecdsa-p256", "rsa-3072-pss", "ed25519") before the
// daemon serves, whatever the policy allows.
func WithKey(name, keyType string) Option {
	return func(s *settings) { s.keys = append(s.keys, keySpec{name, keyType}) }
}

// WithAllowUID also allows uid every operation on every key (for a client
// the test runs under another uid). The socket is 0660 in the test
// process's group, in a directory anyone may pass through: run that client
// with the test's gid (syscall.Credential{Uid: uid, Gid: uint32(os.Getgid())}).
func WithAllowUID(uid uint32) Option {
	return func(s *settings) { s.allowUIDs = append(s.allowUIDs, uid) }
}

// WithDialOptions passes options to client.Dial for Server.Client.
func WithDialOptions(opts ...client.Option) Option {
	return func(s *settings) { s.dialOpts = append(s.dialOpts, opts...) }
}

// Start runs a private keywardd for t and returns it once its Client is
// connected. It fails the test (t.Fatal) when the daemon cannot start, and
// t.Cleanup stops it (Close) and removes everything; the daemon's log is
// shown when the test failed.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	dir := t.TempDir()
	srv, err := start(dir, opts)
	if err != nil {
		t.Fatalf("keywardtest: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("keywardtest: %v", err)
		}
		if t.Failed() {
			if b, err := os.ReadFile(srv.logPath); err == nil && len(b) > 0 {
				t.Logf("keywardtest: the daemon's log:\n%s", b)
			}
		}
	})
	return srv
}

// New is Start without a test (for examples, TestMain, or a server shared by
// several tests): the caller must Close the Server, which also removes its
// temporary directory.
func New(opts ...Option) (*Server, error) {
	dir, err := os.MkdirTemp("", "keywardtest-")
	if err != nil {
		return nil, err
	}
	srv, err := start(dir, opts)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	srv.ownDir = dir
	return srv, nil
}

// start runs the daemon with its files in dir; on an error, whatever it
// started is stopped.
func start(dir string, opts []Option) (_ *Server, err error) {
	var s settings
	for _, o := range opts {
		o(&s)
	}
	for _, k := range s.keys {
		if err := keys.ValidateName(k.Name); err != nil {
			return nil, fmt.Errorf("WithKey(%q): %w", k.Name, err)
		}
		if _, err := keys.ParseType(k.Type); err != nil {
			return nil, fmt.Errorf("WithKey(%q, %q): %w", k.Name, k.Type, err)
		}
	}
	// A socket path has at most 108 bytes, and t.TempDir() can be longer.
	sockDir, err := os.MkdirTemp("", "kwt-")
	if err != nil {
		return nil, err
	}
	// Others may pass through to the socket (0660, the test's group): a
	// client the test runs under another uid, allowed by WithAllowUID or
	// WithRules, needs that group too.
	if err := os.Chmod(sockDir, 0o711); err != nil {
		os.RemoveAll(sockDir)
		return nil, err
	}
	srv := &Server{Socket: filepath.Join(sockDir, "k.sock"), Dir: filepath.Join(dir, "dev"), sockDir: sockDir,
		logPath: filepath.Join(dir, "keywardd.log"), done: make(chan struct{})}
	defer func() {
		if err != nil {
			srv.Close()
		}
	}()
	req := childRequest{Dir: srv.Dir, Socket: srv.Socket, Keys: s.keys, AllowUIDs: s.allowUIDs}
	if req.Config, err = writePolicy(dir, s); err != nil {
		return nil, err
	}
	if err := srv.launch(req); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if srv.Client, err = client.Dial(ctx, srv.Socket, s.dialOpts...); err != nil {
		return nil, err
	}
	return srv, nil
}

// writePolicy writes the rules and limits as a keywardd config file for
// the daemon (--dev --config's form); "" when the defaults stand.
func writePolicy(dir string, s settings) (string, error) {
	if !s.haveRules && s.limits == "" {
		return "", nil
	}
	rules := s.rules
	if !s.haveRules {
		rules = []policy.Rule{everything(uint32(os.Getuid()))}
	}
	b, err := toml.Marshal(struct {
		Rules []policy.Rule `toml:"rule"`
	}{rules})
	if err != nil {
		return "", err
	}
	if s.limits != "" {
		b = append([]byte("[limits]\n"+s.limits+"\n"), b...)
	}
	path := filepath.Join(dir, "policy.toml")
	return path, os.WriteFile(path, b, 0o600)
}

// everything is a rule allowing uid every operation on every key.
func everything(uid uint32) policy.Rule {
	var ops []string
	for _, o := range append(append([]policy.Operation{}, policy.DataOperations...), policy.AdminOperations...) {
		ops = append(ops, string(o))
	}
	return policy.Rule{Name: fmt.Sprintf("keywardtest: uid %d may do everything", uid), UIDs: []uint32{uid}, Keys: []string{"**"}, Operations: ops}
}

// launch starts the child and waits for its "ready" line.
func (s *Server) launch(req childRequest) error {
	logPath := s.logPath
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	log, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer log.Close()
	h, err := newHandoff(req)
	if err != nil {
		return err
	}
	s.cmd = exec.Command(exe)
	s.cmd.Env = append(childEnv(), h.env)
	s.cmd.ExtraFiles = []*os.File{h.r}
	s.cmd.Stderr = log
	// Should the test process die without Close, the kernel stops the daemon.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	out, err := s.cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := s.cmd.Start(); err != nil {
		h.abandon()
		return fmt.Errorf("start the daemon: %w", err)
	}
	if err := h.send(); err != nil {
		// The child cannot serve without its request: it exits, and the
		// wait below reports it.
		fmt.Fprintf(log, "keywardtest: send the daemon its request: %v\n", err)
		s.cmd.Process.Kill()
	}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		line := ""
		if sc.Scan() {
			line = sc.Text()
		}
		ready <- line
		io.Copy(io.Discard, out)
		s.err = s.cmd.Wait()
		close(s.done)
	}()
	select {
	case line := <-ready:
		if line == readyLine {
			return nil
		}
		<-s.done
		b, _ := os.ReadFile(logPath)
		return fmt.Errorf("the daemon did not start (%v): %s", s.err, strings.TrimSpace(string(b)))
	case <-time.After(startTimeout):
		s.cmd.Process.Kill()
		return fmt.Errorf("the daemon did not start within %v", startTimeout)
	}
}

// childEnv is this process's environment without what would make the
// daemon take a socket from systemd or notify it.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", envChild:
			continue
		}
		env = append(env, kv)
	}
	return env
}

// Close closes the Client and stops the daemon (SIGTERM: it drains, then
// removes its socket), and removes the Server's temporary files. Start's
// t.Cleanup calls it; calling it earlier is fine, and so is calling it
// twice. It reports a daemon that did not exit cleanly.
func (s *Server) Close() error {
	defer func() {
		os.RemoveAll(s.sockDir)
		if s.ownDir != "" {
			os.RemoveAll(s.ownDir)
		}
	}()
	if s.cmd == nil || s.cmd.Process == nil {
		return nil
	}
	if s.Client != nil {
		s.Client.Close()
	}
	select {
	case <-s.done:
	default:
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(startTimeout):
			s.cmd.Process.Kill()
			<-s.done
			return errors.New("the daemon did not stop on SIGTERM; killed")
		}
	}
	if s.err != nil {
		return fmt.Errorf("the daemon exited: %w", s.err)
	}
	return nil
}
