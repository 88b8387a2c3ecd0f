package daemon

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestReadMachineID: the machine id is read only from a regular file of
// root's that only root may write, as 32 lowercase hex digits; anything
// else is refused, never followed or guessed at.
func TestReadMachineID(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("the files must be root's")
	}
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	const id = "0123456789abcdef0123456789abcdef"
	write := func(name, body string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
		return p
	}
	write("good", id+"\n", 0o444)
	link := filepath.Join(dir, "link")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, path, want string
	}{
		{"good", good, id},
		{"no newline", write("bare", id, 0o444), id},
		{"symlink", link, ""},
		{"group-writable", write("gw", id+"\n", 0o464), ""},
		{"upper case", write("upper", "0123456789ABCDEF0123456789ABCDEF\n", 0o444), ""},
		{"short", write("short", "0123\n", 0o444), ""},
		{"long", write("long", id+id+"\n", 0o444), ""},
		{"empty", write("empty", "", 0o444), ""},
		{"missing", filepath.Join(dir, "none"), ""},
		{"directory", dir, ""},
	} {
		got, err := readMachineID(tc.path)
		if got != tc.want || (tc.want == "") != errors.Is(err, errMachineID) {
			t.Errorf("%s: %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
}
