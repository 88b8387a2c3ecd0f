package daemon

import (
	"strings"
	"testing"
	"time"

	"github.com/keyward/keyward/config"
)

// TestRestartOnly: every setting read only at start is named when a reload
// changes it; the reloadable ones are not.
func TestRestartOnly(t *testing.T) {
	tests := []struct {
		name string
		edit func(*config.Config)
		want string // "": nothing named
	}{
		{"rules' limit", func(c *config.Config) { c.Limits.MaxBatch = 7 }, ""},
		{"socket", func(c *config.Config) { c.Socket = "/run/other.sock" }, "socket"},
		{"metrics", func(c *config.Config) { c.MetricsListen = "127.0.0.1:9999" }, "metrics_socket, metrics_listen"},
		{"rotation check", func(c *config.Config) { c.RotationCheckInterval = config.Duration{Duration: time.Minute} }, "rotation_check_interval"},
		{"break-glass state", func(c *config.Config) { c.BreakglassState = "/var/lib/other.json" }, "breakglass_state"},
		{"connection limit", func(c *config.Config) { c.Limits.MaxConnections = 3 }, "limits.max_message"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			old, cur := config.Defaults(), config.Defaults()
			tt.edit(&cur)
			got := strings.Join(restartOnly(old, cur), "; ")
			if tt.want == "" && got != "" || !strings.HasPrefix(got, tt.want) {
				t.Errorf("restartOnly = %q, want %q", got, tt.want)
			}
		})
	}
}
