// Command mangen writes a man page (roff, man macros) from a command's help
// texts, so that the page says what --help says and cannot drift from it.
// `make deb` runs it on the built binaries:
//
//	mangen -bin bin/deb/keywardd -section 8 -version 0.1.0 -commands > keywardd.8
//	mangen -bin bin/deb/keyward -section 1 -version 0.1.0 -commands > keyward.1
//
// The first paragraph of BIN --help ("name: summary") gives NAME, its
// "Usage:" block SYNOPSIS, an "Exit status:"/"Exit codes:" block EXIT
// STATUS (also a paragraph that begins "Exit codes: "), and the rest
// DESCRIPTION: prose is filled, indented blocks (flags, examples, command
// lists) are kept as they are. With -commands, each "  NAME COMMAND
// [SUBCOMMAND]" line of the help names a command whose own "BIN COMMAND
// --help" becomes a subsection of COMMANDS, without its global flags and
// without its exit status and what follows it: that trailer is left out
// when it is the page's own (keyward's commands share keyward's), else it
// goes under EXIT STATUS once, headed by the commands that print it
// (keywardd's device commands have keyward's statuses, not the daemon's).
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

func main() {
	bin := flag.String("bin", "", "the binary whose help texts make the page (required)")
	section := flag.String("section", "1", "man section: 1 (user commands) or 8 (daemons)")
	version := flag.String("version", "", "the version shown in the page's footer")
	commands := flag.Bool("commands", false, "add every command's help (COMMAND --help) under COMMANDS")
	flag.Parse()
	if *bin == "" || flag.NArg() != 0 || (*section != "1" && *section != "8") {
		fmt.Fprintln(os.Stderr, "usage: mangen -bin BINARY [-section 1|8] [-version V] [-commands] > PAGE")
		os.Exit(2)
	}
	if err := run(os.Stdout, *bin, *section, *version, *commands); err != nil {
		fmt.Fprintf(os.Stderr, "mangen: %v\n", err)
		os.Exit(1)
	}
}

func run(w io.Writer, bin, section, version string, commands bool) error {
	name := filepath.Base(bin)
	root, err := help(bin, "--help")
	if err != nil {
		return err
	}
	p := page{name: name, section: section, version: version, root: parse(root)}
	if commands {
		for _, c := range commandPaths(name, root) {
			text, err := help(bin, append(strings.Fields(c), "--help")...)
			if err != nil {
				return err
			}
			p.commands = append(p.commands, command{path: name + " " + c, help: parse(text)})
		}
	}
	_, err = w.Write(p.render())
	return err
}

// help runs bin with args and returns what it printed (stdout and stderr:
// the flag package prints usage on stderr).
func help(bin string, args ...string) (string, error) {
	var out bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Env = append(os.Environ(), "LC_ALL=C", "COLUMNS=80")
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s: %w\n%s", bin, strings.Join(args, " "), err, out.String())
	}
	if out.Len() == 0 {
		return "", fmt.Errorf("%s %s printed nothing", bin, strings.Join(args, " "))
	}
	return out.String(), nil
}

// commandPaths returns, in order and once each, the command paths the help
// lists as "  NAME word [word]" lines: "key create", "status". "help" and
// "completion" are left out (cobra's own).
func commandPaths(name, text string) []string {
	re := regexp.MustCompile(`^  ` + regexp.QuoteMeta(name) + ` ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?`)
	var out []string
	seen := map[string]bool{}
	for _, l := range strings.Split(text, "\n") {
		m := re.FindStringSubmatch(l)
		if m == nil || m[1] == "help" || m[1] == "completion" {
			continue
		}
		path := m[1]
		if m[2] != "" {
			path += " " + m[2]
		}
		if !seen[path] {
			seen[path] = true
			out = append(out, path)
		}
	}
	return out
}

// block is a run of lines: a paragraph of prose, an indented (verbatim)
// block, or a heading ("Flags:") with the verbatim lines under it.
type block struct {
	heading  string   // "Usage", "Flags"... without the colon; "" for none
	lines    []string // as printed
	verbatim bool
}

// doc is a parsed help text.
type doc struct {
	summary  string // from the first paragraph, "name: summary" or the paragraph itself
	stripped bool   // the first paragraph was "name: summary" and is not in blocks
	blocks   []block
}

var headingRE = regexp.MustCompile(`^[A-Z][^:]*:$`)

func parse(text string) doc {
	var d doc
	var cur *block
	flush := func() {
		if cur != nil && (len(cur.lines) > 0 || cur.heading != "") {
			d.blocks = append(d.blocks, *cur)
		}
		cur = nil
	}
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	for i, l := range lines {
		l = strings.TrimRight(l, " \t")
		switch {
		case l == "":
			if cur != nil && !(cur.heading != "" && len(cur.lines) == 0) {
				flush()
			}
		case headingRE.MatchString(l) && indentedNext(lines[i+1:]):
			flush()
			cur = &block{heading: strings.TrimSuffix(l, ":"), verbatim: true}
		case strings.HasPrefix(l, " ") || strings.HasPrefix(l, "\t"):
			if cur == nil || !cur.verbatim {
				flush()
				cur = &block{verbatim: true}
			}
			cur.lines = append(cur.lines, l)
		default:
			if cur != nil && cur.verbatim {
				flush()
			}
			if cur == nil {
				cur = &block{}
			}
			cur.lines = append(cur.lines, l)
		}
	}
	flush()
	if len(d.blocks) > 0 && d.blocks[0].heading == "" && !d.blocks[0].verbatim {
		first := strings.Join(d.blocks[0].lines, " ")
		d.summary = first
		if before, rest, ok := strings.Cut(first, ": "); ok && !strings.Contains(before, " ") {
			d.summary = rest // "keyward: use and manage..." -> "use and manage..."
			d.stripped = true
			d.blocks = d.blocks[1:]
		}
	}
	return d
}

// indentedNext says whether the next non-empty line is indented: a line
// ending in ':' is a heading only then ("Flags:"), not a sentence that
// goes on below it.
func indentedNext(lines []string) bool {
	for _, l := range lines {
		if strings.TrimSpace(l) != "" {
			return strings.HasPrefix(l, " ") || strings.HasPrefix(l, "\t")
		}
	}
	return false
}

var exitHeadings = []string{"Exit status", "Exit codes"}

// exitAt returns the index of d's first exit status block (a heading
// "Exit status:" or "Exit codes:" and the lines under it, or a paragraph
// that begins with one), or -1.
func (d doc) exitAt() int {
	for i, b := range d.blocks {
		if contains(exitHeadings, b.heading) {
			return i
		}
		if b.heading == "" && !b.verbatim && len(b.lines) > 0 {
			for _, h := range exitHeadings {
				if strings.HasPrefix(b.lines[0], h+": ") {
					return i
				}
			}
		}
	}
	return -1
}

// takeExit removes and returns d's exit status block, if any.
func (d *doc) takeExit() []block {
	i := d.exitAt()
	if i < 0 {
		return nil
	}
	b := d.blocks[i]
	d.blocks = append(d.blocks[:i:i], d.blocks[i+1:]...)
	return []block{b}
}

// trailer returns d's blocks from its exit status block on (nil without
// one).
func (d doc) trailer() []block {
	if i := d.exitAt(); i >= 0 {
		return d.blocks[i:]
	}
	return nil
}

// render is the text of blocks, to compare them.
func render(blocks []block) string {
	var b strings.Builder
	for _, bl := range blocks {
		fmt.Fprintf(&b, "%s|%v|%s\n\n", bl.heading, bl.verbatim, strings.Join(bl.lines, "\n"))
	}
	return b.String()
}

// take removes and returns the blocks whose heading is one of names.
func (d *doc) take(names ...string) []block {
	var out, keep []block
	for _, b := range d.blocks {
		if b.heading != "" && contains(names, b.heading) {
			out = append(out, b)
		} else {
			keep = append(keep, b)
		}
	}
	d.blocks = keep
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

type command struct {
	path string
	help doc
}

type page struct {
	name, section, version string
	root                   doc
	commands               []command
}

func (p page) render() []byte {
	var b bytes.Buffer
	manual := "User Commands"
	if p.section == "8" {
		manual = "System Administration"
	}
	fmt.Fprintf(&b, ".\\\" Generated by packaging/mangen from %s --help; do not edit.\n", p.name)
	fmt.Fprintf(&b, ".TH %s %s \"\" %s %s\n", quote(strings.ToUpper(p.name)), p.section, quote(strings.TrimSpace("keyward "+p.version)), quote(manual))
	b.WriteString(".SH NAME\n")
	fmt.Fprintf(&b, "%s \\- %s\n", escape(p.name), escape(strings.TrimSuffix(p.root.summary, ".")))
	root := p.root
	if usage := root.take("Usage"); len(usage) > 0 {
		b.WriteString(".SH SYNOPSIS\n")
		writeBlocks(&b, usage, false)
	}
	own := render(root.trailer())
	exit := root.takeExit()
	b.WriteString(".SH DESCRIPTION\n")
	writeBlocks(&b, root.blocks, true)
	trailers := p.writeCommands(&b, own)
	if len(exit) > 0 || len(trailers) > 0 {
		b.WriteString(".SH EXIT STATUS\n")
		writeBlocks(&b, exit, false)
		for _, t := range trailers {
			fmt.Fprintf(&b, ".PP\n.B %s\n", quote(strings.Join(t.paths, ", ")+":"))
			writeBlocks(&b, t.blocks, false)
		}
	}
	b.WriteString(".SH SEE ALSO\n")
	other := "keywardd (8)"
	if p.name == "keywardd" {
		other = "keyward (1)"
	}
	fmt.Fprintf(&b, ".BR %s ,\n.BR systemd.socket (5);\nREADME.md and docs/ in /usr/share/doc/keyward/.\n", strings.Replace(other, " ", " \"\" ", 1))
	return b.Bytes()
}

// trailer is an exit status block, and what follows it, that commands
// print alike and the page itself does not.
type trailer struct {
	paths  []string
	blocks []block
}

// writeCommands writes the COMMANDS section, each command without its
// global flags and its trailer, and returns the trailers other than own
// (the page's), each once, in the order of the commands.
func (p page) writeCommands(b *bytes.Buffer, own string) []trailer {
	if len(p.commands) == 0 {
		return nil
	}
	var out []trailer
	index := map[string]int{}
	b.WriteString(".SH COMMANDS\n")
	for _, c := range p.commands {
		d := c.help
		d.take("Global flags")
		if t := d.trailer(); len(t) > 0 {
			d.blocks = d.blocks[:len(d.blocks)-len(t)]
			if key := render(t); key != own {
				if i, ok := index[key]; ok {
					out[i].paths = append(out[i].paths, c.path)
				} else {
					index[key] = len(out)
					out = append(out, trailer{paths: []string{c.path}, blocks: t})
				}
			}
		}
		fmt.Fprintf(b, ".SS %s\n", quote(c.path))
		if d.stripped {
			fmt.Fprintf(b, ".PP\n%s\n", escape(d.summary))
		}
		writeBlocks(b, d.blocks, true)
	}
	return out
}

// writeBlocks writes blocks: a heading as a subsection title (when
// headings is set), prose filled, verbatim lines as they are.
func writeBlocks(b *bytes.Buffer, blocks []block, headings bool) {
	for _, bl := range blocks {
		if bl.heading != "" && headings {
			fmt.Fprintf(b, ".PP\n.B %s\n", quote(bl.heading+":"))
		}
		if len(bl.lines) == 0 {
			continue
		}
		if !bl.verbatim {
			b.WriteString(".PP\n")
			for _, l := range bl.lines {
				b.WriteString(escape(l) + "\n")
			}
			continue
		}
		b.WriteString(".PP\n.RS 4\n.nf\n")
		indent := commonIndent(bl.lines)
		for _, l := range bl.lines {
			b.WriteString(escape(strings.ReplaceAll(l[indent:], "\t", "        ")) + "\n")
		}
		b.WriteString(".fi\n.RE\n")
	}
}

func commonIndent(lines []string) int {
	n := -1
	for _, l := range lines {
		i := len(l) - len(strings.TrimLeft(l, " \t"))
		if n < 0 || i < n {
			n = i
		}
	}
	return max(n, 0)
}

// escape makes a line of text safe as roff input: backslashes, a leading
// control character, and hyphens (as \- so that options copy as ASCII).
func escape(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}

// quote makes s one macro argument.
func quote(s string) string {
	return `"` + strings.ReplaceAll(escape(s), `"`, `\(dq`) + `"`
}
