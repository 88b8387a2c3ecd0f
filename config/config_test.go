package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keyward/keyward/hsm"
	"github.com/keyward/keyward/tpm"
)

var hsmParse = hsm.ParseURI

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
		{name: "limit over max", in: "[backend]\ntoken = \"k\"\n[limits]\nmax_batch = 5000\n", wantErr: "limits.max_batch = 5000: want 1..1000"},
		{name: "plaintext limit over 64 KiB", in: "[backend]\ntoken = \"k\"\n[limits]\nmax_plaintext = 100000\n", wantErr: "limits.max_plaintext"},
		{name: "bad log level", in: "log_level = \"loud\"\n[backend]\ntoken = \"k\"\n", wantErr: "log_level"},
		{name: "syntax", in: "[backend\n", wantErr: "test.toml:1:"},
		{name: "audit sync default", in: "[backend]\ntoken = \"k\"\n", check: func(c Config) bool {
			return c.AuditSync == "fsync" && c.AuditSyncInterval.Duration == time.Second
		}},
		{name: "audit sync write", in: "audit_sync = \"write\"\naudit_sync_interval = \"250ms\"\n[backend]\ntoken = \"k\"\n", check: func(c Config) bool {
			return c.AuditSync == "write" && c.AuditSyncInterval.Duration == 250*time.Millisecond
		}},
		{name: "audit sync unknown", in: "audit_sync = \"never\"\n[backend]\ntoken = \"k\"\n", wantErr: `audit_sync = "never": want "fsync" or "write"`},
		{name: "audit preallocate", in: "audit_preallocate = false\n[backend]\ntoken = \"k\"\n", check: func(c Config) bool {
			return !c.AuditPreallocate && Defaults().AuditPreallocate
		}},
		{name: "audit sync interval too short", in: "audit_sync_interval = \"1ms\"\n[backend]\ntoken = \"k\"\n", wantErr: "audit_sync_interval = 1ms: want 10ms..1h"},
		{name: "audit sync interval too long", in: "audit_sync_interval = \"2h\"\n[backend]\ntoken = \"k\"\n", wantErr: "audit_sync_interval = 2h: want 10ms..1h"},
	}
	tests = append(tests, tpmConfigTests...)
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

// tpmConfigTests: kind "tpm", its keys, and keys of the other kind.
var tpmConfigTests = []struct {
	name    string
	in      string
	check   func(Config) bool
	wantErr string
}{
	{name: "tpm full", in: `
[backend]
kind = "tpm"
device = "swtpm+unix:/run/swtpm/tpm.sock"
state_dir = "/srv/keyward/tpm"
parent_handle = 0x81000001
pin_file = "/etc/keyward/pin"
`, check: func(c Config) bool {
		b := c.Backend
		return b.Kind == "tpm" && b.Device == "swtpm+unix:/run/swtpm/tpm.sock" && b.StateDir == "/srv/keyward/tpm" &&
			b.ParentHandle == 0x81000001 && b.PINFile == "/etc/keyward/pin"
	}},
	{name: "tpm defaults", in: "[backend]\nkind = \"tpm\"\n", check: func(c Config) bool {
		b := c.Backend
		return b.Device == "/dev/tpmrm0" && b.StateDir == "/var/lib/keyward/tpm" && b.ParentHandle == 0 && b.PINFile == ""
	}},
	{name: "tpm rollback counter on by default", in: "[backend]\nkind = \"tpm\"\n", check: func(c Config) bool {
		return c.Backend.RollbackCounter == nil
	}},
	{name: "tpm rollback counter off", in: "[backend]\nkind = \"tpm\"\nrollback_counter = false\n", check: func(c Config) bool {
		return c.Backend.RollbackCounter != nil && !*c.Backend.RollbackCounter
	}},
	{name: "rollback counter is a tpm key", in: "[backend]\nkind = \"pkcs11\"\ntoken = \"t\"\nrollback_counter = false\n", wantErr: "test.toml:4:"},
	{name: "tpm rollback counter not a bool", in: "[backend]\nkind = \"tpm\"\nrollback_counter = \"off\"\n", wantErr: "test.toml:3:"},
	{name: "tpm over tcp", in: "[backend]\nkind = \"tpm\"\ndevice = \"swtpm:127.0.0.1:2321\"\n", check: func(c Config) bool {
		return c.Backend.Device == "swtpm:127.0.0.1:2321"
	}},
	{name: "tpm as an inline table", in: "backend = { kind = \"tpm\", device = \"/dev/tpm0\" }\n", check: func(c Config) bool {
		return c.Backend.Kind == "tpm" && c.Backend.Device == "/dev/tpm0"
	}},
	{name: "parent handle quoted", in: "[backend]\nkind = \"tpm\"\nparent_handle = \"0x81000002\"\n", check: func(c Config) bool {
		return c.Backend.ParentHandle == 0x81000002
	}},
	{name: "parent handle decimal", in: "[backend]\nkind = \"tpm\"\nparent_handle = 2164260865\n", check: func(c Config) bool {
		return c.Backend.ParentHandle == 0x81000001
	}},
	{name: "parent handle not persistent", in: "[backend]\nkind = \"tpm\"\nparent_handle = 0x80000001\n", wantErr: "backend.parent_handle = 0x80000001: want a persistent handle"},
	{name: "parent handle over 32 bits", in: "[backend]\nkind = \"tpm\"\nparent_handle = 0x181000001\n", wantErr: "test.toml:3:"},
	{name: "parent handle negative", in: "[backend]\nkind = \"tpm\"\nparent_handle = -1\n", wantErr: "test.toml:3:"},
	{name: "parent handle not a number", in: "[backend]\nkind = \"tpm\"\nparent_handle = \"srk\"\n", wantErr: "test.toml:3:"},
	{name: "tpm unknown device form", in: "[backend]\nkind = \"tpm\"\ndevice = \"tpm0\"\n", wantErr: `backend.device = "tpm0"`},
	{name: "tpm empty device", in: "[backend]\nkind = \"tpm\"\ndevice = \"\"\n", wantErr: `backend.device = ""`},
	{name: "tpm swtpm without port", in: "[backend]\nkind = \"tpm\"\ndevice = \"swtpm:localhost\"\n", wantErr: "want swtpm:HOST:PORT"},
	{name: "tpm swtpm port 0", in: "[backend]\nkind = \"tpm\"\ndevice = \"swtpm:127.0.0.1:0\"\n", wantErr: "PORT must be 1-65535"},
	{name: "tpm swtpm relative socket", in: "[backend]\nkind = \"tpm\"\ndevice = \"swtpm+unix:tpm.sock\"\n", wantErr: "absolute socket path"},
	{name: "tpm sim bad seed", in: "[backend]\nkind = \"tpm\"\ndevice = \"sim:x\"\n", wantErr: "SEED must be a decimal uint64"},
	{name: "tpm relative state dir", in: "[backend]\nkind = \"tpm\"\nstate_dir = \"tpm\"\n", wantErr: `backend.state_dir = "tpm": want an absolute path`},
	{name: "unknown kind", in: "[backend]\nkind = \"tmp\"\n", wantErr: `backend.kind = "tmp": want pkcs11 or tpm`},
	{name: "module with tpm", in: "[backend]\nkind = \"tpm\"\nmodule = \"/usr/lib/x.so\"\n", wantErr: `test.toml:3: "backend.module" is not a setting of backend.kind "tpm" (it takes device, state_dir, parent_handle, pin_file, rollback_counter)`},
	{name: "token with tpm", in: "[backend]\ntoken = \"k\"\nkind = \"tpm\"\n", wantErr: `test.toml:2: "backend.token" is not a setting of backend.kind "tpm"`},
	{name: "uri with tpm", in: "[backend]\nkind = \"tpm\"\n\nuri = \"pkcs11:token=k\"\n", wantErr: `test.toml:4: "backend.uri" is not a setting`},
	{name: "sessions with tpm", in: "[backend]\nkind = \"tpm\"\nsessions = 4\n", wantErr: `test.toml:3: "backend.sessions" is not a setting`},
	{name: "metadata_max_age with tpm", in: "[backend]\nkind = \"tpm\"\nmetadata_max_age = \"1s\"\n", wantErr: `test.toml:3: "backend.metadata_max_age" is not a setting`},
	{name: "two pkcs11 keys with tpm", in: "[backend]\nkind = \"tpm\"\nmodule = \"m\"\ntoken = \"k\"\n", wantErr: `test.toml:3: "backend.module" is not a setting of backend.kind "tpm" (it takes device, state_dir, parent_handle, pin_file, rollback_counter)
test.toml:4: "backend.token"`},
	{name: "pkcs11 key in an inline tpm table", in: "backend = { kind = \"tpm\", module = \"m\" }\n", wantErr: `test.toml:1: "backend.module" is not a setting`},
	{name: "pkcs11 key as a dotted key", in: "backend.kind = \"tpm\"\nbackend.module = \"m\"\n", wantErr: `test.toml:2: "backend.module" is not a setting`},
	{name: "device with pkcs11", in: "[backend]\nkind = \"pkcs11\"\ntoken = \"k\"\ndevice = \"/dev/tpmrm0\"\n", wantErr: `test.toml:4: "backend.device" is not a setting of backend.kind "pkcs11" (it takes module, token, uri, pin_file, sessions, metadata_max_age)`},
	{name: "state_dir with the default kind", in: "[backend]\ntoken = \"k\"\nstate_dir = \"/x\"\n", wantErr: `test.toml:3: "backend.state_dir" is not a setting of backend.kind "pkcs11"`},
	{name: "parent_handle with pkcs11", in: "[backend]\ntoken = \"k\"\nparent_handle = 0x81000001\n", wantErr: `test.toml:3: "backend.parent_handle" is not a setting`},
	simConfigTest(),
}

// simConfigTest: "sim" is accepted only where the build has the simulator.
func simConfigTest() struct {
	name    string
	in      string
	check   func(Config) bool
	wantErr string
} {
	tt := struct {
		name    string
		in      string
		check   func(Config) bool
		wantErr string
	}{name: "tpm simulator", in: "[backend]\nkind = \"tpm\"\ndevice = \"sim:42\"\n"}
	if tpm.HasSimulator() {
		tt.check = func(c Config) bool { return c.Backend.Device == "sim:42" }
	} else {
		tt.wantErr = "this build has no TPM simulator"
	}
	return tt
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte("[backend]\ntoken = \"k\"\n[[rule]]\nname = \"x\"\nuids = [1]\nkeys = [\"a/*\"]\noperations = [\"wrap\"]\n"))
	f.Add([]byte("socket = 1"))
	f.Add([]byte("[backend]\nkind = \"tpm\"\ndevice = \"swtpm:127.0.0.1:2321\"\nparent_handle = 0x81000001\nmodule = \"m\"\n"))
	f.Add([]byte(breakglassFile))
	f.Fuzz(func(t *testing.T, b []byte) {
		if cfg, err := ParseConfig("fuzz.toml", b); err == nil { // never panics
			CompilePolicy(cfg, nil) // nor does compiling its rules and [[breakglass]] tables
		}
	})
}

// TestParseConfigEveryProblem: one run reports every problem of a file, one
// per line, each with its line and dotted key; a value the decoder refuses
// (an integer for a duration) does not hide the others.
func TestParseConfigEveryProblem(t *testing.T) {
	in := `socket = 5
log_level = "loud"
audit_checkpoint_key = "audit/ckpt"
[backend]
token = "k"
uri = "pkcs11:token=k?pin-value=12345678"
[limits]
idle_timeout = 5
max_batch = 5000
handshake_timeout = "0s"
sokcet = 1
[[rule]]
uids = [0]
keys = ["**"]
operations = ["wrap"]
[[rule]]
name = "forger"
uids = [0]
keys = [
  "audit/ckpt",
]
operations = ["sign"]
`
	_, err := ParseConfig("test.toml", []byte(in))
	if err == nil || !errors.Is(err, ErrConfig) {
		t.Fatalf("err = %v, want ErrConfig", err)
	}
	want := []string{
		`test.toml:1: socket: a TOML integer where a string is wanted`,
		`test.toml:8: limits.idle_timeout: "5" is not a duration: write a string with a unit, such as "30s" or "250ms"`,
		`test.toml:11: unknown key "limits.sokcet"`,
		`test.toml:2: log_level = "loud": want debug, info, warn or error`,
		`test.toml:6: backend.uri: set exactly one of token and uri`,
		`test.toml:6: backend.uri: carries pin-value: PINs come from a 0600 file (backend.pin_file) or a systemd credential, never from config text`,
		`test.toml:9: limits.max_batch = 5000: want 1..1000`,
		`test.toml:10: limits.handshake_timeout = 0s: must be positive`,
		`test.toml:19: rule[2].keys: grants sign on "audit/ckpt", which is audit_checkpoint_key: keywardd reserves it, no caller may sign with it`,
	}
	if got := strings.Split(err.Error(), "\n"); !slices.Equal(got, want) {
		t.Fatalf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if strings.Contains(err.Error(), "12345678") {
		t.Fatal("the PIN is in the error")
	}
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.Line != 1 || ce.Key != "socket" {
		t.Fatalf("first ConfigError = %+v", ce)
	}
}

func TestParseConfigDefaultAtFault(t *testing.T) {
	_, err := ParseConfig("test.toml", []byte("log_level = \"info\"\n"))
	if want := "test.toml: backend.token (default): set exactly one of token and uri"; err == nil || err.Error() != want {
		t.Fatalf("err = %v, want %q", err, want)
	}
	_, err = ParseConfig("test.toml", []byte("[backend]\ntoken = \"k\"\n[[rule]\n"))
	if err == nil || !strings.HasPrefix(err.Error(), "test.toml:3: syntax: ") {
		t.Fatalf("syntax error = %v, want its line", err)
	}
}

// TestParseConfigURI: backend.uri is refused at check time exactly as the
// pkcs11 backend refuses it when it opens.
func TestParseConfigURI(t *testing.T) {
	for _, tt := range []struct{ uri, want string }{
		{"pkcs11:token=k?pin-value=1234", "carries pin-value"},
		{"pkcs:token=k&pin-value=1234", "carries pin-value"},
		{"pkcs11:token=k;color=blue", `uri attribute "color" is not supported`},
		{"pkcs11:token=k?pin-source=/etc/pin", ""},
	} {
		_, err := ParseConfig("test.toml", []byte(fmt.Sprintf("[backend]\nuri = %q\n", tt.uri)))
		_, herr := hsmParse(tt.uri)
		switch {
		case tt.want == "" && (err != nil || herr != nil):
			t.Errorf("%s: %v / %v, want both fine", tt.uri, err, herr)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), "test.toml:2: backend.uri: "+tt.want) || herr == nil):
			t.Errorf("%s: %v / %v, want both refusing, with %q", tt.uri, err, herr, tt.want)
		}
		if err != nil && strings.Contains(err.Error(), "1234") {
			t.Errorf("%s: the PIN is in %v", tt.uri, err)
		}
	}
}

// TestValidateOrder: Validate reports its problems in one fixed order (the
// order of the checks, never a map's), so that --check-config prints the
// same lines on every run and a diff of two runs shows only what changed.
func TestValidateOrder(t *testing.T) {
	c := Defaults()
	c.Socket, c.AuditLog, c.AuditMaxFileSize, c.AuditSync, c.LogLevel = "", "", 1, "sometimes", "loud"
	c.AuditCheckpointEvery, c.AuditRefusalMaxRecords = 0, 0
	c.MetricsSocket, c.MetricsListen = "/run/m.sock", "10.0.0.1:9"
	c.Backend = Backend{Kind: "pkcs11", Sessions: -1, MetadataMaxAge: Duration{2 * time.Hour}}
	c.Limits = Limits{}
	c.AuditSyncInterval, c.AuditCheckpointInterval, c.AuditRefusalInterval = Duration{}, Duration{}, Duration{}
	want := []string{"socket", "audit_log", "audit_max_file_size", "audit_sync", "audit_checkpoint_every",
		"audit_refusal_max_records", "metrics_listen", "metrics_listen", "log_level",
		"backend.module", "backend.token", "backend.sessions", "backend.metadata_max_age",
		"limits.max_plaintext", "limits.max_message", "limits.max_batch", "limits.batch_parallelism", "limits.max_connections",
		"limits.max_connections_per_uid", "limits.max_streams_per_connection", "limits.max_concurrent_per_uid",
		"limits.max_denied_per_minute", "limits.max_failed_verify_mac_per_minute",
		"limits.handshake_timeout", "limits.receive_timeout", "limits.idle_timeout", "limits.shutdown_grace",
		"audit_sync_interval", "audit_checkpoint_interval", "audit_refusal_interval"}
	first := c.Validate()
	if first == nil || !errors.Is(first, ErrConfig) {
		t.Fatalf("Validate = %v, want ErrConfig", first)
	}
	var got []string
	for _, line := range strings.Split(first.Error(), "\n") {
		got = append(got, strings.FieldsFunc(line, func(r rune) bool { return r == ' ' || r == ':' })[0])
	}
	if !slices.Equal(got, want) {
		t.Fatalf("keys in order:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for range 50 {
		if err := c.Validate(); err.Error() != first.Error() {
			t.Fatalf("Validate changed its output:\n%v\nthen:\n%v", first, err)
		}
	}
}

// TestLoadConfigFile: the configuration is read from a regular file (a
// symlink to one is followed, as configuration managers install them); a
// FIFO is refused at once, not waited on (a reload would hang for ever),
// and so is a device or a file over 1 MiB, without reading it whole.
func TestLoadConfigFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "keyward.toml")
	if err := os.WriteFile(good, []byte("socket = \"/run/k.sock\"\n[backend]\ntoken = \"t\"\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.toml")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo.toml")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big.toml")
	if err := os.WriteFile(big, bytes.Repeat([]byte("# padding\n"), 110_000), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, path string
		ok         bool
	}{
		{"regular file", good, true},
		{"symlink to one", link, true},
		{"fifo", fifo, false},
		{"device", "/dev/zero", false},
		{"over 1 MiB", big, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadConfig(tt.path)
			if tt.ok != (err == nil) || !tt.ok && !errors.Is(err, ErrConfig) {
				t.Fatalf("LoadConfig(%s): %v, want ok=%v (else ErrConfig)", tt.path, err, tt.ok)
			}
		})
	}
}
