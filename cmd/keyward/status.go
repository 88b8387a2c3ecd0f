package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	keywardv1 "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/client"
	"github.com/keyward/keyward/internal/version"
)

// statusJSON is status --json's output.
type statusJSON struct {
	Version        string     `json:"version"`
	ClientVersion  string     `json:"client_version"`
	Backend        string     `json:"backend"`
	BackendHealthy bool       `json:"backend_healthy"`
	BackendError   string     `json:"backend_error,omitempty"`
	Keys           uint32     `json:"keys"`
	Audit          string     `json:"audit"`
	AuditSync      string     `json:"audit_sync,omitempty"`
	AuditUnsynced  uint64     `json:"audit_unsynced"`
	Started        *time.Time `json:"started,omitempty"`
	You            peerJSON   `json:"you"`
	// RateLimited lists the per-minute limits refusing the caller now.
	RateLimited []rateLimitJSON `json:"rate_limited"`
}

type rateLimitJSON struct {
	Limit     string    `json:"limit"`
	PerMinute uint32    `json:"per_minute"`
	Until     time.Time `json:"until"`
}

type peerJSON struct {
	UID    uint32   `json:"uid"`
	GID    uint32   `json:"gid"`
	Groups []uint32 `json:"groups"`
	PID    int32    `json:"pid"`
	Unit   string   `json:"unit,omitempty"`
}

func (a *app) statusCmd() *cobra.Command {
	var asJSON bool
	var wait time.Duration
	c := &cobra.Command{
		Use:   "status [--json] [--wait[=TIMEOUT]]",
		Short: "show the daemon's health and how it sees you",
		Long: `Shows the daemon's version (and this command's), backend and its health,
the number of keys, and who the daemon thinks you are: the uid, gid, groups, pid and systemd unit
the kernel reported for this process, which is what the policy decides on,
and whether the daemon is refusing you for going over a per-minute limit
(denied requests, failed verify-mac) and until when. Any caller may ask.
Exit status 5 when the backend is unhealthy.

With --wait, for scripts and CI that start keywardd: asks again every 100 ms
until the daemon answers with a healthy backend (then prints the status
and exits 0), for at most TIMEOUT (default 30s). A daemon not started yet,
not listening yet or not healthy yet is waited for; this user being refused
the socket, or another uid serving it, ends the wait at once. On timeout:
exit 5, and the last reason on stderr. --timeout bounds each attempt.`,
		Example: `  keyward status
  keyward status --json | jq .you
  keywardd --dev --socket /tmp/kw/kw.sock & keyward --socket /tmp/kw/kw.sock status --wait=60s`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if wait < 0 {
				return usagef(cmdName(c), "--wait %v is negative", wait)
			}
			if wait > 0 {
				st, err := a.waitHealthy(c.Context(), wait)
				if err != nil {
					return err
				}
				return a.showStatus(st, asJSON)
			}
			return a.withClient(c, func(ctx context.Context, kc *client.Client) error {
				st, err := kc.Status(ctx)
				if err != nil {
					return err
				}
				return a.showStatus(st, asJSON)
			})
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON")
	c.Flags().DurationVar(&wait, "wait", 0, "wait up to `TIMEOUT` (default 30s when given without a value) for the daemon to answer healthy")
	c.Flags().Lookup("wait").NoOptDefVal = defaultWait.String()
	return c
}

// showStatus prints a status; an unhealthy backend is an error (exit 5).
func (a *app) showStatus(st *keywardv1.StatusResponse, asJSON bool) error {
	out := toStatusJSON(st)
	var err error
	if asJSON {
		err = writeJSON(a.stdout, out)
	} else {
		err = printStatus(a, out)
	}
	if err == nil && !out.BackendHealthy {
		return fmt.Errorf("status: backend %s is unhealthy: %s: %w", out.Backend, orText(out.BackendError, "no reason given"), client.ErrUnavailable)
	}
	return err
}

func toStatusJSON(st *keywardv1.StatusResponse) statusJSON {
	you := st.GetYou()
	out := statusJSON{
		Version: st.GetVersion(), ClientVersion: version.String(), Backend: st.GetBackend(), BackendHealthy: st.GetBackendHealthy(),
		BackendError: st.GetBackendError(), Keys: st.GetKeys(), Audit: st.GetAudit(),
		AuditSync: st.GetAuditSync(), AuditUnsynced: st.GetAuditUnsynced(),
		You: peerJSON{UID: you.GetUid(), GID: you.GetGid(), Groups: you.GetGroups(), PID: you.GetPid(), Unit: you.GetUnit()},
	}
	if out.You.Groups == nil {
		out.You.Groups = []uint32{}
	}
	out.RateLimited = []rateLimitJSON{}
	for _, l := range st.GetRateLimited() {
		out.RateLimited = append(out.RateLimited, rateLimitJSON{Limit: l.GetLimit(), PerMinute: l.GetPerMinute(), Until: l.GetUntil().AsTime()})
	}
	if st.GetStarted() != nil {
		t := st.GetStarted().AsTime()
		out.Started = &t
	}
	return out
}

func printStatus(a *app, s statusJSON) error {
	since := ""
	if s.Started != nil {
		since = fmt.Sprintf(", serving since %s (up %s)", timeText(s.Started), time.Since(*s.Started).Round(time.Second))
	}
	health := "healthy"
	if !s.BackendHealthy {
		health = "UNHEALTHY: " + orText(s.BackendError, "no reason given")
	}
	groups := make([]string, len(s.You.Groups))
	for i, g := range s.You.Groups {
		groups[i] = strconv.FormatUint(uint64(g), 10)
	}
	_, err := fmt.Fprintf(a.stdout, "keywardd %s at %s%s\nbackend %s: %s\nkeys: %d\naudit log: %s\nyou are uid=%d gid=%d groups=%s pid=%d unit=%s\nkeyward (this command) %s\n",
		orText(s.Version, "(version unknown)"), a.socket, since, orText(s.Backend, "?"), health, s.Keys, auditText(s),
		s.You.UID, s.You.GID, orText(strings.Join(groups, ","), "-"), s.You.PID, orText(s.You.Unit, "-"), s.ClientVersion)
	for _, l := range s.RateLimited {
		if err == nil {
			_, err = fmt.Fprintf(a.stdout, "you are RATE LIMITED: over %d %s a minute; your calls are refused until %s\n",
				l.PerMinute, l.Limit, l.Until.UTC().Format(time.RFC3339))
		}
	}
	return err
}

// auditText is the audit line: its state, and how records reach the disk.
func auditText(s statusJSON) string {
	text := orText(s.Audit, "?")
	switch s.AuditSync {
	case "":
	case "write":
		text += fmt.Sprintf(" (audit_sync write: %d records written, not yet fsynced)", s.AuditUnsynced)
	default:
		text += " (audit_sync " + s.AuditSync + ")"
	}
	return text
}

func orText(s, alt string) string {
	if s == "" {
		return alt
	}
	return s
}
