package daemon

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/keyward/keyward/audit"
)

func TestClipCallerRef(t *testing.T) {
	long := strings.Repeat("é", 200) // 400 bytes, 2 per character
	tests := []struct {
		name, ref string
		same      bool
	}{
		{"empty", "", true},
		{"at the limit", strings.Repeat("u", audit.MaxCallerRef), true},
		{"one over", strings.Repeat("u", audit.MaxCallerRef+1), false},
		{"multi-byte characters", long, false},
		{"huge", strings.Repeat("x", 1<<20), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := clipCallerRef(tt.ref)
			if tt.same {
				if got != tt.ref {
					t.Fatalf("changed a reference that fits: %q", got)
				}
				return
			}
			if len(got) > audit.MaxCallerRef || !utf8.ValidString(got) {
				t.Fatalf("clipped to %d bytes (valid UTF-8: %v): %q", len(got), utf8.ValidString(got), got)
			}
			if !strings.Contains(got, "bytes, sha256:") || got[:10] != tt.ref[:10] {
				t.Errorf("clipped %q: want its start, length and digest", got)
			}
			if clipCallerRef(tt.ref) != got || clipCallerRef(tt.ref+"x") == got {
				t.Error("the clipped form must be stable and differ between references")
			}
		})
	}
}
