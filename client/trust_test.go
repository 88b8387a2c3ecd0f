//go:build linux

package client_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"

	keywardv1 "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/client"

	"github.com/keyward/keyward/internal/testutil"
)

// The test binary doubles as a daemon run as another uid: with helperEnv
// set, TestMain listens on the socket it is given as fd 3 and serves the
// Keyward API, counting every byte it receives; when its stdin closes it
// prints the count and exits.
const helperEnv = "KEYWARD_CLIENT_TEST_HELPER"

// otherUID is the uid the impostor runs as: neither root nor the test's.
const otherUID = 4242

// helperBin is a copy of the test binary that other uids may run.
var helperBin string

// dialEnv makes the test binary a client of the socket it names (see
// dialClient).
const dialEnv = "KEYWARD_CLIENT_TEST_DIAL"

func TestMain(m *testing.M) {
	if p := os.Getenv(dialEnv); p != "" {
		dialClient(p)
		os.Exit(0)
	}
	if os.Getenv(helperEnv) != "" {
		os.Exit(testutil.ServeStandIn(func(g *grpc.Server) { keywardv1.RegisterKeywardServer(g, &flaky{}) }))
	}
	bin, dir, err := testutil.CopySelf("keyward-client-helper-", "client.test")
	helperBin = bin
	if err != nil {
		fmt.Fprintln(os.Stderr, "copy test binary:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// impostor starts the helper as uid, listening on path (bound as root).
// stop ends it and returns how many bytes it was sent.
func impostor(t *testing.T, path string, uid int) (stop func() int64) {
	t.Helper()
	return testutil.StartStandIn(t, helperBin, helperEnv, path, uint32(uid))
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI runs as root; this test needs it to run a daemon as another uid")
		}
		t.Skip("needs root to run a daemon as another uid")
	}
}

// TestUntrustedDaemon: a daemon running as a uid the client does not expect
// gets nothing, not even the HTTP/2 preface, and Dial says why. Owning the
// socket file and its directory earns no trust: whoever listens made both.
func TestUntrustedDaemon(t *testing.T) {
	requireRoot(t)
	tests := []struct {
		name string
		// setup returns the socket path to bind in dir and the one to dial.
		setup   func(t *testing.T, dir string) (bind, dial string)
		chown   bool // give the socket file to the impostor's uid
		opts    []client.Option
		wantErr error
	}{
		{"socket owned by root, daemon as another uid", plain, false, nil, client.ErrUntrustedDaemon},
		{"daemon as the socket file's owner", plain, true, nil, client.ErrUntrustedDaemon},
		{"socket and its 0755 directory owned by the daemon's uid", func(t *testing.T, dir string) (string, string) {
			d := filepath.Join(dir, "evil")
			if err := os.Mkdir(d, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(d, otherUID, otherUID); err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(d, "kw.sock")
			return p, p
		}, true, nil, client.ErrUntrustedDaemon},
		{"socket path is a symlink", func(t *testing.T, dir string) (string, string) {
			p := filepath.Join(dir, "real.sock")
			l := filepath.Join(dir, "k.sock")
			if err := os.Symlink(p, l); err != nil {
				t.Fatal(err)
			}
			return p, l
		}, true, nil, client.ErrUntrustedDaemon},
		{"configured uid", plain, false, []client.Option{client.WithDaemonUID(otherUID)}, nil},
		{"another configured uid", plain, true, []client.Option{client.WithDaemonUID(otherUID + 1)}, client.ErrUntrustedDaemon},
		{"packaged daemon user", plain, false, []client.Option{passwd(t, otherUID)}, nil},
		{"packaged daemon user is another uid", plain, false, []client.Option{passwd(t, otherUID+1)}, client.ErrUntrustedDaemon},
		{"configured uid and packaged user both another uid", plain, false,
			[]client.Option{passwd(t, otherUID+1), client.WithDaemonUID(otherUID + 2)}, client.ErrUntrustedDaemon},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bind, path := tt.setup(t, t.TempDir())
			stop := impostor(t, bind, otherUID)
			if tt.chown {
				if err := os.Lchown(bind, otherUID, -1); err != nil {
					t.Fatal(err)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			opts := append([]client.Option{passwd(t, 0)}, tt.opts...)
			c, err := client.Dial(ctx, path, opts...)
			if err == nil {
				_, err = c.Wrap(ctx, "k", []byte("plaintext"), nil)
				c.Close()
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Dial and Wrap: %v, want %v", err, tt.wantErr)
			}
			n := stop()
			if tt.wantErr != nil {
				t.Log(err)
				if n != 0 {
					t.Errorf("the impostor received %d bytes", n)
				}
				if !containsAll(err.Error(), path, strconv.Itoa(otherUID)) || errors.Is(err, client.ErrUnavailable) {
					t.Errorf("error %q: want one naming the socket and the uid, not ErrUnavailable", err)
				}
			}
		})
	}
}

// passwd writes a passwd file where the packaged daemon user has uid (none
// for 0) and returns the option that makes the client read it.
func passwd(t *testing.T, uid int) client.Option {
	p := filepath.Join(t.TempDir(), "passwd")
	lines := "root:x:0:0:root:/root:/bin/sh\nkeywardd-not:x:4242:4242::/:/bin/false\n"
	if uid != 0 {
		lines += fmt.Sprintf("%s:x:%d:%d:keyward key daemon:/var/lib/keyward:/usr/sbin/nologin\n", client.DaemonUser, uid, uid)
	}
	if err := os.WriteFile(p, []byte(lines), 0o644); err != nil {
		t.Fatal(err)
	}
	return client.WithPasswdFile(p)
}

// TestDaemonAsOwnUID: a client running as a non-root uid trusts a daemon
// running as that same uid (a user's own dev daemon) and refuses one run by
// another non-root uid, both from real processes.
func TestDaemonAsOwnUID(t *testing.T) {
	requireRoot(t)
	dir, err := os.MkdirTemp("", "keyward-client-own-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		clientUID int
		want      string
	}{{otherUID, "ok"}, {otherUID + 1, "untrusted"}} {
		t.Run(strconv.Itoa(tc.clientUID), func(t *testing.T) {
			path := filepath.Join(dir, strconv.Itoa(tc.clientUID)+".sock")
			stop := impostor(t, path, otherUID)
			if err := os.Chmod(path, 0o666); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(helperBin)
			cmd.Env = append(os.Environ(), dialEnv+"="+path)
			cmd.Dir = "/"
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(tc.clientUID), Gid: uint32(tc.clientUID)}}
			out, err := cmd.CombinedOutput()
			n := stop()
			if err != nil || !strings.HasPrefix(string(out), tc.want) {
				t.Fatalf("client as uid %d: %q, %v; want %q", tc.clientUID, out, err, tc.want)
			}
			if tc.want != "ok" && n != 0 {
				t.Errorf("the stand-in received %d bytes", n)
			}
		})
	}
}

// dialClient is the client side of TestDaemonAsOwnUID: wrap through path
// and print "ok", "untrusted" and the error, or the error alone.
func dialClient(path string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, path)
	if err == nil {
		_, err = c.Wrap(ctx, "k", []byte("plaintext"), nil)
		c.Close()
	}
	switch {
	case err == nil:
		fmt.Println("ok")
	case errors.Is(err, client.ErrUntrustedDaemon):
		fmt.Println("untrusted:", err)
	default:
		fmt.Println(err)
	}
}

func plain(t *testing.T, dir string) (string, string) {
	p := filepath.Join(dir, "k.sock")
	return p, p
}

// TestUntrustedDaemonNotRetried: the daemon restarts and, meanwhile, another
// uid answers on its socket. The wrap in flight is not sent to it, and not
// retried: it fails with ErrUntrustedDaemon, and so does every later call,
// even once the real daemon is back.
func TestUntrustedDaemonNotRetried(t *testing.T) {
	requireRoot(t)
	path := filepath.Join(t.TempDir(), "k.sock")
	real := &flaky{}
	start := func() *grpc.Server {
		l, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		g := grpc.NewServer()
		keywardv1.RegisterKeywardServer(g, real)
		go g.Serve(l)
		return g
	}
	g := start()
	c := dial(t, path, client.WithRetry(5, time.Millisecond))
	ctx := context.Background()
	if _, err := c.Wrap(ctx, "k", []byte("one"), nil); err != nil {
		t.Fatal(err)
	}
	g.Stop()

	stop := impostor(t, path, otherUID)
	_, err := c.Wrap(ctx, "k", []byte("plaintext"), nil)
	if !errors.Is(err, client.ErrUntrustedDaemon) {
		t.Fatalf("Wrap with an impostor on the socket: %v, want ErrUntrustedDaemon", err)
	}
	if n := stop(); n != 0 {
		t.Errorf("the impostor received %d bytes", n)
	}
	os.Remove(path)
	g = start()
	defer g.Stop()
	if _, err := c.Wrap(ctx, "k", []byte("plaintext"), nil); !errors.Is(err, client.ErrUntrustedDaemon) {
		t.Errorf("Wrap after the real daemon is back: %v, want ErrUntrustedDaemon", err)
	}
	if got := real.wraps.Load(); got != 1 {
		t.Errorf("the real daemon got %d wraps, want only the first", got)
	}
}
