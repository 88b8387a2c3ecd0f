package policy

import (
	"fmt"
	"strings"

	"github.com/keyward/keyward/keys"
)

// glob is a compiled key pattern. Key names are segments joined by '/'; a
// pattern is matched segment by segment, which is why '*' and '?' never cross
// a '/'.
type glob struct {
	src  string
	segs []string // per-segment patterns, possibly with '*' and '?'
	deep bool     // ends with "/**" (or is "**", with no segs): one or more further segments
}

// compileGlob validates a key pattern: the key-name grammar with '*' (any run
// of characters within a segment) and '?' (one character within a segment),
// and "**" only as the whole last segment.
func compileGlob(p string) (glob, error) {
	switch {
	case p == "":
		return glob{}, fmt.Errorf("empty key pattern")
	case len(p) > keys.MaxNameLen:
		return glob{}, fmt.Errorf("key pattern %s is %d bytes, at most %d", quote(p), len(p), keys.MaxNameLen)
	case p == "**":
		return glob{src: p, deep: true}, nil
	}
	body, deep := strings.CutSuffix(p, "/**")
	g := glob{src: p, deep: deep, segs: strings.Split(body, "/")}
	for _, seg := range g.segs {
		if err := checkSegment(seg); err != nil {
			return glob{}, fmt.Errorf("key pattern %s: %s", quote(p), err)
		}
	}
	return g, nil
}

func checkSegment(seg string) error {
	if seg == "" {
		return fmt.Errorf("empty segment")
	}
	for i := 0; i < len(seg); i++ {
		switch c := seg[i]; {
		case c == '*':
			if i+1 < len(seg) && seg[i+1] == '*' {
				return fmt.Errorf("\"**\" is allowed only as the whole last segment")
			}
		case c == '?':
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '.' || c == '_' || c == '-':
			if i == 0 {
				return fmt.Errorf("a segment must start with [a-z0-9] or a wildcard")
			}
		default:
			return fmt.Errorf("byte %d is not in [a-z0-9._-/*?]", i)
		}
	}
	return nil
}

// match reports whether the key name matches. name is expected to be valid
// (Decide checks it first); an empty name never matches.
func (g *glob) match(name string) bool {
	if name == "" {
		return false
	}
	rest, more := name, true
	for _, sp := range g.segs {
		if !more {
			return false
		}
		seg := rest
		if j := strings.IndexByte(rest, '/'); j >= 0 {
			seg, rest = rest[:j], rest[j+1:]
		} else {
			rest, more = "", false
		}
		if !matchSegment(sp, seg) {
			return false
		}
	}
	if g.deep {
		return more && rest != ""
	}
	return !more
}

// matchSegment matches one segment against a pattern of literals, '*' and
// '?', backtracking only to the last '*' (linear in practice, O(len(p)*len(s))
// at worst).
func matchSegment(p, s string) bool {
	px, sx := 0, 0
	starPx, starSx := -1, 0
	for px < len(p) || sx < len(s) {
		if px < len(p) {
			switch c := p[px]; c {
			case '*':
				starPx, starSx = px, sx+1
				px++
				continue
			case '?':
				if sx < len(s) {
					px++
					sx++
					continue
				}
			default:
				if sx < len(s) && s[sx] == c {
					px++
					sx++
					continue
				}
			}
		}
		if starPx >= 0 && starSx <= len(s) {
			px, sx = starPx+1, starSx
			starSx++
			continue
		}
		return false
	}
	return true
}
