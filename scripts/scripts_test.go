// Package scripts_test runs the repository's shell scripts the way the
// Makefile does, on real daemons and tokens.
package scripts_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestBenchAudit runs scripts/bench-audit.sh for one short round: it starts
// its three keywardd on fresh tokens, prints one row per concurrency with
// three positive rates and their ratios, then one with the syncs of the
// audit log and their cost, and leaves nothing behind.
func TestBenchAudit(t *testing.T) {
	if _, err := exec.LookPath("softhsm2-util"); err != nil {
		t.Skip("softhsm2-util not installed (make deps)")
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", bin, "./cmd/keywardd", "./cmd/keyward")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	parent := t.TempDir() // on the disk of the tests' temporary files, as /var/tmp may not be
	cmd := exec.Command(filepath.Join(root, "scripts", "bench-audit.sh"))
	cmd.Env = append(os.Environ(), "BIN="+bin, "ROUNDS=1", "DURATION=200ms", "CONCURRENCY=1,4", "WORK_PARENT="+parent)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("bench-audit.sh: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if len(lines) != 6 || strings.Join(strings.Fields(lines[0]), " ") != "conc off/s write/s fsync/s write/off fsync/off" ||
		strings.Join(strings.Fields(lines[3]), " ") != "conc write: syncs/s us per sync fsync: syncs/s us per sync" {
		t.Fatalf("output:\n%s", stdout.String())
	}
	for i, conc := range []string{"1", "4"} {
		f := strings.Fields(lines[i+1])
		if len(f) != 6 || f[0] != conc {
			t.Fatalf("row %q", lines[i+1])
		}
		for _, v := range f[1:] {
			if x, err := strconv.ParseFloat(v, 64); err != nil || x <= 0 {
				t.Errorf("row %q: %q is not a positive number", lines[i+1], v)
			}
		}
		// The sync table: fsync's keywardd synced during its runs (the
		// write one may not have, within 200 ms).
		f = strings.Fields(lines[i+4])
		if len(f) != 5 || f[0] != conc {
			t.Fatalf("sync row %q", lines[i+4])
		}
		for _, v := range f[3:] {
			if x, err := strconv.ParseFloat(v, 64); err != nil || x <= 0 {
				t.Errorf("sync row %q: fsync's %q is not a positive number", lines[i+4], v)
			}
		}
	}
	if left, _ := filepath.Glob(filepath.Join(parent, "*")); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}

// TestFuzzRetry runs scripts/fuzz.sh on a stand-in module with a stand-in
// go command: a target that fails with Go's bare coordinator deadline and
// no failing input is run once more (and passes); one that writes a
// failing input fails at once; one that fails otherwise fails.
func TestFuzzRetry(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	mod := t.TempDir()
	if err := os.MkdirAll(filepath.Join(mod, "a"), 0o755); err != nil {
		t.Fatal(err)
	}
	src := "package a\n\nfunc FuzzFlaky(f *testing.F) {}\n\nfunc FuzzCrash(f *testing.F) {}\n\nfunc FuzzBroken(f *testing.F) {}\n"
	if err := os.WriteFile(filepath.Join(mod, "a", "a_test.go"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	fakeGo := filepath.Join(mod, "go")
	script := `#!/bin/bash
case "$*" in
*"-list"*) printf 'FuzzFlaky\nFuzzCrash\nFuzzBroken\nok\n'; exit 0;;
*"-fuzz=^FuzzFlaky\$"*)
	n=$(cat "$STATE" 2>/dev/null || echo 0); echo $((n+1)) > "$STATE"
	if [ "$n" = 0 ]; then printf -- '--- FAIL: FuzzFlaky (6.02s)\n    context deadline exceeded\nFAIL\n'; exit 1; fi
	echo PASS; exit 0;;
*"-fuzz=^FuzzCrash\$"*)
	mkdir -p a/testdata/fuzz/FuzzCrash && echo 'go test fuzz v1' > a/testdata/fuzz/FuzzCrash/abc
	printf -- '--- FAIL: FuzzCrash (0.10s)\n    context deadline exceeded\nFAIL\n'; exit 1;;
*"-fuzz=^FuzzBroken\$"*) printf -- '--- FAIL: FuzzBroken (0.10s)\n    panic: boom\nFAIL\n'; exit 1;;
esac
exit 2
`
	if err := os.WriteFile(fakeGo, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(root, "scripts", "fuzz.sh"), "1s")
	cmd.Dir = mod
	cmd.Env = append(os.Environ(), "GO="+fakeGo, "STATE="+filepath.Join(mod, "state"))
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("fuzz.sh: %v, want exit 1\n%s", err, out)
	}
	var got []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "fuzz: PASS") || strings.HasPrefix(l, "fuzz: FAIL") || strings.HasPrefix(l, "fuzz: RETRY") {
			got = append(got, strings.Join(strings.Fields(l)[:4], " "))
		}
	}
	want := []string{
		"fuzz: RETRY ./a FuzzFlaky",
		"fuzz: PASS ./a FuzzFlaky",
		"fuzz: FAIL ./a FuzzCrash",
		"fuzz: FAIL ./a FuzzBroken",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("outcomes:\n%s\nwant:\n%s\nfull output:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"), out)
	}
	if !strings.Contains(string(out), "a failing input is in ./a/testdata/fuzz/FuzzCrash/") {
		t.Errorf("the crasher's place is not named:\n%s", out)
	}
}
