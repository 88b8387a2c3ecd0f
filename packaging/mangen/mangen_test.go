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
		commands: []command{{path: "tool run", help: parse("Runs NAME.\n\nUsage:\n  tool run NAME\n\nExit status:\n  0  ran\n")}}}
	cmd := exec.Command(groff, "-man", "-Tutf8", "-ww")
	cmd.Stdin = strings.NewReader(string(p.render()))
	out, err := cmd.CombinedOutput()
	text := regexp.MustCompile(".\b").ReplaceAllString(string(out), "") // overstrike
	text = strings.NewReplacer("‐", "-", "−", "-").Replace(text)
	if err != nil || strings.Contains(text, "warning") {
		t.Fatalf("groff: %v\n%s", err, text)
	}
	for _, w := range []string{"TOOL(1)", "NAME", "SYNOPSIS", "COMMANDS", "tool run", "Runs NAME.", "EXIT STATUS", "tool run:", "0  ran", ".dot and \\backslash"} {
		if !strings.Contains(text, w) {
			t.Errorf("rendered page lacks %q:\n%s", w, text)
		}
	}
}

// section returns the roff lines of the page's section title (.SH), up to
// the next one.
func section(roff, title string) string {
	_, rest, ok := strings.Cut(roff, ".SH "+title+"\n")
	if !ok {
		return ""
	}
	body, _, _ := strings.Cut(rest, "\n.SH ")
	return body
}

// TestCommandTrailers: a command's exit status, and what follows it, is
// left out of its subsection; it is dropped when the page prints the same,
// else printed once under EXIT STATUS, headed by every command that has it.
// A root paragraph that begins "Exit codes: " is the page's exit status.
func TestCommandTrailers(t *testing.T) {
	const shared = "Exit status:\n  0  ok\n  1  not ok\n\nErrors are one line.\n"
	const device = "Exit status:\n  0  ok\n  3  PIN refused\n\nErrors name the command.\n"
	cmd := func(name, trailer string) command {
		return command{path: "tool " + name, help: parse("Does " + name + ".\n\nUsage:\n  tool " + name + "\n\n" + trailer)}
	}
	for _, c := range []struct {
		name      string
		root      string
		commands  []command
		exit      []string // in EXIT STATUS, in this order
		notExit   []string
		notInCmds []string
	}{
		{
			name:      "all share the page's",
			root:      "tool: do things.\n\nUsage:\n  tool COMMAND\n\n" + shared,
			commands:  []command{cmd("run", shared), cmd("stop", shared)},
			exit:      []string{"1  not ok"},
			notExit:   []string{".B", "Errors are one line."},
			notInCmds: []string{"not ok", "Errors are one line."},
		},
		{
			name:     "a group of their own",
			root:     "tool: a daemon.\n\nUsage:\n  tool [--flag]\n\nExit codes: 0 stopped; 1 could not run.\n\nMore prose.\n",
			commands: []command{cmd("doctor", device), cmd("run", shared), cmd("demo", device)},
			exit: []string{"Exit codes: 0 stopped; 1 could not run.", `.B "tool doctor, tool demo:"`, "3  PIN refused", "Errors name the command.",
				`.B "tool run:"`, "1  not ok", "Errors are one line."},
			notExit:   []string{"More prose."},
			notInCmds: []string{"PIN refused", "not ok", "Errors"},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			roff := string(page{name: "tool", section: "8", root: parse(c.root), commands: c.commands}.render())
			exit, cmds := section(roff, "EXIT STATUS"), section(roff, "COMMANDS")
			at := 0
			for _, w := range c.exit {
				i := strings.Index(exit[at:], w)
				if i < 0 {
					t.Fatalf("EXIT STATUS lacks %q after offset %d:\n%s", w, at, exit)
				}
				at += i + len(w)
			}
			for _, w := range c.notExit {
				if strings.Contains(exit, w) {
					t.Errorf("EXIT STATUS has %q:\n%s", w, exit)
				}
			}
			for _, w := range c.notInCmds {
				if strings.Contains(cmds, w) {
					t.Errorf("COMMANDS has %q:\n%s", w, cmds)
				}
			}
			if strings.Count(roff, "PIN refused") > 1 || strings.Count(roff, "Errors are one line.") > 1 {
				t.Errorf("a trailer printed more than once:\n%s", roff)
			}
			for _, p := range c.commands {
				if !strings.Contains(cmds, ".SS "+quote(p.path)+"\n") {
					t.Errorf("no subsection for %q:\n%s", p.path, cmds)
				}
			}
		})
	}
}
