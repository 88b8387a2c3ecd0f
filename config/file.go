package config

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// ConfigError is one problem of a config file: where, which key, what. Every
// ConfigError wraps ErrConfig. ParseConfig reports every problem it finds as
// one ConfigError each, joined (one per line).
type ConfigError struct {
	File string
	// Line is where Key is set; 0 when the file does not set it (its
	// default is at fault) or the problem has no one key.
	Line int
	// Key is the dotted key ("limits.idle_timeout", "rule[2].units"), ""
	// when the message names what is at fault itself.
	Key string
	Msg string
}

func (e *ConfigError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteString(":" + strconv.Itoa(e.Line))
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key)
		if e.Line == 0 {
			b.WriteString(" (default)")
		}
		b.WriteString(keySep(e.Msg))
	}
	b.WriteString(e.Msg)
	return b.String()
}

func (e *ConfigError) Unwrap() error { return ErrConfig }

// keySep joins a key and its message: "key = value: why" when the message
// starts with the value, "key: why" otherwise.
func keySep(msg string) string {
	if strings.HasPrefix(msg, "= ") {
		return " "
	}
	return ": "
}

// problem is what Validate finds wrong with one key; ParseConfig adds the
// file and the line.
type problem struct{ key, msg string }

// docEntry is one key = value of a config file.
type docEntry struct {
	key    string // dotted, array tables indexed from 1: "rule[2].keys"
	header string // the table header it is under ("[limits]", "[[rule]]"), "" at the top
	line   int
	raw    unstable.Range
}

// configDoc is where a config file sets each key, from a pass over its
// syntax tree (go-toml's decoder does not say where a value came from).
type configDoc struct {
	lines   map[string]int // dotted key, or array table element ("rule[2]"), to line
	entries []docEntry
}

func (d *configDoc) line(key string) int { return d.lines[key] }

// scanConfig parses b and records every key's line; a syntax error is
// returned with its line.
func scanConfig(name string, b []byte) (*configDoc, error) {
	d := &configDoc{lines: map[string]int{}}
	var p unstable.Parser
	p.Reset(b)
	prefix, header := "", ""
	count := map[string]int{}
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			it := e.Key()
			parts, first := keyParts(&it)
			path := strings.Join(parts, ".")
			line := p.Shape(first).Start.Line
			if e.Kind == unstable.ArrayTable {
				count[path]++
				prefix, header = fmt.Sprintf("%s[%d]", path, count[path]), "[["+tomlKey(parts)+"]]"
			} else {
				prefix, header = path, "["+tomlKey(parts)+"]"
			}
			d.lines[prefix] = line
		case unstable.KeyValue:
			it := e.Key()
			parts, _ := keyParts(&it)
			key := joinKey(prefix, strings.Join(parts, "."))
			line := p.Shape(e.Raw).Start.Line
			d.lines[key] = line
			d.inline(key, e.Value(), line)
			d.entries = append(d.entries, docEntry{key: key, header: header, line: line, raw: e.Raw})
		}
	}
	if err := p.Error(); err != nil {
		var perr *unstable.ParserError
		line := 0
		if errors.As(err, &perr) && len(perr.Highlight) > 0 {
			line = p.Shape(p.Range(perr.Highlight)).Start.Line
		}
		return nil, &ConfigError{File: name, Line: line, Msg: "syntax: " + err.Error()}
	}
	return d, nil
}

// inline records the keys of an inline table value (context = { app = "x" })
// on the line of the key-value that holds it.
func (d *configDoc) inline(key string, v *unstable.Node, line int) {
	if v.Kind != unstable.InlineTable {
		return
	}
	kids := v.Children()
	for kids.Next() {
		kv := kids.Node()
		if kv.Kind != unstable.KeyValue {
			continue
		}
		it := kv.Key()
		parts, _ := keyParts(&it)
		sub := joinKey(key, strings.Join(parts, "."))
		d.lines[sub] = line
		d.inline(sub, kv.Value(), line)
	}
}

func keyParts(it *unstable.Iterator) ([]string, unstable.Range) {
	var parts []string
	var first unstable.Range
	for it.Next() {
		n := it.Node()
		if parts == nil {
			first = n.Raw
		}
		parts = append(parts, string(n.Data))
	}
	return parts, first
}

func joinKey(prefix, key string) string {
	if prefix == "" {
		return key
	}
	return prefix + "." + key
}

var bareKey = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// tomlKey writes a dotted key back as TOML, quoting parts that need it.
func tomlKey(parts []string) string {
	out := make([]string, len(parts))
	for i, s := range parts {
		if bareKey.MatchString(s) {
			out[i] = s
		} else {
			out[i] = strconv.Quote(s)
		}
	}
	return strings.Join(out, ".")
}

// decodeStrict decodes b over Defaults, refusing unknown keys.
func decodeStrict(b []byte, into any) error {
	dec := toml.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return dec.Decode(into)
}

// decodeAll decodes b over Defaults. A value the decoder refuses (a wrong
// type, a bad duration) is found key by key, reported with its line, and
// left out, so that the rest of the file is still decoded and checked.
// It returns the config, the text decoded (b without the refused values),
// the keys refused and the problems.
func decodeAll(name string, b []byte, d *configDoc) (Config, []byte, map[string]bool, []error) {
	cfg := Defaults()
	err := decodeStrict(b, &cfg)
	var strict *toml.StrictMissingError
	if err == nil || errors.As(err, &strict) {
		return cfg, b, nil, unknownKeys(name, strict)
	}
	var errs []error
	refused := map[string]bool{}
	kept := bytes.Clone(b)
	for _, e := range d.entries {
		one := Defaults()
		doc := e.header + "\n" + string(b[e.raw.Offset:e.raw.Offset+e.raw.Length]) + "\n"
		derr := toml.Unmarshal([]byte(doc), &one)
		if derr == nil {
			continue
		}
		errs = append(errs, &ConfigError{File: name, Line: e.line, Key: e.key, Msg: decodeMessage(derr)})
		refused[e.key] = true
		blank(kept[e.raw.Offset : e.raw.Offset+e.raw.Length])
	}
	cfg = Defaults()
	err = decodeStrict(kept, &cfg)
	switch {
	case err == nil:
	case errors.As(err, &strict):
		errs = append(errs, unknownKeys(name, strict)...)
	default: // not a value of one key (a table where an array is wanted...)
		var derr *toml.DecodeError
		line := 0
		if errors.As(err, &derr) {
			line, _ = derr.Position()
		}
		errs = append(errs, &ConfigError{File: name, Line: line, Msg: decodeMessage(err)})
		return cfg, kept, refused, errs
	}
	return cfg, kept, refused, errs
}

// blank replaces a key-value with spaces, keeping its newlines (a
// multi-line array) so that every later line keeps its number.
func blank(b []byte) {
	for i, c := range b {
		if c != '\n' {
			b[i] = ' '
		}
	}
}

func unknownKeys(name string, strict *toml.StrictMissingError) []error {
	if strict == nil {
		return nil
	}
	var errs []error
	for _, e := range strict.Errors {
		row, _ := e.Position()
		errs = append(errs, &ConfigError{File: name, Line: row, Msg: fmt.Sprintf("unknown key %q", strings.Join(e.Key(), "."))})
	}
	return errs
}

var typeMismatch = regexp.MustCompile(`cannot decode TOML (\w+) into .* of type (\S+)$`)

// decodeMessage words a decoder error for a person: the TOML type given and
// the type wanted, without Go's names for them.
func decodeMessage(err error) string {
	msg := strings.TrimPrefix(err.Error(), "toml: ")
	m := typeMismatch.FindStringSubmatch(msg)
	if m == nil {
		return msg
	}
	want := map[string]string{
		"string": "a string", "int": "an integer", "int64": "an integer", "uint32": "an integer", "bool": "true or false",
		"*bool": "true or false", "[]string": "an array of strings", "[]uint32": "an array of integers",
		"map[string]string": "a table of strings", "config.Backend": "a table", "config.Limits": "a table",
		"[]policy.Rule": "an array of tables ([[rule]])",
	}[m[2]]
	if want == "" {
		want = m[2]
	}
	return fmt.Sprintf("a TOML %s where %s is wanted", m[1], want)
}

// located turns Validate's problems into ConfigErrors with the line of
// their key, leaving out keys whose value the decoder already refused (the
// default in its place is not what the file says).
func located(name string, d *configDoc, ps []problem, refused map[string]bool) []error {
	var errs []error
	for _, p := range ps {
		if refused[p.key] {
			continue
		}
		errs = append(errs, &ConfigError{File: name, Line: d.line(p.key), Key: p.key, Msg: p.msg})
	}
	return errs
}

// inFile prefixes each of err's joined errors (Compile's, one per rule
// problem) with the file's name, so that every line names it.
func inFile(name string, err error) []error {
	list := flatten(err)
	out := make([]error, len(list))
	for i, e := range list {
		out[i] = fmt.Errorf("%s: %w", name, e)
	}
	return out
}
