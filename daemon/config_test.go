package daemon

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParseConfig(t *testing.T) {
	full := `
socket = "/run/keyward/keyward.sock"
socket_group = "keyward"
log_level = "debug"

[backend]
kind = "pkcs11"
module = "/usr/lib/softhsm/libsofthsm2.so"
token = "keyward"
pin_file = "/etc/keyward/pin"
metadata_max_age = "250ms"

[limits]
max_batch = 100
idle_timeout = "30s"

[[rule]]
name = "payments service"
users = ["payments"]
keys = ["payments/*"]
operations = ["wrap", "unwrap", "datakey"]
context = { app = "payments" }
`
	tests := []struct {
		name    string
		in      string
		check   func(Config) bool
		wantErr string
	}{
		{name: "full", in: full, check: func(c Config) bool {
			return c.SocketGroup == "keyward" && c.Backend.MetadataMaxAge.Duration == 250*time.Millisecond &&
				c.Limits.MaxBatch == 100 && c.Limits.MaxMessage == 4<<20 && len(c.Rules) == 1 &&
				c.Rules[0].Context["app"] == "payments" && c.Limits.IdleTimeout.Duration == 30*time.Second
		}},
		{name: "defaults", in: "[backend]\ntoken = \"k\"\n", check: func(c Config) bool {
			return c.Socket == "/run/keyward/keyward.sock" && c.Limits.MaxPlaintext == 64<<10 && c.Limits.MaxBatch == 1000
		}},
		{name: "unknown top-level key with line", in: "\n\nsokcet = \"/x\"\n[backend]\ntoken = \"k\"\n", wantErr: `test.toml:3: unknown key "sokcet"`},
		{name: "unknown nested key", in: "[backend]\ntoken = \"k\"\npin = \"1234\"\n", wantErr: `test.toml:3: unknown key "backend.pin"`},
		{name: "unknown rule key", in: "[backend]\ntoken = \"k\"\n[[rule]]\nname = \"x\"\nuser = [\"a\"]\n", wantErr: `test.toml:5: unknown key "rule.user"`},
		{name: "wrong type", in: "[backend]\ntoken = 5\n", wantErr: "test.toml:2:"},
		{name: "bad duration", in: "[backend]\ntoken = \"k\"\nmetadata_max_age = \"soon\"\n", wantErr: "test.toml:3:"},
		{name: "token and uri", in: "[backend]\ntoken = \"k\"\nuri = \"pkcs11:token=k\"\n", wantErr: "exactly one of token and uri"},
		{name: "no token", in: "", wantErr: "exactly one of token and uri"},
		{name: "tpm not yet", in: "[backend]\nkind = \"tpm\"\ntoken = \"k\"\n", wantErr: "not available"},
		{name: "limit over max", in: "[backend]\ntoken = \"k\"\n[limits]\nmax_batch = 5000\n", wantErr: "limits.max_batch = 5000: want 1..1000"},
		{name: "plaintext limit over 64 KiB", in: "[backend]\ntoken = \"k\"\n[limits]\nmax_plaintext = 100000\n", wantErr: "limits.max_plaintext"},
		{name: "bad log level", in: "log_level = \"loud\"\n[backend]\ntoken = \"k\"\n", wantErr: "log_level"},
		{name: "syntax", in: "[backend\n", wantErr: "test.toml:1:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseConfig("test.toml", []byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrConfig) {
					t.Fatalf("err = %v, want ErrConfig containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(c) {
				t.Fatalf("config %+v", c)
			}
		})
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte("[backend]\ntoken = \"k\"\n[[rule]]\nname = \"x\"\nuids = [1]\nkeys = [\"a/*\"]\noperations = [\"wrap\"]\n"))
	f.Add([]byte("socket = 1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		ParseConfig("fuzz.toml", b) // never panics
	})
}
