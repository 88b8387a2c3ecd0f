package secretfile

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/keyward/keyward/internal/safepath"
)

func TestRead(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	big := make([]byte, MaxSize+1)
	for i := range big {
		big[i] = 'x'
	}
	fifo := filepath.Join(dir, "fifo") // no writer: an open without O_NONBLOCK would hang
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(write("target", "1234", 0o600), link); err != nil {
		t.Fatal(err)
	}
	type readCase struct {
		name    string
		path    string
		want    string
		wantErr error
		anyErr  bool
	}
	tests := []readCase{
		{name: "0600 with newline", path: write("a", "1234\n", 0o600), want: "1234"},
		{name: "0400 crlf", path: write("b", "abcd\r\n", 0o400), want: "abcd"},
		{name: "keeps inner spaces", path: write("c", " a b ", 0o600), want: " a b "},
		{name: "group readable", path: write("d", "1234", 0o640), wantErr: ErrTooOpen},
		{name: "world readable", path: write("e", "1234", 0o604), wantErr: ErrTooOpen},
		{name: "empty", path: write("f", "\n", 0o600), wantErr: ErrEmpty},
		{name: "too large", path: write("g", string(big), 0o600), anyErr: true},
		{name: "missing", path: filepath.Join(dir, "nope"), wantErr: os.ErrNotExist},
		{name: "symlink refused", path: link, anyErr: true},
		{name: "directory", path: dir, anyErr: true},
		{name: "fifo", path: fifo, anyErr: true},
	}
	if os.Geteuid() == 0 {
		// Root's and this process's files are accepted; another user's is
		// not, whatever its mode: that user can read and change it.
		theirs := write("theirs", "1234", 0o600)
		if err := os.Chown(theirs, 4242, 4242); err != nil {
			t.Fatal(err)
		}
		tests = append(tests, readCase{name: "another user's file", path: theirs, wantErr: ErrOwner})
		// Root's own file, in a directory another user owns: that user can
		// move it away or put another in its place.
		theirDir := filepath.Join(dir, "theirs.d")
		if err := os.Mkdir(theirDir, 0o755); err != nil {
			t.Fatal(err)
		}
		inTheirs := filepath.Join(theirDir, "pin")
		if err := os.WriteFile(inTheirs, []byte("1234"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(theirDir, 4242, 4242); err != nil {
			t.Fatal(err)
		}
		tests = append(tests, readCase{name: "in another user's directory", path: inTheirs, wantErr: safepath.ErrUnsafe})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Read(tt.path)
			switch {
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
			case tt.anyErr:
				if err == nil {
					t.Fatal("want an error")
				}
			default:
				if err != nil || string(got) != tt.want {
					t.Fatalf("got %q, %v; want %q", got, err, tt.want)
				}
			}
		})
	}
}

func TestResolve(t *testing.T) {
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	if _, err := Resolve("", "pin"); !errors.Is(err, ErrNoSource) {
		t.Fatalf("err = %v", err)
	}
	t.Setenv("CREDENTIALS_DIRECTORY", "/run/credentials/keyward.service")
	if p, _ := Resolve("", "pin"); p != "/run/credentials/keyward.service/pin" {
		t.Fatalf("p = %s", p)
	}
	if p, _ := Resolve("/etc/keyward/pin", "pin"); p != "/etc/keyward/pin" {
		t.Fatalf("p = %s", p)
	}
}
