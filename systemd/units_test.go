// Package systemd_test checks keyward's units, sysusers.d and tmpfiles.d
// with systemd's own tools, offline: systemd is not PID 1 in CI.
package systemd_test

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/keyward/keyward/config"
)

// maxExposure is the highest `systemd-analyze security` score keyward.service
// may have (0 is best, 10 worst; 1.0 still reads "SAFE").
const maxExposure = 1.0

var keywardd string // built once, for ExecStart=

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "keyward-units-")
	if err != nil {
		panic(err)
	}
	keywardd = filepath.Join(dir, "keywardd")
	if out, err := exec.Command("go", "build", "-o", keywardd, "../cmd/keywardd").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build keywardd: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s not found: make test installs it (Debian package systemd)", name)
		}
		t.Skipf("%s not found: run `make test`, which installs it (Debian package systemd)", name)
	}
	return p
}

// stage copies the units into a temporary directory with ExecStart= naming
// the keywardd just built (systemd-analyze verify checks that the binary
// exists), and dropIns as keyward.service.d/NAME, which systemd-analyze
// loads from beside the unit file.
func stage(t *testing.T, dropIns ...string) string {
	t.Helper()
	dir := t.TempDir()
	svc, err := os.ReadFile("keyward.service")
	if err != nil {
		t.Fatal(err)
	}
	const exec = "\nExecStart=/usr/bin/keywardd "
	if !bytes.Contains(svc, []byte(exec)) {
		t.Fatalf("keyward.service has no %q", strings.TrimSpace(exec))
	}
	svc = bytes.Replace(svc, []byte(exec), []byte("\nExecStart="+keywardd+" "), 1)
	write(t, filepath.Join(dir, "keyward.service"), svc)
	sock, err := os.ReadFile("keyward.socket")
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "keyward.socket"), sock)
	for _, d := range dropIns {
		b, err := os.ReadFile(d)
		if err != nil {
			t.Fatal(err)
		}
		os.MkdirAll(filepath.Join(dir, "keyward.service.d"), 0o755)
		write(t, filepath.Join(dir, "keyward.service.d", filepath.Base(d)), b)
	}
	return dir
}

func write(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func run(t *testing.T, name string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var o, e bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &o, &e
	cmd.Env = append(os.Environ(), "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0")
	err = cmd.Run()
	return o.String(), e.String(), err
}

// TestVerify: systemd-analyze verify accepts the units, alone and with each
// drop-in example, without a word on stderr (unknown keys are only
// warnings there, with exit status 0).
func TestVerify(t *testing.T) {
	analyze := tool(t, "systemd-analyze")
	examples, _ := filepath.Glob("examples/*.conf")
	if len(examples) == 0 {
		t.Fatal("no drop-in examples in examples/")
	}
	cases := map[string][]string{"units": nil}
	for _, e := range examples {
		cases["with "+filepath.Base(e)] = []string{e}
	}
	for name, dropIns := range cases {
		t.Run(name, func(t *testing.T) {
			dir := stage(t, dropIns...)
			_, stderr, err := run(t, analyze, "verify", filepath.Join(dir, "keyward.socket"), filepath.Join(dir, "keyward.service"))
			if err != nil || stderr != "" {
				t.Fatalf("systemd-analyze verify: %v\n%s", err, stderr)
			}
		})
	}
}

var exposureRE = regexp.MustCompile(`Overall exposure level for keyward\.service: ([0-9.]+) `)

func exposure(t *testing.T, analyze, dir string) (float64, string) {
	t.Helper()
	out, stderr, err := run(t, analyze, "security", "--offline=true", "--no-pager", filepath.Join(dir, "keyward.service"))
	m := exposureRE.FindStringSubmatch(out)
	if err != nil || m == nil {
		t.Fatalf("systemd-analyze security: %v\n%s%s", err, out, stderr)
	}
	score, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return score, out
}

// TestSecurityScore: keyward.service scores at most maxExposure. The
// drop-in examples relax it on purpose; their scores are only printed.
func TestSecurityScore(t *testing.T) {
	analyze := tool(t, "systemd-analyze")
	score, out := exposure(t, analyze, stage(t))
	t.Logf("systemd-analyze security --offline=true keyward.service: %.1f", score)
	if score > maxExposure {
		t.Errorf("exposure %.1f, want <= %.1f:\n%s", score, maxExposure, out)
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "✗") {
			t.Logf("  %s", strings.Join(strings.Fields(line), " "))
		}
	}
	examples, _ := filepath.Glob("examples/*.conf")
	for _, e := range examples {
		s, _ := exposure(t, analyze, stage(t, e))
		t.Logf("with %s: %.1f", filepath.Base(e), s)
	}
}

// TestSysusersTmpfiles applies sysusers.d and tmpfiles.d to an empty root
// and checks the users, groups, modes and owners they produce.
func TestSysusersTmpfiles(t *testing.T) {
	sysusers, tmpfiles := tool(t, "systemd-sysusers"), tool(t, "systemd-tmpfiles")
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	abs := func(p string) string { a, _ := filepath.Abs(p); return a }
	if _, stderr, err := run(t, sysusers, "--root="+root, abs("sysusers.d/keyward.conf")); err != nil {
		t.Fatalf("systemd-sysusers: %v\n%s", err, stderr)
	}
	users := readIDs(t, filepath.Join(root, "etc/passwd"))
	groups := readIDs(t, filepath.Join(root, "etc/group"))
	uid, ok := users["keywardd"]
	if !ok {
		t.Fatalf("no user keywardd: %v", users)
	}
	daemonGID, ok1 := groups["keywardd"]
	_, ok2 := groups["keyward"]
	if !ok1 || !ok2 {
		t.Fatalf("groups %v, want keywardd and keyward", groups)
	}
	if _, ok := users["keyward"]; ok {
		t.Error("a user keyward: the client group must not be a user's")
	}
	// The pin credential and the conffile exist before tmpfiles runs, as after
	// an installation; their modes are set by the z lines.
	os.MkdirAll(filepath.Join(root, "etc/keyward"), 0o755)
	write(t, filepath.Join(root, "etc/keyward/keyward.toml"), nil)
	write(t, filepath.Join(root, "etc/keyward/pin.cred"), nil)
	if _, stderr, err := run(t, tmpfiles, "--root="+root, "--create", abs("tmpfiles.d/keyward.conf")); err != nil || stderr != "" {
		t.Fatalf("systemd-tmpfiles: %v\n%s", err, stderr)
	}
	tests := []struct {
		path     string
		mode     os.FileMode
		uid, gid int
	}{
		{"etc/keyward", 0o750, 0, daemonGID},
		{"etc/keyward/keyward.toml", 0o640, 0, daemonGID},
		{"etc/keyward/pin.cred", 0o600, 0, 0},
		{"var/lib/keyward", 0o700, uid, daemonGID},
		{"var/log/keyward", 0o750, uid, daemonGID},
	}
	for _, tt := range tests {
		fi, err := os.Stat(filepath.Join(root, tt.path))
		if err != nil {
			t.Errorf("%s: %v", tt.path, err)
			continue
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode().Perm() != tt.mode || int(st.Uid) != tt.uid || int(st.Gid) != tt.gid {
			t.Errorf("/%s: %04o %d:%d, want %04o %d:%d", tt.path, fi.Mode().Perm(), st.Uid, st.Gid, tt.mode, tt.uid, tt.gid)
		}
	}
}

// readIDs maps the names in a passwd or group file to their third field.
func readIDs(t *testing.T, path string) map[string]int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) < 3 {
			continue
		}
		id, _ := strconv.Atoi(f[2])
		out[f[0]] = id
	}
	return out
}

// unitValues returns every value of key in a unit file.
func unitValues(t *testing.T, path, key string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, key+"="); ok {
			out = append(out, v)
		}
	}
	return out
}

// TestUnitsMatchTheDaemon: the names the units, sysusers.d, tmpfiles.d and
// keywardd's defaults share agree.
func TestUnitsMatchTheDaemon(t *testing.T) {
	def := config.Defaults()
	checks := []struct {
		file, key string
		want      []string
	}{
		{"keyward.socket", "ListenStream", []string{def.Socket}},
		{"keyward.socket", "FileDescriptorName", []string{def.SystemdSocketName}},
		{"keyward.socket", "SocketGroup", []string{"keyward"}},
		{"keyward.socket", "SocketMode", []string{"0660"}},
		{"keyward.service", "ExecStart", []string{"/usr/bin/keywardd --config " + config.DefaultConfigPath}},
		{"keyward.service", "User", []string{"keywardd"}},
		{"keyward.service", "Type", []string{"notify"}},
		{"keyward.service", "NotifyAccess", []string{"main"}},
		{"keyward.service", "ProtectProc", []string{"default"}},
		// Not 2: Go's exit status after a panic.
		{"keyward.service", "RestartPreventExitStatus", []string{"3 4 5"}},
		{"keyward.service", "ReadWritePaths", []string{"/var/lib/keyward /var/log/keyward", "-" + def.CredentialsDir}},
		{"keyward-credentials.socket", "ListenStream", []string{"/run/keyward/credentials.sock"}},
		{"keyward-credentials.socket", "FileDescriptorName", []string{"credentials"}},
		{"keyward-credentials.socket", "Service", []string{"keyward.service"}},
		{"keyward-credentials.socket", "SocketMode", []string{"0600"}},
		{"keyward.service", "LoadCredentialEncrypted", []string{"pin:/etc/keyward/pin.cred"}},
		{"keyward.service", "MemoryMax", []string{"1G"}},
		{"keyward.service", "MemoryHigh", []string{"768M"}},
		{"keyward.service", "Environment", []string{"GOMEMLIMIT=640MiB"}},
	}
	for _, c := range checks {
		if got := unitValues(t, c.file, c.key); strings.Join(got, "|") != strings.Join(c.want, "|") {
			t.Errorf("%s: %s=%q, want %q", c.file, c.key, got, c.want)
		}
	}
	if v := unitValues(t, "keyward.service", "PrivateUsers"); len(v) != 0 {
		t.Errorf("PrivateUsers=%v: it maps callers' supplementary groups to nogroup", v)
	}
}
