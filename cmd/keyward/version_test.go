package main

import (
	"bytes"
	"context"
	"testing"

	"github.com/keyward/keyward/internal/version"
)

// TestVersionFlag: --version (and -v) print the build version, exit 0,
// and need no daemon.
func TestVersionFlag(t *testing.T) {
	for _, arg := range []string{"--version", "-v"} {
		var out, errOut bytes.Buffer
		if code := run(context.Background(), []string{"--socket", "/nonexistent/keyward.sock", arg}, nil, &out, &errOut); code != exitOK || out.String() != version.Line("keyward")+"\n" {
			t.Errorf("%s: exit %d, %q %q", arg, code, out.String(), errOut.String())
		}
	}
}
