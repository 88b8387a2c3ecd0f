package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"

	keywardv1 "github.com/keyward/keyward/api/keyward/v1"

	"github.com/keyward/keyward/internal/testutil"
)

// impostorEnv makes the test binary a daemon stand-in (see serveImpostor).
const impostorEnv = "KEYWARD_CLI_TEST_IMPOSTOR"

// impostorUID is the uid the stand-in runs as.
const impostorUID = 4242

// emptyKeyring answers ListKeys with no keys.
type emptyKeyring struct {
	keywardv1.UnimplementedKeywardServer
}

func (emptyKeyring) ListKeys(context.Context, *keywardv1.ListKeysRequest) (*keywardv1.ListKeysResponse, error) {
	return &keywardv1.ListKeysResponse{}, nil
}

// serveImpostor serves an empty keyring as a stand-in daemon.
func serveImpostor() int {
	return testutil.ServeStandIn(func(g *grpc.Server) { keywardv1.RegisterKeywardServer(g, emptyKeyring{}) })
}

var copyOnce sync.Once
var impostorBin string

// startImpostor binds a root-owned socket at path and serves it from a
// copy of the test binary run as impostorUID. stop returns the bytes it got.
func startImpostor(t *testing.T, path string) (stop func() int64) {
	t.Helper()
	copyOnce.Do(func() {
		self, err := os.Executable()
		if err != nil {
			return
		}
		b, err := os.ReadFile(self)
		if err != nil {
			return
		}
		p := filepath.Join(binDir, "impostor")
		if os.WriteFile(p, b, 0o755) == nil {
			impostorBin = p
		}
	})
	if impostorBin == "" {
		t.Fatal("could not copy the test binary")
	}
	return testutil.StartStandIn(t, impostorBin, impostorEnv, path, impostorUID)
}

// TestDaemonUID: a socket served by a uid that is neither root nor this
// process's is refused before anything is sent, even when that uid owns the
// socket file, unless --daemon-uid or $KEYWARD_DAEMON_UID names that uid.
func TestDaemonUID(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to run a daemon stand-in as another uid")
	}
	uid := strconv.Itoa(impostorUID)
	tests := []struct {
		name     string
		env      string // $KEYWARD_DAEMON_UID
		args     []string
		wantCode int
		want     string // on stderr
	}{
		{"default: root or this uid", "", nil, exitFailed, "runs as uid " + uid},
		{"flag", "", []string{"--daemon-uid", uid}, exitOK, ""},
		{"environment", uid, nil, exitOK, ""},
		{"flag beats environment", uid, []string{"--daemon-uid", "0"}, exitFailed, "runs as uid " + uid},
		{"environment names another uid", "4343", nil, exitFailed, "or uid 4343 (as configured)"},
		{"unknown user", "", []string{"--daemon-uid", "no-such-user-keyward"}, exitUsage, "--daemon-uid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "k.sock")
			stop := startImpostor(t, path)
			t.Setenv(envDaemonUID, tt.env)
			var stdout, stderr bytes.Buffer
			args := append([]string{"--socket", path}, tt.args...)
			code := run(context.Background(), append(args, "key", "list"), strings.NewReader("secret"), &stdout, &stderr)
			n := stop()
			if code != tt.wantCode || !strings.Contains(stderr.String(), tt.want) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, stderr.String(), tt.wantCode, tt.want)
			}
			if tt.wantCode != exitOK && n != 0 {
				t.Errorf("the stand-in received %d bytes", n)
			}
		})
	}
}
