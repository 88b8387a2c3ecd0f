package softhsmtest_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	softhsmtest "github.com/keyward/keyward/softhsm-test"
)

var tok *softhsmtest.Token

func TestMain(m *testing.M) { os.Exit(softhsmtest.Main(m, &tok)) }

// needTool returns the path of a command-line tool the test needs, skipping
// when it is missing outside CI and failing under CI (where `make test` must
// have installed it).
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s not found: make deps installs it", name)
		}
		t.Skipf("%s not found: make deps installs it", name)
	}
	return p
}

// pkcs11Tool runs pkcs11-tool against tok's module with tok's configuration.
// extraEnv lets a PIN travel as `--pin env:NAME` instead of on argv.
func pkcs11Tool(t *testing.T, tk *softhsmtest.Token, extraEnv []string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(needTool(t, "pkcs11-tool"), append([]string{"--module", tk.Module}, args...)...)
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+tk.ConfPath)
	cmd.Env = append(cmd.Env, extraEnv...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestMainToken(t *testing.T) {
	softhsmtest.Need(t, tok)

	if got := os.Getenv("SOFTHSM2_CONF"); got != tok.ConfPath {
		t.Errorf("SOFTHSM2_CONF = %q, want %q", got, tok.ConfPath)
	}
	out, err := pkcs11Tool(t, tok, nil, "--list-slots")
	if err != nil {
		t.Fatalf("pkcs11-tool --list-slots: %v\n%s", err, out)
	}
	if !strings.Contains(out, "token label        : "+tok.Label) {
		t.Errorf("pkcs11-tool --list-slots does not show token %q:\n%s", tok.Label, out)
	}

	fi, err := os.Stat(tok.PINFile)
	if err != nil {
		t.Fatal(err)
	}
	if mode := fi.Mode().Perm(); mode != 0o600 {
		t.Errorf("PINFile mode = %#o, want 0600", mode)
	}
	fi, err = os.Stat(tok.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if mode := fi.Mode().Perm(); mode != 0o700 {
		t.Errorf("Dir mode = %#o, want 0700", mode)
	}
	pin, err := os.ReadFile(tok.PINFile)
	if err != nil {
		t.Fatal(err)
	}
	if string(pin) != tok.PIN || len(tok.PIN) < 32 || len(tok.SOPIN) < 32 || tok.PIN == tok.SOPIN {
		t.Errorf("PINFile/PIN/SOPIN inconsistent: file len %d, PIN len %d, SOPIN len %d", len(pin), len(tok.PIN), len(tok.SOPIN))
	}
}

func TestPINLogsIn(t *testing.T) {
	softhsmtest.Need(t, tok)
	tests := []struct {
		name    string
		pin     string
		wantErr bool
	}{
		{name: "user PIN", pin: tok.PIN},
		{name: "SO PIN is not the user PIN", pin: tok.SOPIN, wantErr: true},
		{name: "wrong PIN", pin: "00000000", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := pkcs11Tool(t, tok, []string{"KW_TEST_PIN=" + tt.pin},
				"--token-label", tok.Label, "--login", "--pin", "env:KW_TEST_PIN", "--list-objects")
			if (err != nil) != tt.wantErr {
				t.Fatalf("login err = %v, wantErr %v\n%s", err, tt.wantErr, out)
			}
			if tt.wantErr && !strings.Contains(out, "CKR_PIN_INCORRECT") {
				t.Errorf("want CKR_PIN_INCORRECT, got:\n%s", out)
			}
		})
	}
}

func TestNewAndClose(t *testing.T) {
	prev, hadPrev := os.LookupEnv("SOFTHSM2_CONF")
	tk, err := softhsmtest.New("close-test")
	if errors.Is(err, softhsmtest.ErrNotInstalled) {
		softhsmtest.Need(t, nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	if got := os.Getenv("SOFTHSM2_CONF"); got != tk.ConfPath {
		t.Errorf("after New: SOFTHSM2_CONF = %q, want %q", got, tk.ConfPath)
	}
	if tok != nil && tk.Dir == tok.Dir {
		t.Errorf("two Tokens share Dir %s", tk.Dir)
	}
	if err := tk.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tk.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Close: stat %s: %v, want not exist", tk.Dir, err)
	}
	got, has := os.LookupEnv("SOFTHSM2_CONF")
	if got != prev || has != hadPrev {
		t.Errorf("after Close: SOFTHSM2_CONF = %q (set %v), want %q (set %v)", got, has, prev, hadPrev)
	}
	if err := tk.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestTwoTokens(t *testing.T) {
	tk, err := softhsmtest.New("first")
	if errors.Is(err, softhsmtest.ErrNotInstalled) {
		softhsmtest.Need(t, nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer tk.Close()

	pin2, err := tk.InitToken("second")
	if err != nil {
		t.Fatal(err)
	}
	if pin2 == tk.PIN {
		t.Error("second token got the first token's PIN")
	}
	d1, err := tk.TokenDirOf("first")
	if err != nil {
		t.Fatal(err)
	}
	d2, err := tk.TokenDirOf("second")
	if err != nil {
		t.Fatal(err)
	}
	if d1 == d2 {
		t.Fatalf("both tokens in %s", d1)
	}
	for _, d := range []string{d1, d2} {
		if filepath.Dir(d) != tk.TokenDir {
			t.Errorf("token dir %s is not directly under %s", d, tk.TokenDir)
		}
		if _, err := os.Stat(filepath.Join(d, "token.object")); err != nil {
			t.Errorf("token dir %s: %v", d, err)
		}
	}

	out, err := pkcs11Tool(t, tk, nil, "--list-slots")
	if err != nil {
		t.Fatalf("pkcs11-tool --list-slots: %v\n%s", err, out)
	}
	for _, l := range []string{"first", "second"} {
		if !strings.Contains(out, "token label        : "+l) {
			t.Errorf("pkcs11-tool --list-slots does not show %q:\n%s", l, out)
		}
	}
	out, err = pkcs11Tool(t, tk, []string{"KW_TEST_PIN=" + pin2},
		"--token-label", "second", "--login", "--pin", "env:KW_TEST_PIN", "--list-objects")
	if err != nil {
		t.Errorf("login to second token: %v\n%s", err, out)
	}

	// The SO PIN works (and is shared): reset the second token's user PIN with
	// it, then log in with the new one.
	out, err = pkcs11Tool(t, tk, []string{"KW_TEST_SO=" + pin2, "KW_TEST_NEW=" + strings.Repeat("5", 16)},
		"--token-label", "second", "--login", "--login-type", "so", "--init-pin", "--so-pin", "env:KW_TEST_SO", "--new-pin", "env:KW_TEST_NEW")
	if err == nil {
		t.Errorf("init-pin with the user PIN as SO PIN succeeded:\n%s", out)
	}
	out, err = pkcs11Tool(t, tk, []string{"KW_TEST_SO=" + tk.SOPIN, "KW_TEST_NEW=" + strings.Repeat("5", 16)},
		"--token-label", "second", "--login", "--login-type", "so", "--init-pin", "--so-pin", "env:KW_TEST_SO", "--new-pin", "env:KW_TEST_NEW")
	if err != nil {
		t.Fatalf("init-pin with SOPIN: %v\n%s", err, out)
	}
	out, err = pkcs11Tool(t, tk, []string{"KW_TEST_PIN=" + strings.Repeat("5", 16)},
		"--token-label", "second", "--login", "--pin", "env:KW_TEST_PIN", "--list-objects")
	if err != nil {
		t.Errorf("login with the PIN set by the SO: %v\n%s", err, out)
	}

	if _, err := tk.TokenDirOf("nope"); err == nil {
		t.Error("TokenDirOf(unknown label): want error")
	}
	if _, err := tk.InitToken("second"); err == nil {
		t.Error("InitToken(existing label): want error")
	}
}

func TestBadLabel(t *testing.T) {
	for _, l := range []string{"", " padded", strings.Repeat("x", 33)} {
		if _, err := softhsmtest.New(l); err == nil || errors.Is(err, softhsmtest.ErrNotInstalled) {
			t.Errorf("New(%q) err = %v, want a label error", l, err)
		}
	}
}

func TestModulePathOverride(t *testing.T) {
	t.Setenv("KEYWARD_PKCS11_MODULE", "/nonexistent/libsofthsm2.so")
	if _, err := softhsmtest.ModulePath(); err == nil || errors.Is(err, softhsmtest.ErrNotInstalled) {
		t.Errorf("ModulePath with a missing override: err = %v, want a non-ErrNotInstalled error", err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("KEYWARD_PKCS11_MODULE", self)
	if got, err := softhsmtest.ModulePath(); err != nil || got != self {
		t.Errorf("ModulePath = %q, %v; want %q", got, err, self)
	}
}
