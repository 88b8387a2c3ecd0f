package softhsmtest_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	softhsmtest "github.com/keyward/keyward/softhsm-test"
)

// TestProvisionOwnedDir: provision-token.sh --owner gives DIR to the
// daemon's user, who can then edit DIR/softhsm2.conf. A later run as root
// on that DIR is refused (that user could point root's chown and writes
// anywhere: its token directory at /etc); run as that user, it refuses a
// configuration whose token directory it did not write, and adds a
// token to one it did. A root-owned directory elsewhere is never touched.
func TestProvisionOwnedDir(t *testing.T) {
	softhsmtest.Need(t, tok)
	if os.Geteuid() != 0 {
		t.Skip("needs root (--owner)")
	}
	runuser := needTool(t, "runuser")
	base, err := os.MkdirTemp("", "keyward-provision-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	os.Chmod(base, 0o755)
	dir, victim := filepath.Join(base, "softhsm"), filepath.Join(base, "victim")
	if err := os.Mkdir(victim, 0o755); err != nil {
		t.Fatal(err)
	}
	script, _ := filepath.Abs("provision-token.sh")
	run := func(asNobody bool, args ...string) (string, error) {
		argv := append([]string{"bash", script, "--dir", dir}, args...)
		if asNobody {
			argv = append([]string{runuser, "-u", "nobody", "--"}, argv...)
		}
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Env = append(os.Environ(), "KEYWARD_PKCS11_MODULE="+tok.Module)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := run(false, "--owner", "nobody"); err != nil {
		t.Fatalf("first run: %v\n%s", err, out)
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	edit := func(tokendir string) {
		t.Helper()
		b, err := os.ReadFile(conf)
		if err != nil {
			t.Fatal(err)
		}
		var lines []string
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "directories.tokendir") {
				l = "directories.tokendir = " + tokendir
			}
			lines = append(lines, l)
		}
		if err := os.WriteFile(conf, []byte(strings.Join(lines, "\n")), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	edit(victim) // as the daemon's user could
	if out, err := run(false, "--label", "second", "--owner", "nobody", "--pin-file", filepath.Join(base, "pin2"), "--so-pin-file", filepath.Join(base, "so2")); err == nil ||
		!strings.Contains(out, "owned by nobody") {
		t.Fatalf("root on a DIR nobody owns: %v\n%s", err, out)
	}
	if out, err := run(true, "--label", "second", "--pin-file", filepath.Join(dir, "pin2"), "--so-pin-file", filepath.Join(dir, "so2")); err == nil ||
		!strings.Contains(out, "not written by") {
		t.Fatalf("a configuration pointing elsewhere: %v\n%s", err, out)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(victim, &st); err != nil || st.Uid != 0 || st.Mode&0o777 != 0o755 {
		t.Fatalf("the root-owned directory was changed: uid %d mode %o (%v)", st.Uid, st.Mode&0o777, err)
	}
	edit(filepath.Join(dir, "tokens"))
	if out, err := run(true, "--label", "second", "--pin-file", filepath.Join(dir, "pin2"), "--so-pin-file", filepath.Join(dir, "so2")); err != nil {
		t.Fatalf("adding a token as the owner: %v\n%s", err, out)
	}
	// Root in a directory of its own whose parent another user owns (a
	// state directory): refused, as that user can swap it.
	theirs := filepath.Join(base, "theirs")
	if err := os.Mkdir(theirs, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(theirs, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", script, "--dir", filepath.Join(theirs, "softhsm"), "--owner", "nobody")
	cmd.Env = append(os.Environ(), "KEYWARD_PKCS11_MODULE="+tok.Module)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "lets another user replace") {
		t.Fatalf("root under a directory nobody owns: %v\n%s", err, out)
	}
}
