package policy

import (
	"strings"
	"testing"
)

func TestGlobMatch(t *testing.T) {
	tests := []struct {
		pattern, name string
		want          bool
	}{
		{"payments/db", "payments/db", true},
		{"payments/db", "payments/db2", false},
		{"payments/db", "payments", false},
		{"payments/db", "payments/db/x", false},
		{"payments/*", "payments/db", true},
		{"payments/*", "payments/db/x", false}, // '*' does not cross '/'
		{"payments/*", "payments", false},
		{"payments/*", "other/db", false},
		{"*", "db", true},
		{"*", "a/b", false},
		{"*/db", "payments/db", true},
		{"*/db", "a/b/db", false},
		{"p*s/db", "payments/db", true},
		{"p*s/db", "ps/db", true},
		{"p*s/db", "payment/db", false},
		{"*-db", "payments-db", true},
		{"*-db", "payments-db-old", false},
		{"a*b*c", "abc", true},
		{"a*b*c", "axxbyyc", true},
		{"a*b*c", "axxbyy", false},
		{"payments/?b", "payments/db", true},
		{"payments/?b", "payments/b", false},
		{"payments/?b", "payments/xdb", false},
		{"payments/db?", "payments/db", false},
		{"a?c", "a/c", false}, // '?' does not match '/'
		{"payments/**", "payments/db", true},
		{"payments/**", "payments/a/b/c", true},
		{"payments/**", "payments", false},
		{"payments/**", "paymentsx/db", false},
		{"pay*/**", "payments/a/b", true},
		{"pay*/**", "payments", false},
		{"a/*/**", "a/b", false},
		{"a/*/**", "a/b/c", true},
		{"a/*/**", "a/b/c/d", true},
		{"**", "x", true},
		{"**", "a/b/c/d", true},
		{"**", "", false},
	}
	for _, tt := range tests {
		g, err := compileGlob(tt.pattern)
		if err != nil {
			t.Fatalf("compileGlob(%q): %v", tt.pattern, err)
		}
		if got := g.match(tt.name); got != tt.want {
			t.Errorf("%q matches %q = %v, want %v", tt.pattern, tt.name, got, tt.want)
		}
	}
}

func TestGlobInvalid(t *testing.T) {
	tests := []struct {
		name, pattern, wantErr string
	}{
		{"empty", "", "empty key pattern"},
		{"upper case", "Payments/*", "byte 0"},
		{"space", "pay ments", "byte 3"},
		{"leading slash", "/payments", "empty segment"},
		{"trailing slash", "payments/", "empty segment"},
		{"double slash", "a//b", "empty segment"},
		{"double star inside", "a/**/b", `"**" is allowed only`},
		{"double star first", "**/a", `"**" is allowed only`},
		{"double star in segment", "a**", `"**" is allowed only`},
		{"triple star", "a/***", `"**" is allowed only`},
		{"double star twice", "a/**/**", `"**" is allowed only`},
		{"leading dot", "payments/.db", "must start with"},
		{"leading dash", "-db", "must start with"},
		{"dot dot", "a/../b", "must start with"},
		{"bracket", "a/[ab]", "byte 0"},
		{"backslash", `a\*`, "byte 1"},
		{"non-ascii", "clé", "byte 2"},
		{"too long", strings.Repeat("a", 129), "at most 128"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := compileGlob(tt.pattern)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("compileGlob(%q) = %v, want error containing %q", tt.pattern, err, tt.wantErr)
			}
		})
	}
}
