// Package packaging_test builds the .deb with `make deb`, checks what it
// holds, and, as root or under CI, installs, reinstalls and purges it on
// this host (where systemd is not PID 1, as in CI containers).
package packaging_test

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

const (
	version = "0.0.0~test"
	pkg     = "keyward"
)

// wantFiles are the files the package must install.
var wantFiles = []string{
	"/usr/bin/keywardd",
	"/usr/bin/keywardd-admin",
	"/usr/bin/keyward",
	"/usr/lib/systemd/system/keyward.service",
	"/usr/lib/systemd/system/keyward.socket",
	"/usr/lib/systemd/system/keyward-credentials.socket",
	"/usr/lib/sysusers.d/keyward.conf",
	"/usr/lib/tmpfiles.d/keyward.conf",
	"/etc/keyward/keyward.toml",
	"/usr/share/doc/keyward/README.md",
	"/usr/share/doc/keyward/docs/audit-log.md",
	"/usr/share/doc/keyward/docs/backup-and-recovery.md",
	"/usr/share/doc/keyward/docs/cli.md",
	"/usr/share/doc/keyward/docs/configuration.md",
	"/usr/share/doc/keyward/docs/design.md",
	"/usr/share/doc/keyward/docs/envelope.md",
	"/usr/share/doc/keyward/docs/exit-codes.md",
	"/usr/share/doc/keyward/docs/operations.md",
	"/usr/share/doc/keyward/docs/performance.md",
	"/usr/share/doc/keyward/docs/security-model.md",
	"/usr/share/doc/keyward/docs/softhsm2-facts.md",
	"/usr/share/doc/keyward/docs/tpm.md",
	"/usr/share/doc/keyward/docs/systemd-credentials.md",
	"/usr/share/doc/keyward/keywardd.txt",
	"/usr/share/doc/keyward/keyward.txt",
	"/usr/share/doc/keyward/examples/systemd/tpm.conf",
	"/usr/share/doc/keyward/examples/systemd/network-hsm.conf",
	"/usr/share/doc/keyward/examples/systemd/softhsm2.conf",
	"/usr/share/doc/keyward/docs/other-languages.md",
	"/usr/share/doc/keyward/docs/ci.md",
	"/usr/share/doc/keyward/docs/breakglass.md",
	"/usr/share/doc/keyward/docs/access-review.md",
	"/usr/share/doc/keyward/docs/kubernetes-kms.md",
	"/usr/share/doc/keyward/docs/testing.md",
	"/usr/sbin/keyward-provision-softhsm2-token",
	"/usr/share/man/man1/keyward.1.gz",
	"/usr/share/man/man8/keywardd.8.gz",
	"/usr/share/keyward/prometheus/keyward-alerts.yml",
	"/usr/share/keyward/prometheus/keyward-alerts.test.yml",
}

func command(t *testing.T, name string, args ...string) string {
	t.Helper()
	var out, stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out.String(), stderr.String())
	}
	return out.String()
}

// buildDeb runs `make deb` in the repository and returns the package.
func buildDeb(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skip("dpkg-deb not found: not a Debian system")
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	command(t, "make", "-s", "-C", root, "deb", "DEB_VERSION="+version)
	arch := strings.TrimSpace(command(t, "go", "env", "GOARCH"))
	deb := filepath.Join(root, "bin", pkg+"_"+version+"_"+arch+".deb")
	if _, err := os.Stat(deb); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(deb) })
	return deb
}

// TestDeb: the package holds every file, the conffile, the scripts and
// only the dependency it needs; as root (or with CI set, through sudo) it
// installs, reinstalls keeping an edited conffile, and purges.
func TestDeb(t *testing.T) {
	deb := buildDeb(t)
	contents := command(t, "dpkg-deb", "--contents", deb)
	var paths []string
	for _, l := range strings.Split(contents, "\n") {
		f := strings.Fields(l)
		if len(f) >= 6 {
			paths = append(paths, strings.TrimSuffix(strings.TrimPrefix(f[5], "."), "/"))
		}
	}
	for _, f := range wantFiles {
		if !slices.Contains(paths, f) {
			t.Errorf("%s missing from the package:\n%s", f, contents)
		}
	}
	info := command(t, "dpkg-deb", "--info", deb)
	for _, want := range []string{"Package: keyward", "Version: " + version, "Depends: libc6 (>= 2.", "conffiles", "postinst", "prerm", "postrm"} {
		if !strings.Contains(info, want) {
			t.Errorf("control information lacks %q:\n%s", want, info)
		}
	}
	if strings.Contains(info, "Recommends:") {
		t.Errorf("the package recommends something (an HSM module is the site's choice):\n%s", info)
	}
	dir := t.TempDir()
	command(t, "dpkg-deb", "--control", deb, dir)
	if conf, _ := os.ReadFile(filepath.Join(dir, "conffiles")); strings.TrimSpace(string(conf)) != "/etc/keyward/keyward.toml" {
		t.Errorf("conffiles: %q", conf)
	}
	for _, s := range []string{"postinst", "prerm", "postrm"} {
		command(t, "sh", "-n", filepath.Join(dir, s))
	}

	t.Run("man", func(t *testing.T) { manPages(t, deb) })
	t.Run("install", func(t *testing.T) { install(t, deb) })
}

func install(t *testing.T, deb string) {
	var sudo []string
	switch {
	case os.Geteuid() == 0:
	case os.Getenv("CI") != "":
		sudo = []string{"sudo", "-n"}
	default:
		t.Skip("installing the package needs root (or CI set and passwordless sudo)")
	}
	as := func(name string, args ...string) string {
		t.Helper()
		if sudo != nil {
			return command(t, sudo[0], append(append(sudo[1:], name), args...)...)
		}
		return command(t, name, args...)
	}
	if st, _ := exec.Command("dpkg-query", "-W", "-f=${Status}", pkg).Output(); strings.Contains(string(st), "installed") {
		t.Skipf("package %s is already installed on this host (%s): not touching it", pkg, st)
	}
	// What the test must remove again if the package created it (purge
	// keeps users and state by design).
	_, hadUser := user.Lookup("keywardd")
	_, hadGroup := user.LookupGroup("keyward")
	_, hadState := os.Stat("/var/lib/keyward")
	_, hadLog := os.Stat("/var/log/keyward")
	quiet := func(name string, args ...string) {
		argv := append(append(slices.Clone(sudo), name), args...)
		exec.Command(argv[0], argv[1:]...).Run()
	}
	t.Cleanup(func() {
		quiet("dpkg", "--purge", pkg)
		if hadState != nil {
			quiet("rmdir", "/var/lib/keyward")
		}
		if hadLog != nil {
			quiet("rmdir", "/var/log/keyward")
		}
		if hadUser != nil {
			quiet("userdel", "keywardd")
		}
		if hadGroup != nil {
			quiet("groupdel", "keyward")
		}
	})

	as("dpkg", "-i", deb)
	for _, f := range wantFiles {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("installed: %v", err)
		}
	}
	u, err := user.Lookup("keywardd")
	if err != nil {
		t.Fatalf("postinst made no user keywardd: %v", err)
	}
	if _, err := user.LookupGroup("keyward"); err != nil {
		t.Fatalf("postinst made no group keyward: %v", err)
	}
	g, err := user.LookupGroup("keywardd")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path      string
		mode      os.FileMode
		uid, gid  string
		wantOwner string
	}{
		{"/etc/keyward", 0o750, "0", g.Gid, "root:keywardd"},
		{"/etc/keyward/keyward.toml", 0o640, "0", g.Gid, "root:keywardd"},
		{"/var/lib/keyward", 0o700, u.Uid, g.Gid, "keywardd:keywardd"},
		{"/var/log/keyward", 0o750, u.Uid, g.Gid, "keywardd:keywardd"},
		{"/usr/bin/keywardd", 0o755, "0", "0", "root:root"},
		{"/usr/bin/keywardd-admin", 0o755, "0", "0", "root:root"},
		{"/usr/bin/keyward", 0o755, "0", "0", "root:root"},
	} {
		fi, err := os.Stat(c.path)
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode().Perm() != c.mode || itoa(st.Uid) != c.uid || itoa(st.Gid) != c.gid {
			t.Errorf("%s: %04o %d:%d, want %04o %s", c.path, fi.Mode().Perm(), st.Uid, st.Gid, c.mode, c.wantOwner)
		}
	}
	// The installed daemon runs, and refuses the shipped config until a
	// token is named (exit 3: a restart cannot fix it).
	out, err := exec.Command("/usr/bin/keywardd", "--check-config").CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 || !strings.Contains(string(out), "set exactly one of token and uri") {
		t.Errorf("keywardd --check-config on the shipped config: %v: %s", err, out)
	}
	// The installed units verify with the installed binary.
	if analyze, err := exec.LookPath("systemd-analyze"); err == nil {
		var stderr bytes.Buffer
		cmd := exec.Command(analyze, "verify", "/usr/lib/systemd/system/keyward.socket", "/usr/lib/systemd/system/keyward.service")
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil || stderr.Len() > 0 {
			t.Errorf("systemd-analyze verify on the installed units: %v\n%s", err, stderr.String())
		}
	}

	// Reinstall (what an upgrade runs) with an edited conffile: the edit stays.
	edited := "# edited by the administrator\n"
	conf, _ := os.ReadFile("/etc/keyward/keyward.toml")
	if err := os.WriteFile("/etc/keyward/keyward.toml", append([]byte(edited), conf...), 0o640); err != nil {
		t.Fatal(err)
	}
	as("dpkg", "-i", deb)
	if b, _ := os.ReadFile("/etc/keyward/keyward.toml"); !strings.HasPrefix(string(b), edited) {
		t.Error("reinstalling replaced the administrator's /etc/keyward/keyward.toml")
	}

	provisionInstalled(t, as)
	links := enableUnits(t, as)

	// Purge: the files and the conffile go; state, log and users stay;
	// the units' enablement links go.
	as("dpkg", "--purge", pkg)
	for _, l := range links {
		if _, err := os.Lstat(l); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("after purge the link %s is still there (%v)", l, err)
		}
	}
	for _, f := range []string{"/usr/bin/keywardd", "/usr/lib/systemd/system/keyward.service", "/etc/keyward/keyward.toml"} {
		if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("after purge %s: %v", f, err)
		}
	}
	if _, err := os.Stat("/var/lib/keyward"); err != nil {
		t.Errorf("purge removed the state directory: %v", err)
	}
	if _, err := user.Lookup("keywardd"); err != nil {
		t.Errorf("purge removed the user: %v", err)
	}
}

func itoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }
