package credstore

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseAddress(t *testing.T) {
	tests := []struct {
		addr, unit, id string
		ok             bool
	}{
		{"@f417f1c11b374535/unit/t-cred.service/mysecret", "t-cred.service", "mysecret", true},
		{"@f417f1c11b3745/unit/app@blue.service/db-password", "app@blue.service", "db-password", true},
		{"@0/unit/x.socket/a.b_c-d", "x.socket", "a.b_c-d", true},
		{"f417f1c11b374535/unit/t.service/s", "", "", false},                    // not abstract
		{"@F417/unit/t.service/s", "", "", false},                               // upper-case hex
		{"@12345678901234567/unit/t.service/s", "", "", false},                  // 17 digits
		{"@/unit/t.service/s", "", "", false},                                   // no random part
		{"@abc/user/t.service/s", "", "", false},                                // not "unit"
		{"@abc/unit/t.service/s/extra", "", "", false},                          // too many parts
		{"@abc/unit/t.service", "", "", false},                                  // no id
		{"@abc/unit/t.mount/s", "", "", false},                                  // not a service or socket
		{"@abc/unit/app@.service/s", "", "", false},                             // a template never asks
		{"@abc/unit/../s", "", "", false},                                       // traversal
		{"@abc/unit/t.service/..", "", "", false},                               // traversal
		{"@abc/unit/t.service/.hidden", "", "", false},                          // dot file
		{"@abc/unit/t.service/a b", "", "", false},                              // space
		{"@abc/unit/t%.service/s", "", "", false},                               // bad unit char
		{"@abc/unit/t.service/" + strings.Repeat("a", 129), "", "", false},      // long id
		{"@abc/unit/" + strings.Repeat("a", 120) + ".service/s", "", "", false}, // longer than sun_path
		{"", "", "", false},
	}
	for _, tt := range tests {
		r, err := ParseAddress(tt.addr)
		if tt.ok != (err == nil) || r.Unit != tt.unit || r.ID != tt.id {
			t.Errorf("ParseAddress(%q) = %+v, %v; want %q %q ok=%v", tt.addr, r, err, tt.unit, tt.id, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrAddress) {
			t.Errorf("ParseAddress(%q): %v does not wrap ErrAddress", tt.addr, err)
		}
	}
}

func TestTemplate(t *testing.T) {
	for in, want := range map[string]string{"app@blue.service": "app@.service", "a@b.c.socket": "a@.socket", "app.service": "", "app@.service": ""} {
		got, ok := Template(in)
		if got != want || ok != (want != "") {
			t.Errorf("Template(%q) = %q %v, want %q", in, got, ok, want)
		}
	}
}

func newStore(t *testing.T) *Store {
	dir := filepath.Join(t.TempDir(), "credstore")
	return New(dir)
}

func TestStoreRoundTripAndFallback(t *testing.T) {
	s := newStore(t)
	if _, _, err := s.Read("a.service", "x"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("read from a missing store: %v", err)
	}
	if err := s.Write("a.service", "x", []byte("blob-a"), false); err != nil {
		t.Fatal(err)
	}
	if err := s.Write("a.service", "x", []byte("blob-b"), false); !errors.Is(err, ErrExists) {
		t.Fatalf("second write without replace: %v", err)
	}
	if err := s.Write("a.service", "x", []byte("blob-c"), true); err != nil {
		t.Fatal(err)
	}
	b, u, err := s.Read("a.service", "x")
	if err != nil || u != "a.service" || string(b) != "blob-c" {
		t.Fatalf("Read = %q %q %v", b, u, err)
	}
	for _, p := range []string{s.Dir(), filepath.Join(s.Dir(), "a.service"), filepath.Join(s.Dir(), "a.service", "x")} {
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm()&0o077 != 0 {
			t.Fatalf("%s: %v %v", p, fi.Mode(), err)
		}
	}
	// Template fallback, and the instance's own credential first.
	if err := s.Write("app@.service", "db", []byte("tmpl"), false); err != nil {
		t.Fatal(err)
	}
	if b, u, err := s.Read("app@blue.service", "db"); err != nil || u != "app@.service" || string(b) != "tmpl" {
		t.Fatalf("fallback: %q %q %v", b, u, err)
	}
	if err := s.Write("app@blue.service", "db", []byte("own"), false); err != nil {
		t.Fatal(err)
	}
	if b, u, err := s.Read("app@blue.service", "db"); err != nil || u != "app@blue.service" || string(b) != "own" {
		t.Fatalf("instance's own: %q %q %v", b, u, err)
	}
	es, err := s.List("")
	if err != nil || len(es) != 3 || es[0].Unit != "a.service" || es[1].Unit != "app@.service" || es[2].Unit != "app@blue.service" {
		t.Fatalf("List = %+v, %v", es, err)
	}
	if err := s.Remove("a.service", "x"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(s.Dir(), "a.service")); !os.IsNotExist(err) {
		t.Fatalf("empty unit directory left: %v", err)
	}
	if err := s.Remove("a.service", "x"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second remove: %v", err)
	}
}

func TestStoreRefusesUnsafeEntries(t *testing.T) {
	s := newStore(t)
	if err := s.Write("a.service", "x", []byte("blob"), false); err != nil {
		t.Fatal(err)
	}
	unitDir := filepath.Join(s.Dir(), "a.service")
	tests := []struct {
		name  string
		setup func(t *testing.T) (unit, id string)
	}{
		{"file symlink", func(t *testing.T) (string, string) {
			must(t, os.Symlink(filepath.Join(unitDir, "x"), filepath.Join(unitDir, "link")))
			return "a.service", "link"
		}},
		{"directory symlink", func(t *testing.T) (string, string) {
			must(t, os.Symlink(unitDir, filepath.Join(s.Dir(), "b.service")))
			return "b.service", "x"
		}},
		{"group-readable file", func(t *testing.T) (string, string) {
			must(t, os.WriteFile(filepath.Join(unitDir, "wide"), []byte("blob"), 0o640))
			must(t, os.Chmod(filepath.Join(unitDir, "wide"), 0o640))
			return "a.service", "wide"
		}},
		{"hard link", func(t *testing.T) (string, string) {
			must(t, os.Link(filepath.Join(unitDir, "x"), filepath.Join(unitDir, "hard")))
			return "a.service", "hard"
		}},
		{"oversized", func(t *testing.T) (string, string) {
			must(t, os.WriteFile(filepath.Join(unitDir, "big"), bytes.Repeat([]byte("a"), MaxFile+1), 0o600))
			return "a.service", "big"
		}},
		{"fifo", func(t *testing.T) (string, string) {
			must(t, mkfifo(filepath.Join(unitDir, "fifo")))
			return "a.service", "fifo"
		}},
		{"other owner", func(t *testing.T) (string, string) {
			p := filepath.Join(unitDir, "theirs")
			must(t, os.WriteFile(p, []byte("blob"), 0o600))
			must(t, os.Chown(p, 4242, 4242))
			return "a.service", "theirs"
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if os.Geteuid() != 0 && tt.name == "other owner" {
				t.Skip("chown needs root")
			}
			u, id := tt.setup(t)
			if _, _, err := s.Read(u, id); !errors.Is(err, ErrUnsafe) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("Read(%s, %s) = %v, want refused as unsafe", u, id, err)
			}
		})
	}
	must(t, os.Chmod(s.Dir(), 0o755))
	if _, _, err := s.Read("a.service", "x"); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("store directory 0755: %v", err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// FuzzParseAddress: any peer address either parses into names the store
// accepts, or is refused with ErrAddress; never a crash.
func FuzzParseAddress(f *testing.F) {
	for _, s := range []string{"@f417f1c11b374535/unit/t-cred.service/mysecret", "@0/unit/app@blue.service/x", "@abc/unit/../s", "", "@"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseAddress(s)
		if err != nil {
			if !errors.Is(err, ErrAddress) {
				t.Fatalf("%q: %v does not wrap ErrAddress", s, err)
			}
			return
		}
		if CheckUnit(r.Unit) != nil || CheckID(r.ID) != nil || strings.Contains(r.Unit+r.ID, "/") {
			t.Fatalf("%q parsed into %+v", s, r)
		}
	})
}
