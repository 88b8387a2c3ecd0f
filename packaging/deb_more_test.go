package packaging_test

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// manPages checks that keyward(1) and keywardd(8) in the package are valid
// roff (groff renders them without a warning) and say what the commands'
// --help says: the NAME line, the sections, every command of each.
func manPages(t *testing.T, deb string) {
	groff, err := exec.LookPath("groff")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("groff not found (make deps installs groff-base): the man pages must be checked under CI")
		}
		t.Skip("groff not found: run `make test`, which installs groff-base")
	}
	root := t.TempDir()
	command(t, "dpkg-deb", "-x", deb, root)
	for _, c := range []struct {
		page string
		want []string
	}{
		{"usr/share/man/man1/keyward.1.gz", []string{"KEYWARD(1)", "NAME", "keyward - use and manage keys", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "keyward key create", "keyward wrap", "keyward status", "EXIT STATUS", "SEE ALSO", "keywardd(8)"}},
		{"usr/share/man/man8/keywardd.8.gz", []string{"KEYWARDD(8)", "NAME", "keywardd - the keyward key daemon", "SYNOPSIS", "keywardd --dev", "--check-config", "COMMANDS", "keywardd doctor", "EXIT STATUS", "SEE ALSO", "keyward(1)"}},
	} {
		roff := gunzip(t, filepath.Join(root, c.page))
		var out, stderr bytes.Buffer
		cmd := exec.Command(groff, "-man", "-Tutf8", "-ww", "-rLL=100n")
		cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(roff), &out, &stderr
		cmd.Env = append(os.Environ(), "LC_ALL=C.UTF-8")
		if err := cmd.Run(); err != nil || stderr.Len() > 0 {
			t.Errorf("groff %s: %v\n%s", c.page, err, stderr.String())
		}
		// Plain text: no overstrike, hyphens as typed.
		text := regexp.MustCompile(".\b").ReplaceAllString(out.String(), "")
		text = strings.NewReplacer("‐", "-", "−", "-").Replace(text)
		text = regexp.MustCompile(` +`).ReplaceAllString(text, " ") // justified lines
		for _, w := range c.want {
			if !strings.Contains(text, w) {
				t.Errorf("%s does not show %q:\n%s", c.page, w, text)
			}
		}
	}
	// Every command keyward's and keywardd's help list has its section;
	// keywardd's device commands have their own exit statuses (keyward's,
	// not the daemon's), under EXIT STATUS.
	for _, c := range []struct{ bin, page string }{
		{"usr/bin/keyward", "usr/share/man/man1/keyward.1.gz"},
		{"usr/bin/keywardd", "usr/share/man/man8/keywardd.8.gz"},
	} {
		name := filepath.Base(c.bin)
		out, err := exec.Command(filepath.Join(root, c.bin), "--help").CombinedOutput() // keywardd's is on stderr
		if err != nil {
			t.Fatalf("%s --help: %v\n%s", name, err, out)
		}
		page := string(gunzip(t, filepath.Join(root, c.page)))
		re := regexp.MustCompile(`(?m)^  ` + name + ` ((?:key|policy|audit|credential|breakglass) [a-z-]+|[a-z][a-z-]*)`)
		n := 0
		for _, m := range re.FindAllStringSubmatch(string(out), -1) {
			if m[1] == "help" || strings.HasPrefix(m[1], "completion") {
				continue
			}
			n++
			if !strings.Contains(page, `.SS "`+name+` `+strings.ReplaceAll(m[1], "-", `\-`)+`"`) {
				t.Errorf("%s has no section for %q", c.page, m[1])
			}
			if _, exit, _ := strings.Cut(page, ".SH EXIT STATUS\n"); name == "keywardd" && !strings.Contains(exit, strings.ReplaceAll("keywardd "+m[1], "-", `\-`)) {
				t.Errorf("%s: the exit statuses of %q are not under EXIT STATUS:\n%s", c.page, m[1], exit)
			}
		}
		if n == 0 {
			t.Errorf("%s --help lists no command:\n%s", name, out)
		}
	}
}

func gunzip(t *testing.T, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	b, err := io.ReadAll(z)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return b
}

// provisionInstalled runs the installed SoftHSM2 provisioning script: it
// makes a token and its PIN files, as docs/operations.md tells an operator.
func provisionInstalled(t *testing.T, as func(string, ...string) string) {
	t.Helper()
	if _, err := exec.LookPath("softhsm2-util"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("softhsm2-util not found (make deps installs softhsm2)")
		}
		t.Log("softhsm2 not installed: the installed provisioning script is not run")
		return
	}
	dir := filepath.Join(t.TempDir(), "softhsm")
	out := as("/usr/sbin/keyward-provision-softhsm2-token", "--dir", dir, "--label", "keyward-deb-test")
	if out != "export SOFTHSM2_CONF="+dir+"/softhsm2.conf\n" {
		t.Errorf("keyward-provision-softhsm2-token printed %q", out)
	}
	for _, f := range []string{"pin", "so-pin"} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil || fi.Mode().Perm() != 0o600 || fi.Size() < 8 {
			t.Errorf("%s after provisioning: %v %v", f, fi, err)
		}
	}
	entries, err := os.ReadDir(filepath.Join(dir, "tokens"))
	if err != nil || len(entries) != 1 {
		t.Errorf("tokens/ after provisioning: %d entries, %v", len(entries), err)
	}
}

// enableUnits enables the units as an administrator would (systemctl
// enable, which works on the files without a running systemd) and returns
// the links it made.
func enableUnits(t *testing.T, as func(string, ...string) string) []string {
	t.Helper()
	links := []string{"/etc/systemd/system/sockets.target.wants/keyward.socket"}
	if _, err := exec.LookPath("systemctl"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("systemctl not found (make deps installs systemd)")
		}
		t.Log("systemctl not found: purging is not checked against enabled units")
		return nil
	}
	t.Cleanup(func() { // should purge leave them, the host does not keep them
		for _, l := range links {
			if target, err := os.Readlink(l); err == nil && strings.HasSuffix(target, "/keyward.socket") {
				os.Remove(l)
			}
		}
	})
	as("systemctl", "enable", "keyward.service")
	for _, l := range links {
		if target, err := os.Readlink(l); err != nil || !strings.HasSuffix(target, "/keyward.socket") {
			t.Fatalf("systemctl enable keyward.service made no link %s: %q %v", l, target, err)
		}
	}
	return links
}
