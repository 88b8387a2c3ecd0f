package daemon

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/keyward/keyward/audit"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/policy"
	"github.com/keyward/keyward/tpm"
)

// DefaultConfigPath is where keywardd reads its configuration.
const DefaultConfigPath = "/etc/keyward/keyward.toml"

// Config is keywardd's configuration file. Every key is documented in the
// README's configuration table; defaults live in Defaults.
type Config struct {
	// Socket is the path keywardd binds when not socket-activated.
	Socket string `toml:"socket"`
	// SocketGroup may connect (mode 0660). Empty keeps the daemon's group.
	SocketGroup string `toml:"socket_group"`
	// SystemdSocketName is the FileDescriptorName= of the activated socket.
	SystemdSocketName string `toml:"systemd_socket_name"`
	// MetricsSocket serves Prometheus metrics at /metrics on this Unix socket
	// (mode 0660); MetricsListen on a loopback TCP address instead. Off when
	// both are empty.
	MetricsSocket string `toml:"metrics_socket"`
	MetricsListen string `toml:"metrics_listen"`
	// AuditLog is the hash-chained audit log: one record per operation,
	// durable before the reply. "off" disables it (not for production: the
	// daemon then leaves no evidence).
	AuditLog string `toml:"audit_log"`
	// AuditMaxFileSize rotates the audit log past this many bytes.
	AuditMaxFileSize int64 `toml:"audit_max_file_size"`
	// AuditSync is when a record is on disk: "fsync" (default) before the
	// reply; "write" in the kernel before the reply (it outlives keywardd,
	// not a power failure) and fsynced within AuditSyncInterval.
	AuditSync         string   `toml:"audit_sync"`
	AuditSyncInterval Duration `toml:"audit_sync_interval"`
	// AuditCheckpointKey names a signing key (ecdsa-p256, rsa-3072-pss or
	// ed25519) with which keywardd signs checkpoint records into the audit
	// log; "" (default) writes none. The key is reserved: no caller may
	// sign with it through the socket, whatever the policy says.
	AuditCheckpointKey string `toml:"audit_checkpoint_key"`
	// AuditCheckpointEvery and AuditCheckpointInterval: a checkpoint after
	// that many records, or after that long with records since the last.
	AuditCheckpointEvery    int      `toml:"audit_checkpoint_every"`
	AuditCheckpointInterval Duration `toml:"audit_checkpoint_interval"`
	// AuditRefusalInterval and AuditRefusalMaxRecords: calls refused by a
	// limit (rate, concurrency, connections, no rule naming the caller,
	// receive timeout) are written as one summary record per caller, result
	// and interval, at most AuditRefusalMaxRecords per interval plus one
	// that folds in the rest.
	AuditRefusalInterval   Duration      `toml:"audit_refusal_interval"`
	AuditRefusalMaxRecords int           `toml:"audit_refusal_max_records"`
	LogLevel               string        `toml:"log_level"`
	Backend                Backend       `toml:"backend"`
	Limits                 Limits        `toml:"limits"`
	Rules                  []policy.Rule `toml:"rule"`
}

// Backend selects the key device: kind "pkcs11" (module, token or uri,
// sessions, metadata_max_age) or "tpm" (device, state_dir, parent_handle).
// pin_file is the PKCS#11 user PIN or the TPM auth secret. A key of the
// other kind is an error naming its line (see otherKindKeys).
type Backend struct {
	Kind           string   `toml:"kind"`
	Module         string   `toml:"module"`
	Token          string   `toml:"token"`
	URI            string   `toml:"uri"`
	PINFile        string   `toml:"pin_file"`
	Sessions       int      `toml:"sessions"`
	MetadataMaxAge Duration `toml:"metadata_max_age"`

	Device       string `toml:"device"`
	StateDir     string `toml:"state_dir"`
	ParentHandle Handle `toml:"parent_handle"`
	// RollbackCounter (tpm; default true): the NV counter that detects an
	// older copy of the state directory. false only for TPMs where keyward
	// cannot define it.
	RollbackCounter *bool `toml:"rollback_counter"`
}

// Handle is a TPM handle. The config writes it as a TOML integer, in hex
// as TPM tools print it (parent_handle = 0x81000001); the quoted form
// "0x81000001" is accepted too.
type Handle uint32

// UnmarshalText takes the quoted form: 0x-prefixed hex or decimal.
func (h *Handle) UnmarshalText(b []byte) error {
	v, err := strconv.ParseUint(string(b), 0, 32)
	if err != nil {
		return fmt.Errorf("handle %q: want an integer such as 0x81000001", b)
	}
	*h = Handle(v)
	return nil
}

// pkcs11Keys and tpmKeys mirror Backend with only one kind's keys: a second
// strict decode through them reports a key of the other kind with its line.
type pkcs11Keys struct {
	Kind           string   `toml:"kind"`
	Module         string   `toml:"module"`
	Token          string   `toml:"token"`
	URI            string   `toml:"uri"`
	PINFile        string   `toml:"pin_file"`
	Sessions       int      `toml:"sessions"`
	MetadataMaxAge Duration `toml:"metadata_max_age"`
}

type tpmKeys struct {
	Kind            string `toml:"kind"`
	Device          string `toml:"device"`
	StateDir        string `toml:"state_dir"`
	ParentHandle    Handle `toml:"parent_handle"`
	PINFile         string `toml:"pin_file"`
	RollbackCounter *bool  `toml:"rollback_counter"`
}

// Limits bound what one caller can make the daemon do.
type Limits struct {
	MaxPlaintext   int `toml:"max_plaintext"`
	MaxMessage     int `toml:"max_message"`
	MaxBatch       int `toml:"max_batch"`
	MaxConnections int `toml:"max_connections"`
	// MaxConnectionsPerUID: connections one uid may hold (at most
	// MaxConnections); the last 1/16th of MaxConnections (at most 16) are
	// kept for uid 0.
	MaxConnectionsPerUID int `toml:"max_connections_per_uid"`
	// MaxStreamsPerConnection: calls open at once on one connection.
	MaxStreamsPerConnection int `toml:"max_streams_per_connection"`
	// MaxConcurrentPerUID: calls open at once per uid, counted from the
	// moment a call's stream opens (before its message is read).
	MaxConcurrentPerUID int `toml:"max_concurrent_per_uid"`
	// MaxDeniedPerMinute: a uid denied more often than this in one minute is
	// refused everything (RATE_LIMITED) for the rest of that minute.
	MaxDeniedPerMinute int `toml:"max_denied_per_minute"`
	// MaxFailedVerifyMacPerMinute: a uid whose verify-mac fails more often
	// than this in one minute (API-credential guessing) is refused
	// verify-mac for the rest of that minute.
	MaxFailedVerifyMacPerMinute int      `toml:"max_failed_verify_mac_per_minute"`
	HandshakeTimeout            Duration `toml:"handshake_timeout"`
	// ReceiveTimeout: a call's whole request must arrive within this long
	// of its stream opening, or the call is cut.
	ReceiveTimeout Duration `toml:"receive_timeout"`
	IdleTimeout    Duration `toml:"idle_timeout"`
	ShutdownGrace  Duration `toml:"shutdown_grace"`
}

// Duration is a time.Duration written as "1s", "250ms" in the config.
type Duration struct{ time.Duration }

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("duration %q: %w", b, err)
	}
	d.Duration = v
	return nil
}

func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// Defaults returns the configuration an empty file means.
func Defaults() Config {
	return Config{
		Socket:                  "/run/keyward/keyward.sock",
		SystemdSocketName:       "keyward",
		AuditLog:                "/var/log/keyward/audit.log",
		AuditMaxFileSize:        64 << 20,
		AuditSync:               "fsync",
		AuditSyncInterval:       Duration{time.Second},
		AuditCheckpointEvery:    1000,
		AuditCheckpointInterval: Duration{time.Minute},
		AuditRefusalInterval:    Duration{10 * time.Second},
		AuditRefusalMaxRecords:  100,
		LogLevel:                "info",
		Backend: Backend{
			Kind:     "pkcs11",
			Module:   "/usr/lib/softhsm/libsofthsm2.so",
			Token:    "",
			Device:   "/dev/tpmrm0",
			StateDir: "/var/lib/keyward/tpm",
		},
		Limits: Limits{
			MaxPlaintext:                keys.MaxPlaintext,
			MaxMessage:                  4 << 20,
			MaxBatch:                    1000,
			MaxConnections:              1024,
			MaxConnectionsPerUID:        64,
			MaxStreamsPerConnection:     64,
			MaxConcurrentPerUID:         64,
			MaxDeniedPerMinute:          60,
			MaxFailedVerifyMacPerMinute: 60,
			HandshakeTimeout:            Duration{5 * time.Second},
			ReceiveTimeout:              Duration{10 * time.Second},
			IdleTimeout:                 Duration{5 * time.Minute},
			ShutdownGrace:               Duration{10 * time.Second},
		},
	}
}

// ErrConfig wraps every configuration error.
var ErrConfig = errors.New("invalid configuration")

// LoadConfig reads path strictly: an unknown key, a wrong type or a bad
// value is an error naming its line.
func LoadConfig(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	return ParseConfig(path, b)
}

// ParseConfig decodes b (named name in errors) over Defaults and validates it.
func ParseConfig(name string, b []byte) (Config, error) {
	cfg := Defaults()
	dec := toml.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		var strict *toml.StrictMissingError
		var derr *toml.DecodeError
		switch {
		case errors.As(err, &strict):
			var msgs []string
			for _, e := range strict.Errors {
				row, _ := e.Position()
				msgs = append(msgs, fmt.Sprintf("%s:%d: unknown key %q", name, row, strings.Join(e.Key(), ".")))
			}
			return Config{}, fmt.Errorf("%s: %w", strings.Join(msgs, "; "), ErrConfig)
		case errors.As(err, &derr):
			row, _ := derr.Position()
			return Config{}, fmt.Errorf("%s:%d: %s: %w", name, row, derr.Error(), ErrConfig)
		}
		return Config{}, fmt.Errorf("%s: %v: %w", name, err, ErrConfig)
	}
	if err := otherKindKeys(name, b, cfg.Backend.Kind); err != nil {
		return Config{}, err
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, fmt.Errorf("%s: %w", name, err)
	}
	return cfg, nil
}

// otherKindKeys decodes b again, strictly, with a [backend] that knows only
// kind's keys, so that a key of the other kind (module with kind "tpm",
// device with kind "pkcs11") is an error naming its line rather than a
// setting silently ignored. An unknown kind is left to Validate.
func otherKindKeys(name string, b []byte, kind string) error {
	var target, only any
	switch kind {
	case "pkcs11":
		t := &struct {
			Config
			Backend pkcs11Keys `toml:"backend"`
		}{}
		target, only = t, t.Backend
	case "tpm":
		t := &struct {
			Config
			Backend tpmKeys `toml:"backend"`
		}{}
		target, only = t, t.Backend
	default:
		return nil
	}
	dec := toml.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var strict *toml.StrictMissingError
	if err := dec.Decode(target); !errors.As(err, &strict) {
		return nil // the first decode succeeded: only strictness can differ
	}
	var takes []string
	rt := reflect.TypeOf(only)
	for i := range rt.NumField() {
		if k := rt.Field(i).Tag.Get("toml"); k != "kind" {
			takes = append(takes, k)
		}
	}
	var msgs []string
	for _, e := range strict.Errors {
		row, _ := e.Position()
		key := e.Key()
		if len(key) == 0 || key[0] != "backend" { // inside an inline table: the path is relative
			key = append([]string{"backend"}, key...)
		}
		msgs = append(msgs, fmt.Sprintf("%s:%d: %q is not a setting of backend.kind %q (it takes %s)",
			name, row, strings.Join(key, "."), kind, strings.Join(takes, ", ")))
	}
	return fmt.Errorf("%s: %w", strings.Join(msgs, "; "), ErrConfig)
}

// Validate checks values (not the rules' names, which Compile resolves).
func (c *Config) Validate() error {
	var errs []string
	if c.Socket == "" {
		errs = append(errs, "socket is empty")
	}
	if c.AuditLog == "" {
		errs = append(errs, `audit_log is empty (set a path, or "off" to run without an audit log)`)
	}
	if c.AuditMaxFileSize < 4096 {
		errs = append(errs, "audit_max_file_size: at least 4096 bytes")
	}
	if _, err := audit.ParseSyncMode(c.AuditSync); err != nil {
		errs = append(errs, fmt.Sprintf(`audit_sync = %q: want "fsync" or "write"`, c.AuditSync))
	}
	if d := c.AuditSyncInterval.Duration; d < 10*time.Millisecond || d > time.Hour {
		errs = append(errs, fmt.Sprintf("audit_sync_interval = %v: want 10ms..1h", d))
	}
	if c.AuditCheckpointKey != "" {
		if err := keys.ValidateName(c.AuditCheckpointKey); err != nil {
			errs = append(errs, fmt.Sprintf("audit_checkpoint_key: %v", err))
		}
		if c.AuditLog == "off" {
			errs = append(errs, `audit_checkpoint_key is set but audit_log is "off"`)
		}
	}
	if c.AuditCheckpointEvery < 1 || c.AuditCheckpointEvery > 1<<24 {
		errs = append(errs, fmt.Sprintf("audit_checkpoint_every = %d: want 1..%d", c.AuditCheckpointEvery, 1<<24))
	}
	if c.AuditCheckpointInterval.Duration < time.Second {
		errs = append(errs, "audit_checkpoint_interval: at least 1s")
	}
	if d := c.AuditRefusalInterval.Duration; d < time.Second || d > time.Hour {
		errs = append(errs, fmt.Sprintf("audit_refusal_interval = %v: want 1s..1h", d))
	}
	if n := c.AuditRefusalMaxRecords; n < 1 || n > 100000 {
		errs = append(errs, fmt.Sprintf("audit_refusal_max_records = %d: want 1..100000", n))
	}
	if c.MetricsSocket != "" && c.MetricsListen != "" {
		errs = append(errs, "set at most one of metrics_socket and metrics_listen")
	}
	if c.MetricsListen != "" {
		host, _, err := net.SplitHostPort(c.MetricsListen)
		ip := net.ParseIP(host)
		if err != nil || ip == nil || !ip.IsLoopback() {
			errs = append(errs, fmt.Sprintf("metrics_listen %q: want a loopback address and port, e.g. 127.0.0.1:9464", c.MetricsListen))
		}
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Sprintf("log_level %q: want debug, info, warn or error", c.LogLevel))
	}
	b := c.Backend
	switch b.Kind {
	case "pkcs11":
		if b.Module == "" {
			errs = append(errs, "backend.module is empty")
		}
		if (b.Token == "") == (b.URI == "") {
			errs = append(errs, "backend: set exactly one of token and uri")
		}
		if b.Sessions < 0 || b.Sessions > 1024 {
			errs = append(errs, "backend.sessions: want 0..1024")
		}
		if b.MetadataMaxAge.Duration > time.Hour {
			errs = append(errs, "backend.metadata_max_age: at most 1h")
		}
	case "tpm":
		errs = append(errs, checkTPM(b)...)
	default:
		errs = append(errs, fmt.Sprintf("backend.kind %q: want pkcs11 or tpm", b.Kind))
	}
	l := c.Limits
	checks := []struct {
		name      string
		v, lo, hi int
	}{
		{"limits.max_plaintext", l.MaxPlaintext, 1, keys.MaxPlaintext},
		{"limits.max_message", l.MaxMessage, 1024, 64 << 20},
		{"limits.max_batch", l.MaxBatch, 1, 1000},
		{"limits.max_connections", l.MaxConnections, 1, 1 << 16},
		{"limits.max_connections_per_uid", l.MaxConnectionsPerUID, 1, 1 << 16},
		{"limits.max_streams_per_connection", l.MaxStreamsPerConnection, 1, 1024},
		{"limits.max_concurrent_per_uid", l.MaxConcurrentPerUID, 1, 1 << 16},
		{"limits.max_denied_per_minute", l.MaxDeniedPerMinute, 1, 1 << 20},
		{"limits.max_failed_verify_mac_per_minute", l.MaxFailedVerifyMacPerMinute, 1, 1 << 20},
	}
	for _, ch := range checks {
		if ch.v < ch.lo || ch.v > ch.hi {
			errs = append(errs, fmt.Sprintf("%s = %d: want %d..%d", ch.name, ch.v, ch.lo, ch.hi))
		}
	}
	for name, d := range map[string]time.Duration{"limits.handshake_timeout": l.HandshakeTimeout.Duration, "limits.receive_timeout": l.ReceiveTimeout.Duration, "limits.idle_timeout": l.IdleTimeout.Duration, "limits.shutdown_grace": l.ShutdownGrace.Duration} {
		if d <= 0 {
			errs = append(errs, name+" must be positive")
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s: %w", strings.Join(errs, "; "), ErrConfig)
	}
	return nil
}

// checkTPM checks the tpm backend's values. The device's form is checked
// here so that --check-config catches it; tpm.Dial checks it again.
func checkTPM(b Backend) []string {
	var errs []string
	if b.Device == "" {
		errs = append(errs, `backend.device "": want a path under /dev/ (/dev/tpmrm0), "swtpm:HOST:PORT" or "swtpm+unix:/PATH"`)
	} else if err := tpm.CheckDevice(b.Device); err != nil {
		errs = append(errs, fmt.Sprintf("backend.device %q: %v", b.Device, err))
	}
	if !filepath.IsAbs(b.StateDir) {
		errs = append(errs, fmt.Sprintf("backend.state_dir %q: want an absolute path", b.StateDir))
	}
	if h := uint32(b.ParentHandle); h != 0 && h>>24 != 0x81 {
		errs = append(errs, fmt.Sprintf("backend.parent_handle 0x%08x: want a persistent handle, 0x81000000..0x81ffffff", h))
	}
	return errs
}
