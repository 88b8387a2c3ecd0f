package audit

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// TestCallerRef: a caller's reference is written after reason, read back
// as written, left out when empty, and refused past MaxCallerRef bytes.
func TestCallerRef(t *testing.T) {
	r := rec("req-ref")
	r.CallerRef = "0f9b6c1e-3d2a-4c5b-9e8f-7a6b5c4d3e2f"
	p, err := prepare(r, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	line, _ := appendLine(nil, 1, [32]byte{}, p)
	if !strings.Contains(string(line), `"result":"OK","caller_ref":"0f9b6c1e-3d2a-4c5b-9e8f-7a6b5c4d3e2f","duration_us"`) {
		t.Fatalf("line %s", line)
	}
	back, err := parseLine(line[:len(line)-1])
	if err != nil || back.CallerRef != r.CallerRef {
		t.Fatalf("parsed %q, %v", back.CallerRef, err)
	}
	r.CallerRef = ""
	p, _ = prepare(r, time.Now())
	if line, _ := appendLine(nil, 1, [32]byte{}, p); strings.Contains(string(line), "caller_ref") {
		t.Fatalf("empty caller_ref written: %s", line)
	}
	r.CallerRef = strings.Repeat("x", MaxCallerRef+1)
	if _, err := prepare(r, time.Now()); !errors.Is(err, ErrInvalidRecord) {
		t.Fatalf("caller_ref of %d bytes: %v", MaxCallerRef+1, err)
	}
}
