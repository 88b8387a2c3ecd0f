package daemon

import (
	"log/slog"
	"os"
	"strings"

	"github.com/coreos/go-systemd/v22/journal"
	slogjournal "github.com/systemd/slog-journal"
)

// NewLogger returns the daemon's logger at level (debug, info, warn, error):
// to the systemd journal, with every attribute as a field of its own
// (journalctl -u keyward OP=unwrap), when stderr is connected to journald,
// as it is for a service; else text on stderr.
func NewLogger(level string) *slog.Logger {
	var l slog.Level
	l.UnmarshalText([]byte(level))
	if h := journalHandler(l); h != nil {
		return slog.New(h)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}

// journalHandler returns nil unless stderr is a journal stream and the
// journal's socket answers: the journal handler drops records silently when
// journald is absent, so it is used only when journald is known to be there.
func journalHandler(l slog.Level) slog.Handler {
	if ok, err := journal.StderrIsJournalStream(); err != nil || !ok || !journal.Enabled() {
		return nil
	}
	h, err := slogjournal.NewHandler(&slogjournal.Options{
		Level:        l,
		ReplaceGroup: journalField,
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			a.Key = journalField(a.Key)
			return a
		},
	})
	if err != nil {
		return nil
	}
	return h
}

// journalReserved are fields the journal gives a meaning of their own
// (systemd.journal-fields(7)): a caller's unit logged as UNIT= would read
// as the unit a message is about.
var journalReserved = map[string]bool{
	"MESSAGE": true, "MESSAGE_ID": true, "PRIORITY": true, "CODE_FILE": true, "CODE_LINE": true,
	"CODE_FUNC": true, "ERRNO": true, "INVOCATION_ID": true, "USER_INVOCATION_ID": true,
	"SYSLOG_FACILITY": true, "SYSLOG_IDENTIFIER": true, "SYSLOG_PID": true, "SYSLOG_TIMESTAMP": true,
	"SYSLOG_RAW": true, "DOCUMENTATION": true, "TID": true, "UNIT": true, "USER_UNIT": true,
}

// journalField maps a lower_snake log key to a journal field name
// ([A-Z0-9_], not starting with "_" or a digit, which the journal refuses):
// uid -> UID, down_for -> DOWN_FOR, unit -> KEYWARD_UNIT.
func journalField(k string) string {
	if k == "" {
		return "" // an empty attribute stays empty, and is dropped
	}
	if k == messageIDKey { // keywardd's own stable ids (break-glass lines), never a caller's
		return k
	}
	b := []byte(strings.ToUpper(k))
	for i, c := range b {
		if (c < 'A' || c > 'Z') && (c < '0' || c > '9') {
			b[i] = '_'
		}
	}
	f := string(b)
	if f[0] == '_' || (f[0] >= '0' && f[0] <= '9') || journalReserved[f] {
		f = "KEYWARD_" + f
	}
	return f
}
