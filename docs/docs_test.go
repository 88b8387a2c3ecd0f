// Package docs holds the project's documentation pages and this test, which
// keeps them honest: links resolve, the README's tour uses commands the CLI
// has, the configuration table and the config structs name the same keys,
// and the exit-code tables list the codes the commands' help names.
package docs

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"unicode"

	"github.com/keyward/keyward/config"
)

// pages are the Markdown files whose links are checked, relative to the
// repository root (the test runs in docs/).
func pages(t *testing.T) []string {
	t.Helper()
	docs, err := filepath.Glob("*.md")
	if err != nil {
		t.Fatal(err)
	}
	out := []string{"../README.md", "../DEVELOPERS.md"}
	for _, d := range docs {
		out = append(out, d)
	}
	return out
}

// prose returns the lines of a Markdown file outside fenced code blocks.
func prose(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	fence := false
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "```") {
			fence = !fence
			continue
		}
		if !fence {
			out = append(out, line)
		}
	}
	return out
}

// slug is GitHub's anchor for a heading: lower case, punctuation dropped,
// spaces as hyphens.
func slug(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case unicode.IsLetter(r), unicode.IsDigit(r), r == '-', r == '_':
			b.WriteRune(r)
		case r == ' ':
			b.WriteByte('-')
		}
	}
	return b.String()
}

// anchors returns the anchors of a Markdown file's headings.
func anchors(t *testing.T, path string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for _, line := range prose(t, path) {
		if h, ok := strings.CutPrefix(line, "#"); ok {
			out[slug(strings.TrimLeft(h, "#"))] = true
		}
	}
	return out
}

var linkRE = regexp.MustCompile(`\]\(([^)\s]+)\)`)

// TestLinks: every relative link in README.md, DEVELOPERS.md and docs/*.md
// names a file of the repository and, with a #fragment, a heading of it.
func TestLinks(t *testing.T) {
	for _, page := range pages(t) {
		for n, line := range prose(t, page) {
			for _, m := range linkRE.FindAllStringSubmatch(line, -1) {
				target := m[1]
				if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
					continue
				}
				file, frag, _ := strings.Cut(target, "#")
				path := page
				if file != "" {
					path = filepath.Join(filepath.Dir(page), file)
				}
				if _, err := os.Stat(path); err != nil {
					t.Errorf("%s (line %d of its prose): link %q: %v", page, n+1, target, err)
					continue
				}
				if frag != "" && !anchors(t, path)[frag] {
					t.Errorf("%s: link %q: %s has no heading with anchor #%s", page, target, path, frag)
				}
			}
		}
	}
}

// TestEveryPageLinkedFromReadme: the README is the front door; a page it
// does not name is a page nobody finds.
func TestEveryPageLinkedFromReadme(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	docs, _ := filepath.Glob("*.md")
	for _, d := range docs {
		if !bytes.Contains(readme, []byte("](docs/"+d)) {
			t.Errorf("README.md does not link docs/%s", d)
		}
	}
}

// TestReadmeLength: the README stays a front door.
func TestReadmeLength(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(b, []byte("\n")); n > 450 {
		t.Errorf("README.md has %d lines; keep it at most 450 and move detail into docs/", n)
	}
}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds keyward, keywardd and keywardd-admin once per test binary.
func binaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "keyward-docs-")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", binDir+"/", "../cmd/keyward", "../cmd/keywardd", "../cmd/keywardd-admin")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = errors.New(string(out))
		}
	})
	if buildErr != nil {
		t.Fatalf("building the commands: %v", buildErr)
	}
	return binDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// runHelp runs the built keyward with args and returns its stdout and exit
// status.
func runHelp(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(filepath.Join(binaries(t), "keyward"), args...)
	cmd.Env = append(os.Environ(), "KEYWARD_SOCKET=/nonexistent/keyward.sock")
	var out bytes.Buffer
	cmd.Stdout = &out
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return out.String(), ee.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return out.String(), 0
}

// tourRE finds a keyward command in a shell line: at its start ("$ "), or
// after a pipe, a semicolon or &&.
var tourRE = regexp.MustCompile(`(?:^\$ |\| |; |&& )keyward ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?(?:\s|$)`)

// tourCommands returns each distinct command path the README's shell
// examples (its fenced blocks) run, as written (one or two words).
func tourCommands(t *testing.T) [][2]string {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[[2]string]bool{}
	var out [][2]string
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	fence := false
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "```") {
			fence = !fence
			continue
		}
		if !fence {
			continue
		}
		for _, m := range tourRE.FindAllStringSubmatch(sc.Text(), -1) {
			k := [2]string{m[1], m[2]}
			if !seen[k] {
				seen[k] = true
				out = append(out, k)
			}
		}
	}
	return out
}

// TestTourCommandsExist: every "keyward SUBCOMMAND" in the README's shell
// examples is a command of the built CLI: "keyward help PATH" succeeds and
// its usage line names the path. A group (its help lists "Commands:") must
// be followed by one of its commands.
func TestTourCommandsExist(t *testing.T) {
	cmds := tourCommands(t)
	if len(cmds) < 10 {
		t.Fatalf("found only %d keyward commands in README.md's examples: the pattern no longer matches the tour", len(cmds))
	}
	for _, c := range cmds {
		first, second := c[0], c[1]
		out, code := runHelp(t, "help", first)
		if code != 0 {
			t.Errorf("README.md runs \"keyward %s\", which the CLI does not have (keyward help %s: exit %d)", first, first, code)
			continue
		}
		if !strings.Contains(out, "\nCommands:\n") {
			continue // a command; a second word is its argument
		}
		if second == "" {
			t.Errorf("README.md runs \"keyward %s\" without one of its commands", first)
			continue
		}
		out, code = runHelp(t, "help", first, second)
		if code != 0 || !strings.Contains(out, "Usage:\n  keyward "+first+" "+second) {
			t.Errorf("README.md runs \"keyward %s %s\", which the CLI does not have (exit %d)", first, second, code)
		}
	}
}

// tomlKeys returns the dotted keys of a struct's toml tags, descending into
// fields whose type is a struct of tagged fields (backend, limits).
func tomlKeys(typ reflect.Type, prefix string) []string {
	var out []string
	for f := range typ.Fields() {
		tag, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if tag == "" || tag == "-" {
			continue
		}
		if f.Type.Kind() == reflect.Struct && hasTOMLFields(f.Type) {
			out = append(out, tomlKeys(f.Type, prefix+tag+".")...)
			continue
		}
		out = append(out, prefix+tag)
	}
	return out
}

func hasTOMLFields(typ reflect.Type) bool {
	for f := range typ.Fields() {
		if f.Tag.Get("toml") != "" {
			return true
		}
	}
	return false
}

var keyRowRE = regexp.MustCompile("^\\| `([^`]+)` \\|")

// documentedKeys returns the keys of docs/configuration.md's table (the
// table under the header "| key | type | default | meaning |").
func documentedKeys(t *testing.T) []string {
	t.Helper()
	var out []string
	in := false
	for _, line := range prose(t, "configuration.md") {
		switch {
		case strings.HasPrefix(line, "| key | type | default | meaning |"):
			in = true
		case in && !strings.HasPrefix(line, "|"):
			return out
		case in:
			if m := keyRowRE.FindStringSubmatch(line); m != nil {
				out = append(out, strings.TrimSuffix(strings.TrimPrefix(m[1], "[["), "]]"))
			}
		}
	}
	return out
}

// TestConfigKeysDocumented: the configuration table names exactly the keys
// config.Config decodes.
func TestConfigKeysDocumented(t *testing.T) {
	code := tomlKeys(reflect.TypeFor[config.Config](), "")
	doc := documentedKeys(t)
	if len(doc) == 0 {
		t.Fatal("no key table found in docs/configuration.md")
	}
	for _, k := range code {
		if !slices.Contains(doc, k) {
			t.Errorf("config key %q is not in docs/configuration.md's table", k)
		}
	}
	for _, k := range doc {
		if !slices.Contains(code, k) {
			t.Errorf("docs/configuration.md documents %q, which config.Config does not have", k)
		}
	}
}

// codesInTable returns the codes of the table under "## name" in
// docs/exit-codes.md.
func codesInTable(t *testing.T, name string) []string {
	t.Helper()
	var out []string
	in := false
	for _, line := range prose(t, "exit-codes.md") {
		if h, ok := strings.CutPrefix(line, "## "); ok {
			in = h == name
			continue
		}
		if m := regexp.MustCompile(`^\| (\d+) \|`).FindStringSubmatch(line); in && m != nil {
			out = append(out, m[1])
		}
	}
	return out
}

// codesInHelp returns the codes a help text's exit-code paragraph names:
// each a number after "; " or at the start of a line.
func codesInHelp(text, heading string) []string {
	_, rest, ok := strings.Cut(text, heading)
	if !ok {
		return nil
	}
	para, _, _ := strings.Cut(rest, "\n\n")
	seen := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?:[:;]\s+|\n\s*)(\d+)\s`).FindAllStringSubmatch("\n"+para, -1) {
		seen[m[1]] = true
	}
	var out []string
	for c := range seen {
		out = append(out, c)
	}
	sort.Strings(out)
	return out
}

// TestExitCodes: docs/exit-codes.md is the one list of exit codes, and each
// of its tables has exactly the codes the command's own help names.
func TestExitCodes(t *testing.T) {
	dir := binaries(t)
	var kdHelp bytes.Buffer
	kd := exec.Command(filepath.Join(dir, "keywardd"), "--help")
	kd.Stderr = &kdHelp
	if err := kd.Run(); err != nil {
		t.Fatalf("keywardd --help: %v", err)
	}
	kwHelp, code := runHelp(t, "help")
	if code != 0 {
		t.Fatalf("keyward help: exit %d", code)
	}
	for _, tc := range []struct {
		name, help, heading string
	}{
		{"keywardd", kdHelp.String(), "Exit codes:"},
		{"keyward", kwHelp, "Exit status:\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			help := codesInHelp(tc.help, tc.heading)
			doc := codesInTable(t, tc.name)
			sort.Strings(doc)
			if len(help) == 0 {
				t.Fatalf("%s's help has no %q paragraph", tc.name, tc.heading)
			}
			if !slices.Equal(help, doc) {
				t.Errorf("%s: its help names exit codes %v, docs/exit-codes.md lists %v", tc.name, help, doc)
			}
		})
	}
}

// keywarddCmdRE finds "keywardd SUBCOMMAND" at the start of a line or after
// a tab (the Makefile's recipes).
var keywarddCmdRE = regexp.MustCompile(`(?m)(?:^|\t|bin/)keywardd ([a-z][a-z-]+)(?:\s|$)`)

// TestKeywarddCommandsExist: every "keywardd SUBCOMMAND" the CLI page's
// synopsis and the Makefile run is a keywardd command (keywardd help NAME
// succeeds and names it), and the page lists every one.
func TestKeywarddCommandsExist(t *testing.T) {
	var synopsis strings.Builder
	fence := 0
	for _, line := range strings.Split(readFile(t, "cli.md"), "\n") {
		if strings.HasPrefix(line, "```") {
			fence++
			continue
		}
		if fence == 1 {
			synopsis.WriteString(line + "\n")
		}
	}
	seen := map[string]bool{}
	for _, src := range []string{synopsis.String(), readFile(t, "../Makefile")} {
		for _, m := range keywarddCmdRE.FindAllStringSubmatch(src, -1) {
			seen[m[1]] = true
		}
	}
	for _, want := range []string{"doctor", "define-counter", "demo", "bench-baseline"} {
		if !seen[want] {
			t.Errorf("docs/cli.md's synopsis does not list keywardd %s", want)
		}
	}
	for name := range seen {
		cmd := exec.Command(filepath.Join(binaries(t), "keywardd"), "help", name)
		out, err := cmd.Output()
		if err != nil || !strings.Contains(string(out), "keywardd "+name) {
			t.Errorf("keywardd help %s: %v; the docs run a command keywardd does not have", name, err)
		}
	}
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
