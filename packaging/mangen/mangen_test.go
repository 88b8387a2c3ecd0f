package main

import (
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

const sampleHelp = `tool: do things. With care.

Some prose that ends with a colon:
goes on here, and is not a heading.

Usage:
  tool [--flag] COMMAND

Commands:
  tool run NAME
      run NAME
  tool key create NAME
      create a key
  tool help [COMMAND]
      help

.dot and \backslash at the start
Exit status:
  0  ok
  1  not ok
`

func TestParse(t *testing.T) {
	d := parse(sampleHelp)
	if d.summary != "do things. With care." || !d.stripped {
		t.Errorf("summary %q, stripped %v", d.summary, d.stripped)
	}
	var headings []string
	for _, b := range d.blocks {
		if b.heading != "" {
			headings = append(headings, b.heading)
		}
	}
	if got := strings.Join(headings, "|"); got != "Usage|Commands|Exit status" {
		t.Errorf("headings %q", got)
	}
	if got := strings.Join(commandPaths("tool", sampleHelp), "|"); got != "run|key create" {
		t.Errorf("command paths %q", got)
	}
}

func TestEscape(t *testing.T) {
	for in, want := range map[string]string{
		`--flag`:          `\-\-flag`,
		`.TH not a macro`: `\&.TH not a macro`,
		`'quote`:          `\&'quote`,
		`a\b`:             `a\eb`,
	} {
		if got := escape(in); got != want {
			t.Errorf("escape(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestRenderIsValidRoff renders the sample and has groff check it.
func TestRenderIsValidRoff(t *testing.T) {
	groff, err := exec.LookPath("groff")
	if err != nil {
		t.Skip("groff not found (make deps installs groff-base)")
	}
	p := page{name: "tool", section: "1", version: "1.0", root: parse(sampleHelp),
		commands: []command{{path: "tool run", help: parse("Runs NAME.\n\nUsage:\n  tool run NAME\n")}}}
	cmd := exec.Command(groff, "-man", "-Tutf8", "-ww")
	cmd.Stdin = strings.NewReader(string(p.render()))
	out, err := cmd.CombinedOutput()
	text := regexp.MustCompile(".\b").ReplaceAllString(string(out), "") // overstrike
	text = strings.NewReplacer("‐", "-", "−", "-").Replace(text)
	if err != nil || strings.Contains(text, "warning") {
		t.Fatalf("groff: %v\n%s", err, text)
	}
	for _, w := range []string{"TOOL(1)", "NAME", "SYNOPSIS", "COMMANDS", "tool run", "Runs NAME.", "EXIT STATUS", ".dot and \\backslash"} {
		if !strings.Contains(text, w) {
			t.Errorf("rendered page lacks %q:\n%s", w, text)
		}
	}
}
