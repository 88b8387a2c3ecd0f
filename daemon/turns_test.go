package daemon

import (
	"log/slog"
	"testing"

	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/keys/keystest"
)

// turnTaker is a device that takes turns between callers.
type turnTaker struct{ *keystest.Mem }

func (turnTaker) TakesTurns() bool { return true }

// TestTurns: calls name their caller only for a device that takes turns
// by it (a TPM); for others the name would be work on every call for
// nothing.
func TestTurns(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	if s := NewService(keystest.NewMem(), "mem", "", nil, config.Defaults().Limits, log); s.turns {
		t.Error("a device that does not take turns: calls name their caller")
	}
	if s := NewService(turnTaker{keystest.NewMem()}, "mem", "", nil, config.Defaults().Limits, log); !s.turns {
		t.Error("a device that takes turns: calls do not name their caller")
	}
}
