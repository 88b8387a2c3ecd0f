package audit

import (
	"errors"
	"path/filepath"
	"syscall"
	"testing"
)

// TestOpenRegularFIFO: a FIFO in a log file's place is refused at once,
// not waited on.
func TestOpenRegularFIFO(t *testing.T) {
	p := filepath.Join(t.TempDir(), "audit.log")
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenRegular(p); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("OpenRegular(FIFO) = %v, want ErrUnsafe", err)
	}
	if _, err := FileLines(p); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("FileLines(FIFO) = %v, want ErrUnsafe", err)
	}
}
