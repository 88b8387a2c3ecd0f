package main

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/keyward/keyward/hsm"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/tpm"
)

// TestHint: the advice the libraries' errors no longer carry is printed by
// the CLI, and only where it is right: a rolled-back state directory is
// never told to be trusted as it is.
func TestHint(t *testing.T) {
	tests := []struct {
		name    string
		err     error
		want    string // "" : no hint
		wantNot string
	}{
		{name: "history lost", err: fmt.Errorf("open: %w", tpm.ErrHistoryLost), want: "--trust-current-state"},
		{name: "rolled back", err: fmt.Errorf("open: %w", tpm.ErrRollback), wantNot: "--trust-current-state"},
		{name: "owner auth", err: fmt.Errorf("open: %w", tpm.ErrOwnerAuth), want: "--owner-auth-file"},
		{name: "no simulator", err: tpm.ErrNoSimulator, want: "-tags tpmsim"},
		{name: "integrity", err: fmt.Errorf("key a v1: %w", keys.ErrIntegrity)},
		{name: "wrong pin", err: fmt.Errorf("token: %w", hsm.ErrCredential)},
		{name: "plain", err: errors.New("something")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := hint(tc.err)
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) || tc.wantNot != "" && strings.Contains(got, tc.wantNot) {
				t.Fatalf("hint(%v) = %q, want it to say %q and not %q", tc.err, got, tc.want, tc.wantNot)
			}
		})
	}
}

// TestNoCLIAdviceInLibraryErrors: the tpm sentinels that get a hint say what
// is wrong, not which command to run.
func TestNoCLIAdviceInLibraryErrors(t *testing.T) {
	for _, err := range []error{tpm.ErrHistoryLost, tpm.ErrOwnerAuth, tpm.ErrNoSimulator, tpm.ErrCredential, hsm.ErrCredential, keys.ErrReadOnly} {
		if s := err.Error(); strings.Contains(s, "keyward") || strings.Contains(s, "--") || strings.Contains(s, "-tags") {
			t.Errorf("%q carries CLI advice", s)
		}
	}
}
