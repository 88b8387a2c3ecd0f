package swtpmtest

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestHarness(t *testing.T) {
	tests := []struct {
		name       string
		start      func(testing.TB) *SWTPM
		wantPrefix string
	}{
		{name: "tcp", start: Start, wantPrefix: "swtpm:127.0.0.1:"},
		{name: "unix", start: StartUnix, wantPrefix: "swtpm+unix:/"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := tt.start(t)
			dev := s.Device()
			if !strings.HasPrefix(dev, tt.wantPrefix) {
				t.Fatalf("Device() = %q, want prefix %q", dev, tt.wantPrefix)
			}
			if err := s.probeNow(); err != nil {
				t.Fatalf("fresh swtpm: %v", err)
			}
			if _, err := os.Stat(filepath.Join(s.StateDir(), "tpm2-00.permall")); err != nil {
				t.Fatalf("state dir: %v", err)
			}

			// An NV index defined before a crash is there after the restart:
			// Restart keeps the state. tpm2-tools also checks ToolsEnv.
			const nv = "0x1500016"
			tools(t, s, "tpm2_nvdefine", nv, "-C", "o", "-s", "8", "-a", "ownerread|ownerwrite")

			s.Kill()
			if err := s.probeNow(); err == nil {
				t.Fatal("killed swtpm still answers")
			}
			s.Kill() // twice is harmless

			s.Restart(t)
			if got := s.Device(); got != dev {
				t.Fatalf("Device() after Restart = %q, want %q", got, dev)
			}
			if err := s.probeNow(); err != nil {
				t.Fatalf("restarted swtpm: %v", err)
			}
			tools(t, s, "tpm2_nvreadpublic", nv)
		})
	}
}

// With a TMPDIR too long for socket paths, StartUnix falls back to /tmp.
func TestHarnessUnixLongTempDir(t *testing.T) {
	long := filepath.Join(t.TempDir(), strings.Repeat("d", 120))
	if err := os.Mkdir(long, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TMPDIR", long)
	s := StartUnix(t)
	if len(s.sock) > maxSocketPath {
		t.Fatalf("socket path %q is %d bytes", s.sock, len(s.sock))
	}
	if err := s.probeNow(); err != nil {
		t.Fatal(err)
	}
}

func TestHarnessPortsDiffer(t *testing.T) {
	a, b := Start(t), Start(t)
	if a.Device() == b.Device() {
		t.Fatalf("two swtpms on %s", a.Device())
	}
}

func (s *SWTPM) probeNow() error {
	if s.network == "unix" {
		return probe("unix", s.sock)
	}
	return probe("tcp", s.addr())
}

func tools(t *testing.T, s *SWTPM, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = s.ToolsEnv()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// A port taken between freePortPair and swtpm's bind: start reports swtpm's
// own words, which is what Start retries on.
func TestHarnessBindRace(t *testing.T) {
	Need(t)
	p, err := freePortPair()
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	s := newSWTPM(t, "tcp")
	s.port = p
	err = s.start()
	if err == nil || !strings.Contains(err.Error(), "Address already in use") {
		t.Fatalf("start on a taken port: %v, want swtpm's bind error", err)
	}
}

// probe sends TPM2_GetRandom(8) on the data channel and checks the answer.
func probe(network, addr string) error {
	c, err := net.DialTimeout(network, addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	getRandom := []byte{0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 8}
	if _, err := c.Write(getRandom); err != nil {
		return err
	}
	resp := make([]byte, 10+2+8)
	if _, err := io.ReadFull(c, resp); err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	if want := []byte{0x80, 0x01, 0, 0, 0, 20, 0, 0, 0, 0}; !bytes.Equal(resp[:10], want) {
		return fmt.Errorf("probe: unexpected answer % x", resp[:10])
	}
	return nil
}
