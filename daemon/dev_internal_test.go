package daemon

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestStartSWTPMRefusedPaths: dev directories swtpm cannot be given are
// refused with a clear reason, before swtpm is started: a comma (swtpm's
// options are comma-separated, with no escape) or a socket path too long.
func TestStartSWTPMRefusedPaths(t *testing.T) {
	tests := []struct {
		name, dir, want string
	}{
		{"comma", filepath.Join(t.TempDir(), "dev,1"), "holds a comma"},
		{"too long", filepath.Join(t.TempDir(), strings.Repeat("d", 120)), "use a shorter --dev-dir"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sw, err := startSWTPM(tt.dir)
			if err == nil {
				sw.stop()
				t.Fatal("startSWTPM accepted the directory")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("startSWTPM: %v, want %q", err, tt.want)
			}
		})
	}
}
