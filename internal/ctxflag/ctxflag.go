// Package ctxflag is the repeatable --context k=v flag of keyward's and
// keywardd's commands (a pflag.Value and a flag.Value).
package ctxflag

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/keyward/keyward/keys"
)

// Flag collects --context k=v flags; a key given twice is an error.
type Flag struct{ Pairs keys.Context }

func (f *Flag) String() string {
	if f == nil || len(f.Pairs) == 0 {
		return ""
	}
	return Format(f.Pairs)
}

// Set adds one k=v pair.
func (f *Flag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want key=value, got %q", s)
	}
	if f.Pairs == nil {
		f.Pairs = keys.Context{}
	}
	if _, dup := f.Pairs[k]; dup {
		return fmt.Errorf("context key %q given twice", k)
	}
	f.Pairs[k] = v
	return nil
}

// Type is what help shows after --context.
func (f *Flag) Type() string { return "k=v" }

// Format renders a context as k=v pairs sorted by key, comma-separated.
// For the flag's own value and the demo's constants: never print a
// context a daemon or a caller sent.
func Format(c keys.Context) string {
	var b strings.Builder
	for i, k := range slices.Sorted(maps.Keys(c)) {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%s=%s", k, c[k])
	}
	return b.String()
}
