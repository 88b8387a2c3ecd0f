package keywardtest_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/keyward/keyward/client"
	"github.com/keyward/keyward/internal/testutil"
	"github.com/keyward/keyward/keywardtest"
)

// envClient makes this test binary a client (see init): it wraps with key
// "k" through the socket the variable names and exits 0, 3 when the policy
// refuses, 1 otherwise.
const envClient = "KEYWARDTEST_TEST_CLIENT"

func init() {
	sock, ok := os.LookupEnv(envClient)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, sock)
	if err == nil {
		_, err = c.Wrap(ctx, "k", []byte("x"), nil)
	}
	switch {
	case err == nil:
		os.Exit(0)
	case errors.Is(err, client.ErrPermissionDenied):
		os.Exit(3)
	}
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

// TestAllowUID: a client under another uid (with the test's group) reaches
// the socket; WithAllowUID's uid may wrap, another uid is refused by the
// policy.
func TestAllowUID(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to run a client as another uid")
	}
	bin, dir, err := testutil.CopySelf("kwt-client-", "client")
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err != nil {
		t.Fatal(err)
	}
	kw := keywardtest.Start(t, keywardtest.WithKey("k", "aes-256-gcm"), keywardtest.WithAllowUID(12345))
	for _, tc := range []struct {
		uid  uint32
		want int
	}{{12345, 0}, {12346, 3}} {
		cmd := exec.Command(bin)
		cmd.Env = append(os.Environ(), envClient+"="+kw.Socket)
		cmd.Dir = "/"
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: tc.uid, Gid: uint32(os.Getgid())}}
		out, err := cmd.CombinedOutput()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != tc.want {
			t.Errorf("uid %d: exit %d, want %d: %s", tc.uid, code, tc.want, out)
		}
	}
}
