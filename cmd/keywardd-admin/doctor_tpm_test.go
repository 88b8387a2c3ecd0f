package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/tpm"
	"github.com/keyward/keyward/tpm/swtpmtest"
)

func writeFile0600(t *testing.T, path, content string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// snapshotDir maps every file under dir to its content.
func snapshotDir(t *testing.T, dir string) map[string]string {
	t.Helper()
	files := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		files[p] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestTokenDoctorTPM: keys made through a TPM backend on swtpm, then the
// doctor run as a command (the backend closed: swtpm serves one client)
// reports every object with the attributes the TPM gives it, as a table and
// as JSON, and changes nothing in the state directory.
func TestTokenDoctorTPM(t *testing.T) {
	sw := swtpmtest.Start(t)
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	auth := writeFile0600(t, filepath.Join(dir, "auth"), testAuth+"\n")
	ctx := context.Background()
	be, err := tpm.Open(ctx, tpm.Config{Device: sw.Device(), StateDir: state, PINFile: auth})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []struct {
		name string
		ty   keys.Type
	}{{"app/aes", keys.AES256GCM}, {"app/sig", keys.ECDSAP256}} {
		if _, err := be.CreateKey(ctx, k.name, k.ty); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := be.RotateKey(ctx, "app/aes"); err != nil {
		t.Fatal(err)
	}
	if err := be.Close(); err != nil {
		t.Fatal(err)
	}
	before := snapshotDir(t, state)
	args := []string{"doctor", "--tpm-device", sw.Device(), "--state-dir", state, "--pin-file", auth}

	t.Run("table", func(t *testing.T) {
		r := kwd(t, nil, args...)
		if r.code != 0 || r.stderr != "" {
			t.Fatalf("exit %d, stderr %q\n%s", r.code, r.stderr, r.stdout)
		}
		lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
		if want := fmt.Sprintf("tpm %s, state directory %s: 2 keys, 4 objects checked, no findings", sw.Device(), state); lines[0] != want {
			t.Errorf("summary %q, want %q", lines[0], want)
		}
		if !regexp.MustCompile(`^pinned parent [0-9a-f]{68}$`).MatchString(lines[1]) {
			t.Errorf("parent line %q", lines[1])
		}
		if !regexp.MustCompile(`^rollback counter: NV index 0x01[0-3][0-9a-f]{5} at (\d+), manifest.json at \d+: consistent$`).MatchString(lines[2]) {
			t.Errorf("rollback counter line %q", lines[2])
		}
		if !regexp.MustCompile(`^KEY +VERSION +OBJECT NAME +ATTRIBUTES$`).MatchString(lines[3]) {
			t.Errorf("header %q", lines[3])
		}
		const attrs = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|sign"
		rows := map[string]bool{}
		for _, l := range lines[4:] {
			f := strings.Fields(l)
			if len(f) < 4 {
				t.Errorf("row %q", l)
				continue
			}
			key, ver, name, attr := strings.Join(f[:len(f)-3], " "), f[len(f)-3], f[len(f)-2], f[len(f)-1]
			rows[key+" "+ver] = true
			if attr != attrs {
				t.Errorf("%s v%s: attributes %q, want %q", key, ver, attr, attrs)
			}
			if !regexp.MustCompile(`^000b[0-9a-f]{64}$`).MatchString(name) {
				t.Errorf("%s v%s: object name %q, want a SHA-256 name", key, ver, name)
			}
		}
		for _, want := range []string{"(keyring key) -", "app/aes 1", "app/aes 2", "app/sig 1"} {
			if !rows[want] {
				t.Errorf("no row for %q:\n%s", want, r.stdout)
			}
		}
	})
	t.Run("json", func(t *testing.T) {
		r := kwd(t, nil, append(args, "--json")...)
		if r.code != 0 || r.stderr != "" {
			t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
		}
		var rep tpm.Report
		dec := json.NewDecoder(strings.NewReader(r.stdout))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&rep); err != nil {
			t.Fatalf("json: %v\n%s", err, r.stdout)
		}
		if rep.Device != sw.Device() || rep.StateDir != state || rep.Keys != 2 || len(rep.Objects) != 4 || rep.Findings == nil || len(rep.Findings) != 0 || rep.Parent == "" ||
			!strings.HasSuffix(rep.Rollback, ": consistent") {
			t.Errorf("report %+v, want 2 keys, 4 objects, findings []", rep)
		}
		for _, o := range rep.Objects {
			if !strings.HasPrefix(o.Attributes, "fixedtpm|fixedparent|sensitivedataorigin") {
				t.Errorf("%s v%d: attributes %q", o.Key, o.Version, o.Attributes)
			}
		}
	})
	t.Run("module in the environment does not count as --module", func(t *testing.T) {
		r := kwd(t, map[string]string{envModule: "/usr/lib/softhsm/libsofthsm2.so"}, args...)
		if r.code != 0 {
			t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
		}
	})
	t.Run("secret from the credentials directory", func(t *testing.T) {
		creds := t.TempDir()
		writeFile0600(t, filepath.Join(creds, "pin"), testAuth)
		r := kwd(t, map[string]string{"CREDENTIALS_DIRECTORY": creds}, args[:len(args)-2]...)
		if r.code != 0 {
			t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
		}
	})
	if after := snapshotDir(t, state); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("doctor changed the state directory")
	}

	// The refusals, each with its exit status.
	edited := filepath.Join(dir, "edited")
	if err := os.CopyFS(edited, os.DirFS(state)); err != nil {
		t.Fatal(err)
	}
	rec := filepath.Join(edited, "keys", "app%2Fsig.json")
	b, err := os.ReadFile(rec)
	if err != nil {
		t.Fatal(err)
	}
	writeFile0600(t, rec, strings.Replace(string(b), `"state": "enabled"`, `"state": "disabled"`, 1))
	empty := filepath.Join(dir, "empty")
	if err := os.Mkdir(empty, 0o700); err != nil {
		t.Fatal(err)
	}
	other := swtpmtest.Start(t)
	wrong := writeFile0600(t, filepath.Join(dir, "wrong"), "keyward-test-tpm-auth-secret-02")
	short := writeFile0600(t, filepath.Join(dir, "short"), "15-bytes-secret")
	tests := []struct {
		name     string
		device   string
		stateDir string
		pinFile  string
		code     int
		want     string
	}{
		{"wrong auth secret", sw.Device(), state, wrong, adminPermission, tpm.ErrCredential.Error()},
		{"auth secret too short", sw.Device(), state, short, exitUsage, "at least 16 needed"},
		{"state directory not initialised", sw.Device(), empty, auth, exitUsage, "not initialised"},
		{"no such state directory", sw.Device(), filepath.Join(dir, "absent"), auth, exitUsage, "not initialised"},
		{"edited record", sw.Device(), edited, auth, adminFailed, "fails its MAC"},
		{"another TPM", other.Device(), state, auth, adminFailed, "differs from the one pinned"},
		{"no TPM there", "swtpm:127.0.0.1:1", state, auth, adminUnavailable, "connection refused"},
		{"bad device", "tpm0", state, auth, exitUsage, `tpm device "tpm0"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := kwd(t, nil, "doctor", "--tpm-device", tt.device, "--state-dir", tt.stateDir, "--pin-file", tt.pinFile)
			if r.code != tt.code {
				t.Errorf("exit %d, want %d (stderr %q)", r.code, tt.code, r.stderr)
			}
			checkErrLine(t, r, tt.want)
			if strings.Contains(r.stderr+r.stdout, testAuth) {
				t.Error("the auth secret was printed")
			}
		})
	}
}

// TestExitCodeTPM: the TPM backend's sentinels, wrapped as tpm wraps them.
func TestExitCodeTPM(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want int
	}{
		{"auth refused", fmt.Errorf("open: %w", tpm.ErrCredential), adminPermission},
		{"bad setting", fmt.Errorf("state directory not set: %w", tpm.ErrConfig), exitUsage},
		{"no simulator", tpm.ErrNoSimulator, exitUsage},
		{"tpm away", fmt.Errorf("%w: swtpm: refused: %w", tpm.ErrTransport, keys.ErrUnavailable), adminUnavailable},
		{"tpm transport only", fmt.Errorf("%w: no response", tpm.ErrTransport), adminUnavailable},
		{"parent mismatch", fmt.Errorf("%w: %w", tpm.ErrParentMismatch, keys.ErrIntegrity), adminFailed},
		{"other", errors.New("boom"), adminFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := adminExit(tt.err); got != tt.want {
				t.Errorf("adminExit(%v) = %d, want %d", tt.err, got, tt.want)
			}
		})
	}
}

// TestDefineCounterCommand: a TPM whose owner authorisation is set, with a
// persistent parent as such a TPM needs: keywardd's first start stops at
// the rollback counter, `keywardd define-counter` defines it with the
// owner's authorisation from a file, the backend then opens, and doctor
// (with --parent-handle) reports the counter consistent.
func TestDefineCounterCommand(t *testing.T) {
	sw := swtpmtest.Start(t)
	const handle = 0x81000012
	ownerAuth := "owner-authorisation-of-the-it-team"
	conn, err := tpm.Dial(sw.Device())
	if err != nil {
		t.Fatal(err)
	}
	owner := tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)}
	p, err := (tpm2.CreatePrimary{PrimaryHandle: owner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}).Execute(conn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (tpm2.EvictControl{Auth: owner, ObjectHandle: &tpm2.NamedHandle{Handle: p.ObjectHandle, Name: p.Name}, PersistentHandle: handle}).Execute(conn); err != nil {
		t.Fatal(err)
	}
	(tpm2.FlushContext{FlushHandle: p.ObjectHandle}).Execute(conn)
	if _, err := (tpm2.HierarchyChangeAuth{AuthHandle: owner, NewAuth: tpm2.TPM2BAuth{Buffer: []byte(ownerAuth)}}).Execute(conn); err != nil {
		t.Fatal(err)
	}
	conn.Close()

	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	auth := writeFile0600(t, filepath.Join(dir, "auth"), testAuth+"\n")
	ownerFile := writeFile0600(t, filepath.Join(dir, "owner"), ownerAuth+"\n")
	cfg := tpm.Config{Device: sw.Device(), StateDir: state, PINFile: auth, ParentHandle: handle}
	if _, err := tpm.Open(context.Background(), cfg); !errors.Is(err, tpm.ErrOwnerAuth) || !strings.Contains(hint(err), "keywardd define-counter") {
		t.Fatalf("first start with the owner authorisation set: %v", err)
	}
	args := []string{"define-counter", "--tpm-device", sw.Device(), "--state-dir", state, "--pin-file", auth,
		"--parent-handle", fmt.Sprintf("0x%08x", handle), "--owner-auth-file", ownerFile}
	r := kwd(t, nil, args...)
	if r.code != 0 || !regexp.MustCompile(`^rollback counter of .*: NV index 0x01[0-3][0-9a-f]{5} defined; keywardd's next start takes it into use\n$`).MatchString(r.stdout) {
		t.Fatalf("define-counter: exit %d\nstdout %q\nstderr %q", r.code, r.stdout, r.stderr)
	}
	be, err := tpm.Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("start after define-counter: %v", err)
	}
	if _, err := be.CreateKey(context.Background(), "app/k", keys.AES256GCM); err != nil {
		t.Fatal(err)
	}
	be.Close()
	if r := kwd(t, nil, args...); r.code != 0 || !strings.Contains(r.stdout, "defined already") {
		t.Fatalf("define-counter again: exit %d, %q %q", r.code, r.stdout, r.stderr)
	}
	r = kwd(t, nil, "doctor", "--tpm-device", sw.Device(), "--state-dir", state, "--pin-file", auth, "--parent-handle", fmt.Sprintf("0x%08x", handle))
	if r.code != 0 || !regexp.MustCompile(`(?m)^rollback counter: NV index 0x01[0-3][0-9a-f]{5} at \d+, manifest.json at \d+: consistent$`).MatchString(r.stdout) {
		t.Fatalf("doctor: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	// Counter and manifest removed (with the owner's authorisation): the
	// next start refuses; --trust-current-state accepts the state as it is.
	m := regexp.MustCompile(`NV index (0x[0-9a-f]{8})`).FindStringSubmatch(r.stdout)
	idx, _ := strconv.ParseUint(m[1], 0, 32)
	conn, err = tpm.Dial(sw.Device())
	if err != nil {
		t.Fatal(err)
	}
	pub, err := (tpm2.NVReadPublic{NVIndex: tpm2.TPMHandle(idx)}).Execute(conn)
	if err == nil {
		_, err = (tpm2.NVUndefineSpace{AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth([]byte(ownerAuth))},
			NVIndex: tpm2.NamedHandle{Handle: tpm2.TPMHandle(idx), Name: pub.NVName}}).Execute(conn)
	}
	conn.Close()
	if err != nil {
		t.Fatalf("undefine %s: %v", m[1], err)
	}
	os.Remove(filepath.Join(state, "manifest.json"))
	if _, err := tpm.Open(context.Background(), cfg); !errors.Is(err, tpm.ErrHistoryLost) || !strings.Contains(hint(err), "--trust-current-state") {
		t.Fatalf("start with counter and manifest removed: %v", err)
	}
	trust := []string{"define-counter", "--tpm-device", sw.Device(), "--state-dir", state, "--pin-file", auth,
		"--parent-handle", fmt.Sprintf("0x%08x", handle), "--owner-auth-file", ownerFile, "--trust-current-state"}
	if r := kwd(t, nil, trust...); r.code != 0 || !strings.Contains(r.stdout, "consistent (defined at this start)") {
		t.Fatalf("define-counter --trust-current-state: exit %d, %q %q", r.code, r.stdout, r.stderr)
	}
	if be, err := tpm.Open(context.Background(), cfg); err != nil {
		t.Fatalf("start after --trust-current-state: %v", err)
	} else {
		be.Close()
	}

	// A wrong owner authorisation: refused, exit as an authorisation failure.
	writeFile0600(t, ownerFile, "not-the-owner-authorisation\n")
	os.RemoveAll(state)
	if _, err := tpm.Open(context.Background(), cfg); err == nil {
		t.Fatal("a fresh state directory opened with the owner authorisation set")
	}
	if r := kwd(t, nil, args...); r.code == 0 || !strings.Contains(r.stderr, "refuses the owner authorisation") {
		t.Fatalf("define-counter with a wrong owner authorisation: exit %d, %q", r.code, r.stderr)
	}
}
