package examples

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The lines both examples print on a round trip through a daemon; %s is
// the key. First run creates the key, a second finds it (KEY_EXISTS).
func wantLines(key string, created bool) []string {
	first := "key " + key + " exists"
	if created {
		first = "created key " + key
	}
	return []string{
		first,
		"wrapped with " + key + " version 1: ",
		"unwrapped: the same 16 bytes",
		"unwrap with another context: INVALID_ARGUMENT, reason DECRYPTION_FAILED",
		"describe a missing key: NOT_FOUND, reason KEY_NOT_FOUND",
	}
}

// checkOutput checks stdout line by line against want (each a prefix).
func checkOutput(t *testing.T, stdout string, want []string) {
	t.Helper()
	got := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
	if len(got) != len(want) {
		t.Fatalf("output has %d lines, want %d:\n%s", len(got), len(want), stdout)
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("line %d: %q, want it to start with %q", i+1, got[i], want[i])
		}
	}
}

// checkKey checks with the keyward CLI that the example's key exists in the
// daemon: the example's calls reached it.
func checkKey(t *testing.T, d *devDaemon, key string) {
	t.Helper()
	out, errOut, code := run(t, exec.Command(filepath.Join(binDir, "keyward"), "--socket", d.socket, "key", "show", key))
	if code != 0 || !strings.Contains(out, "aes-256-gcm") {
		t.Errorf("keyward key show %s: exit %d\n%s%s", key, code, out, errOut)
	}
}

// roundTrips runs an example twice against a fresh daemon (the second run
// finds the key it created), then against a socket where nothing listens.
func roundTrips(t *testing.T, key string, example func(socket string) *exec.Cmd) {
	d := startDev(t)
	for _, created := range []bool{true, false} {
		out, errOut, code := run(t, example(d.socket))
		if code != 0 {
			t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
		}
		checkOutput(t, out, wantLines(key, created))
	}
	checkKey(t, d, key)

	out, errOut, code := run(t, example(filepath.Join(t.TempDir(), "none.sock")))
	if code != 1 || !strings.HasPrefix(errOut, "keyward_example: ") || !strings.Contains(errOut, "UNAVAILABLE") || strings.Contains(errOut, "reason") {
		t.Errorf("without a daemon: exit %d, stderr %q, stdout %q; want exit 1 and one UNAVAILABLE line without a keyward reason", code, errOut, out)
	}
}

// python returns an interpreter that has grpcio and grpc_tools:
// $KEYWARD_PYTHON, else Debian's /usr/bin/python3 (where python3-grpcio
// installs), else python3 on $PATH.
func python(t *testing.T) string {
	t.Helper()
	candidates := []string{"/usr/bin/python3", "python3"}
	if p := os.Getenv("KEYWARD_PYTHON"); p != "" {
		candidates = []string{p}
	}
	var errs []error
	for _, p := range candidates {
		out, err := exec.Command(p, "-c", "import grpc, grpc_tools.protoc").CombinedOutput()
		if err == nil {
			return p
		}
		errs = append(errs, errors.New(p+": "+strings.TrimSpace(string(out))+" "+err.Error()))
	}
	need(t, errors.Join(errs...), "python3-grpcio and python3-grpc-tools")
	return ""
}

// TestPythonExample generates the stubs from the .proto files with
// grpc_tools, as examples/python/keyward_example.py says, and runs it.
func TestPythonExample(t *testing.T) {
	py := python(t)
	gen := t.TempDir()
	protoc := exec.Command(py, "-c", `import sys, os, grpc_tools, grpc_tools.protoc as p
inc = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
sys.exit(p.main(["protoc", "-I../api", "-Iproto", "-I" + inc, "--python_out=" + sys.argv[1], "--grpc_python_out=" + sys.argv[1], "../api/keyward/v1/keyward.proto", "proto/rpc_status.proto"]))`, gen)
	if out, errOut, code := run(t, protoc); code != 0 {
		t.Fatalf("grpc_tools.protoc: exit %d\n%s%s", code, out, errOut)
	}
	roundTrips(t, "examples/python", func(socket string) *exec.Cmd {
		cmd := exec.Command(py, "python/keyward_example.py")
		cmd.Env = cleanEnv(map[string]string{"KEYWARD_SOCKET": socket, "PYTHONPATH": gen})
		return cmd
	})
}

// TestNodeExample installs the example's locked dependencies with `npm ci`
// (npm's cache makes later runs offline) and runs it.
func TestNodeExample(t *testing.T) {
	node, errNode := exec.LookPath("node")
	npm, errNPM := exec.LookPath("npm")
	need(t, errors.Join(errNode, errNPM), "nodejs and npm")
	mods := t.TempDir()
	for _, f := range []string{"package.json", "package-lock.json"} {
		b, err := os.ReadFile(filepath.Join("node", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(mods, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// --ignore-scripts: nothing of the dependencies runs at install time.
	ci := exec.Command(npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--prefer-offline", "--loglevel=error")
	ci.Dir = mods
	ci.Env = cleanEnv(nil)
	if out, errOut, code := run(t, ci); code != 0 {
		t.Fatalf("npm ci: exit %d\n%s%s", code, out, errOut)
	}
	script, err := filepath.Abs("node/keyward_example.js")
	if err != nil {
		t.Fatal(err)
	}
	roundTrips(t, "examples/node", func(socket string) *exec.Cmd {
		cmd := exec.Command(node, script)
		cmd.Env = cleanEnv(map[string]string{"KEYWARD_SOCKET": socket, "NODE_PATH": filepath.Join(mods, "node_modules")})
		return cmd
	})
}
