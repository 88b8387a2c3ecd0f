package envelope_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"maps"
	"testing"

	"github.com/keyward/keyward/envelope"
	"github.com/keyward/keyward/keys"
)

// parseContext inverts CanonicalContext and checks that the encoding is the
// canonical one (sorted, no duplicates, nothing left over).
func parseContext(b []byte) (keys.Context, bool) {
	c := keys.Context{}
	prev, first := "", true
	next := func() (string, bool) {
		if len(b) < 4 {
			return "", false
		}
		n := binary.BigEndian.Uint32(b)
		b = b[4:]
		if uint64(len(b)) < uint64(n) {
			return "", false
		}
		s := string(b[:n])
		b = b[n:]
		return s, true
	}
	for len(b) > 0 {
		k, ok := next()
		if !ok {
			return nil, false
		}
		v, ok := next()
		if !ok {
			return nil, false
		}
		if !first && k <= prev {
			return nil, false
		}
		c[k], prev, first = v, k, false
	}
	return c, true
}

func TestCanonicalContext(t *testing.T) {
	tests := []struct {
		name string
		c    keys.Context
		want []byte
	}{
		{"nil", nil, nil},
		{"empty", keys.Context{}, nil},
		{"one pair", keys.Context{"a": "bc"}, []byte("\x00\x00\x00\x01a\x00\x00\x00\x02bc")},
		{"empty value", keys.Context{"k": ""}, []byte("\x00\x00\x00\x01k\x00\x00\x00\x00")},
		{"sorted bytewise", keys.Context{"b": "1", "B": "2", "a": "3", "\xff": "4", "ab": "5"}, []byte(
			"\x00\x00\x00\x01B\x00\x00\x00\x012" +
				"\x00\x00\x00\x01a\x00\x00\x00\x013" +
				"\x00\x00\x00\x02ab\x00\x00\x00\x015" +
				"\x00\x00\x00\x01b\x00\x00\x00\x011" +
				"\x00\x00\x00\x01\xff\x00\x00\x00\x014")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := envelope.CanonicalContext(tt.c)
			if !bytes.Equal(got, tt.want) {
				t.Errorf("CanonicalContext = %q, want %q", got, tt.want)
			}
			if d := envelope.ContextDigest(tt.c); d != sha256.Sum256(tt.want) {
				t.Errorf("ContextDigest = %x", d)
			}
		})
	}
}

func TestCanonicalContextOrderIndependent(t *testing.T) {
	pairs := [][2]string{{"tenant", "t1"}, {"purpose", "db"}, {"region", "eu"}, {"a", ""}, {"zz", "last"}}
	var want []byte
	// Fill maps in every rotation and both directions; map iteration order is
	// randomised too, so repeat.
	for range 20 {
		for r := range pairs {
			for _, reverse := range []bool{false, true} {
				c := keys.Context{}
				for i := range pairs {
					j := (i + r) % len(pairs)
					if reverse {
						j = len(pairs) - 1 - j
					}
					c[pairs[j][0]] = pairs[j][1]
				}
				got := envelope.CanonicalContext(c)
				if want == nil {
					want = got
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("encoding depends on insertion order: %q vs %q", got, want)
				}
			}
		}
	}
}

func TestCanonicalContextDistinct(t *testing.T) {
	tests := []struct {
		name string
		a, b keys.Context
		same bool
	}{
		{"empty vs nil", keys.Context{}, nil, true},
		{"a:bc vs ab:c", keys.Context{"a": "bc"}, keys.Context{"ab": "c"}, false},
		{"split across pairs", keys.Context{"a": "b", "c": "d"}, keys.Context{"a": "b\x00\x00\x00\x01c\x00\x00\x00\x01d"}, false},
		{"empty value vs none", keys.Context{"a": ""}, nil, false},
		{"value swapped", keys.Context{"a": "1", "b": "2"}, keys.Context{"a": "2", "b": "1"}, false},
		{"key vs value", keys.Context{"a": "b"}, keys.Context{"b": "a"}, false},
		{"same pairs", keys.Context{"x": "1", "y": "2"}, keys.Context{"y": "2", "x": "1"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := envelope.CanonicalContext(tt.a), envelope.CanonicalContext(tt.b)
			if bytes.Equal(a, b) != tt.same {
				t.Errorf("CanonicalContext equal = %v, want %v (%q, %q)", !tt.same, tt.same, a, b)
			}
			if (envelope.ContextDigest(tt.a) == envelope.ContextDigest(tt.b)) != tt.same {
				t.Errorf("ContextDigest equal = %v, want %v", !tt.same, tt.same)
			}
		})
	}
}

// FuzzCanonicalContext checks that the encoding parses back to the same
// context, and that two contexts encode alike exactly when they are equal.
func FuzzCanonicalContext(f *testing.F) {
	f.Add("a", "bc", "ab", "c", "a", "bc", "ab", "c")
	f.Add("a", "bc", "", "", "ab", "c", "", "")
	f.Add("k", "\x00\x00\x00\x01", "", "x", "k", "", "\x00", "x")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2, k3, v3, k4, v4 string) {
		c1 := keys.Context{k1: v1, k2: v2}
		c2 := keys.Context{k3: v3, k4: v4}
		b1, b2 := envelope.CanonicalContext(c1), envelope.CanonicalContext(c2)
		for _, x := range []struct {
			c keys.Context
			b []byte
		}{{c1, b1}, {c2, b2}} {
			back, ok := parseContext(x.b)
			if !ok || !maps.Equal(back, x.c) {
				t.Fatalf("CanonicalContext(%q) = %q does not parse back", x.c, x.b)
			}
		}
		if bytes.Equal(b1, b2) != maps.Equal(c1, c2) {
			t.Fatalf("contexts %q and %q: encodings equal = %v", c1, c2, bytes.Equal(b1, b2))
		}
	})
}
