package config

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/keyward/keyward/audit"
	"github.com/keyward/keyward/internal/devspec"
	"github.com/keyward/keyward/internal/rfc7512"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/policy"
)

// DefaultConfigPath is where keywardd reads its configuration.
const DefaultConfigPath = "/etc/keyward/keyward.toml"

// Config is keywardd's configuration file. Every key is documented in
// the table in docs/configuration.md; defaults live in Defaults.
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
	// KMSSocket serves the Kubernetes KMS v2 API (k8s.io/kms/apis/v2) on
	// this Unix socket (mode 0660, socket_group), with KMSKey; "" (default):
	// off, unless systemd passes a socket named "kms". KMSKey names the
	// aes-256-gcm key that encrypts the apiserver's data keys.
	KMSSocket string `toml:"kms_socket"`
	KMSKey    string `toml:"kms_key"`
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
	// AuditPreallocate keeps free space (written zeros) after the audit
	// log's last record so that a batch costs an fdatasync (default true);
	// false for log shippers that follow the current file as plain text.
	AuditPreallocate bool `toml:"audit_preallocate"`
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
	// limit (rate, concurrency, connections, receive timeout), and the
	// refusals of a caller no rule names past its denied-request limit, are
	// written as one summary record per caller, result and interval, at
	// most AuditRefusalMaxRecords per interval plus one that folds in the
	// rest.
	AuditRefusalInterval   Duration      `toml:"audit_refusal_interval"`
	AuditRefusalMaxRecords int           `toml:"audit_refusal_max_records"`
	LogLevel               string        `toml:"log_level"`
	Backend                Backend       `toml:"backend"`
	Limits                 Limits        `toml:"limits"`
	Rules                  []policy.Rule `toml:"rule"`
	// Breakglass are the break-glass policies (breakglass.go).
	Breakglass []Breakglass `toml:"breakglass"`
	// Digest is the hex SHA-256 of the file LoadConfig read ("" when the
	// configuration did not come from a file): what a reload's audit
	// record names.
	Digest string `toml:"-"`
	// BreakglassState is the file (absolute path) where keywardd keeps the
	// newest generation of every break-glass grant it has seen, so that an
	// older copy of the grant records is refused across restarts too.
	BreakglassState string `toml:"breakglass_state"`

	// CredentialsSocket serves systemd's LoadCredential= requests (mode
	// 0600); "" binds none, though a socket-activated fd named
	// "credentials" is served either way. CredentialsDir is the store.
	CredentialsSocket string `toml:"credentials_socket"`
	CredentialsDir    string `toml:"credentials_dir"`
	// RotationCheckInterval is how often keywardd looks for keys due for
	// their scheduled rotation (each wait 80..100% of it, at random).
	RotationCheckInterval Duration `toml:"rotation_check_interval"`
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
	MaxPlaintext int `toml:"max_plaintext"`
	MaxMessage   int `toml:"max_message"`
	MaxBatch     int `toml:"max_batch"`
	// BatchParallelism: a batch call's items that run at once.
	BatchParallelism int `toml:"batch_parallelism"`
	MaxConnections   int `toml:"max_connections"`
	// MaxConnectionsPerUID: connections one uid may hold (at most
	// MaxConnections); the last 1/16th of MaxConnections (at most 16) are
	// kept for uid 0.
	MaxConnectionsPerUID int `toml:"max_connections_per_uid"`
	// MaxStreamsPerConnection: calls open at once on one connection.
	MaxStreamsPerConnection int `toml:"max_streams_per_connection"`
	// MaxConcurrentPerUID: calls open at once per uid, counted from the
	// moment a call's stream opens (before its message is read).
	MaxConcurrentPerUID int `toml:"max_concurrent_per_uid"`
	// MaxDeniedPerMinute: a caller (uid and systemd unit) denied more often
	// than this in one minute is refused everything (RATE_LIMITED) for the
	// rest of that minute.
	MaxDeniedPerMinute int `toml:"max_denied_per_minute"`
	// MaxFailedVerifyMacPerMinute: a caller (uid and unit) whose verify-mac fails more often
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
		return fmt.Errorf("%q is not a duration: write a string with a unit, such as \"30s\" or \"250ms\"", b)
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
		AuditPreallocate:        true,
		AuditCheckpointEvery:    1000,
		AuditCheckpointInterval: Duration{time.Minute},
		AuditRefusalInterval:    Duration{10 * time.Second},
		AuditRefusalMaxRecords:  100,
		RotationCheckInterval:   Duration{10 * time.Minute},
		LogLevel:                "info",
		CredentialsDir:          "/etc/keyward/credstore",
		BreakglassState:         "/var/lib/keyward/breakglass-seen.json",
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
			BatchParallelism:            64,
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

// LoadConfig reads path strictly: an unknown key, a wrong type or a bad
// value is an error naming its line (see ParseConfig). The file must be a
// regular file (a symlink to one is followed: configuration managers
// install them) of at most maxConfigFile bytes.
func LoadConfig(path string) (Config, error) {
	b, err := readConfigFile(path)
	if err != nil {
		return Config{}, err
	}
	cfg, err := ParseConfig(path, b)
	sum := sha256.Sum256(b)
	cfg.Digest = hex.EncodeToString(sum[:])
	return cfg, err
}

// ParseConfig decodes b (named name in errors) over Defaults and validates
// it. It reports every problem it finds, each a *ConfigError with the line
// and dotted key at fault, joined one per line; a value the decoder refuses
// is left out and the rest still checked. On an error the Config returned
// is what could be read, for further checks only (its rules, say): never
// run on it.
func ParseConfig(name string, b []byte) (Config, error) {
	doc, err := scanConfig(name, b)
	if err != nil {
		return Config{}, err
	}
	cfg, kept, refused, errs := decodeAll(name, b, doc)
	errs = append(errs, otherKindKeys(name, kept, cfg.Backend.Kind)...)
	errs = append(errs, located(name, doc, cfg.problems(), refused)...)
	return cfg, errors.Join(errs...)
}

// backendKeys are the keys of [backend], of either kind.
var backendKeys = func() map[string]bool {
	m := map[string]bool{}
	rt := reflect.TypeOf(Backend{})
	for i := range rt.NumField() {
		m[rt.Field(i).Tag.Get("toml")] = true
	}
	return m
}()

// otherKindKeys decodes b again, strictly, with a [backend] that knows only
// kind's keys, so that a key of the other kind (module with kind "tpm",
// device with kind "pkcs11") is an error naming its line rather than a
// setting silently ignored. An unknown kind is left to Validate.
func otherKindKeys(name string, b []byte, kind string) []error {
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
	var strict *toml.StrictMissingError
	if err := decodeStrict(b, target); !errors.As(err, &strict) {
		return nil // the first decode succeeded: only strictness can differ
	}
	var takes []string
	rt := reflect.TypeOf(only)
	for i := range rt.NumField() {
		if k := rt.Field(i).Tag.Get("toml"); k != "kind" {
			takes = append(takes, k)
		}
	}
	var errs []error
	for _, e := range strict.Errors {
		row, _ := e.Position()
		key := e.Key()
		if len(key) == 0 || key[0] != "backend" { // inside an inline table: the path is relative
			key = append([]string{"backend"}, key...)
		}
		if len(key) != 2 || !backendKeys[key[1]] {
			continue // unknown to every kind: decodeAll reported it
		}
		errs = append(errs, &ConfigError{File: name, Line: row, Msg: fmt.Sprintf("%q is not a setting of backend.kind %q (it takes %s)",
			strings.Join(key, "."), kind, strings.Join(takes, ", "))})
	}
	return errs
}

// Validate checks values (not the rules' names, which Compile resolves):
// every problem, each naming its dotted key.
func (c *Config) Validate() error {
	var errs []error
	for _, p := range c.problems() {
		errs = append(errs, fmt.Errorf("%s%s%s: %w", p.key, keySep(p.msg), p.msg, ErrConfig))
	}
	return errors.Join(errs...)
}

// durationCheck is a duration key and its bounds (hi 0: no upper bound).
type durationCheck struct {
	key    string
	v      time.Duration
	lo, hi time.Duration
}

func (d durationCheck) problem() (problem, bool) {
	switch {
	case d.hi == 0 && d.v < d.lo:
		return problem{d.key, fmt.Sprintf("= %s: at least %s", fmtDuration(d.v), fmtDuration(d.lo))}, true
	case d.hi != 0 && (d.v < d.lo || d.v > d.hi):
		return problem{d.key, fmt.Sprintf("= %s: want %s..%s", fmtDuration(d.v), fmtDuration(d.lo), fmtDuration(d.hi))}, true
	}
	return problem{}, false
}

// fmtDuration writes d as a config would: "1h", not "1h0m0s".
func fmtDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// problems is Validate's work: each problem with the key it is about.
func (c *Config) problems() []problem {
	var ps []problem
	add := func(key, format string, args ...any) { ps = append(ps, problem{key, fmt.Sprintf(format, args...)}) }
	if c.Socket == "" {
		add("socket", "empty")
	}
	if c.AuditLog == "" {
		add("audit_log", `empty (set a path, or "off" to run without an audit log)`)
	}
	if !filepath.IsAbs(c.BreakglassState) {
		add("breakglass_state", "= %q: want an absolute path", c.BreakglassState)
	}
	if c.AuditMaxFileSize < 4096 {
		add("audit_max_file_size", "= %d: at least 4096 bytes", c.AuditMaxFileSize)
	}
	if _, err := audit.ParseSyncMode(c.AuditSync); err != nil {
		add("audit_sync", `= %q: want "fsync" or "write"`, c.AuditSync)
	}
	if c.AuditCheckpointKey != "" {
		if err := keys.ValidateName(c.AuditCheckpointKey); err != nil {
			add("audit_checkpoint_key", "%v", err)
		}
		if c.AuditLog == "off" {
			add("audit_checkpoint_key", `set, but audit_log is "off"`)
		}
	}
	if c.AuditCheckpointEvery < 1 || c.AuditCheckpointEvery > 1<<24 {
		add("audit_checkpoint_every", "= %d: want 1..%d", c.AuditCheckpointEvery, 1<<24)
	}
	if n := c.AuditRefusalMaxRecords; n < 1 || n > 100000 {
		add("audit_refusal_max_records", "= %d: want 1..100000", n)
	}
	ps = append(ps, c.kmsProblems()...)
	if c.CredentialsSocket != "" && !filepath.IsAbs(c.CredentialsSocket) {
		add("credentials_socket", "= %q: want an absolute path", c.CredentialsSocket)
	}
	if !filepath.IsAbs(c.CredentialsDir) {
		add("credentials_dir", "= %q: want an absolute path", c.CredentialsDir)
	}
	if c.MetricsSocket != "" && c.MetricsListen != "" {
		add("metrics_listen", "set at most one of metrics_socket and metrics_listen")
	}
	if c.MetricsListen != "" {
		host, _, err := net.SplitHostPort(c.MetricsListen)
		ip := net.ParseIP(host)
		if err != nil || ip == nil || !ip.IsLoopback() {
			add("metrics_listen", "= %q: want a loopback address and port, e.g. 127.0.0.1:9464", c.MetricsListen)
		}
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		add("log_level", "= %q: want debug, info, warn or error", c.LogLevel)
	}
	ps = append(ps, c.Backend.problems()...)
	ps = append(ps, c.Limits.problems()...)
	for _, d := range []durationCheck{
		{"audit_sync_interval", c.AuditSyncInterval.Duration, 10 * time.Millisecond, time.Hour},
		{"audit_checkpoint_interval", c.AuditCheckpointInterval.Duration, time.Second, 0},
		{"audit_refusal_interval", c.AuditRefusalInterval.Duration, time.Second, time.Hour},
		{"rotation_check_interval", c.RotationCheckInterval.Duration, time.Second, 24 * time.Hour},
	} {
		if p, bad := d.problem(); bad {
			ps = append(ps, p)
		}
	}
	res := policy.Reserved{CheckpointKey: c.AuditCheckpointKey}
	for i := range c.Rules {
		for _, err := range policy.CheckReserved(c.Rules[i:i+1], res) {
			_, msg, _ := strings.Cut(err.Error(), ": ") // the rule is named by the key
			add(fmt.Sprintf("rule[%d].keys", i+1), "%s", strings.TrimSuffix(msg, ": "+policy.ErrInvalidPolicy.Error()))
		}
	}
	return ps
}

func (b Backend) problems() []problem {
	var ps []problem
	add := func(key, format string, args ...any) { ps = append(ps, problem{key, fmt.Sprintf(format, args...)}) }
	switch b.Kind {
	case "pkcs11":
		if b.Module == "" {
			add("backend.module", "empty")
		}
		switch {
		case b.Token == "" && b.URI == "":
			add("backend.token", "set exactly one of token and uri")
		case b.Token != "" && b.URI != "":
			add("backend.uri", "set exactly one of token and uri")
		}
		if b.URI != "" {
			if p, bad := uriProblem(b.URI); bad {
				ps = append(ps, p)
			}
		}
		if b.Sessions < 0 || b.Sessions > 1024 {
			add("backend.sessions", "= %d: want 0..1024", b.Sessions)
		}
		if b.MetadataMaxAge.Duration > time.Hour {
			add("backend.metadata_max_age", "= %s: at most 1h", fmtDuration(b.MetadataMaxAge.Duration))
		}
	case "tpm":
		ps = append(ps, checkTPM(b)...)
	default:
		add("backend.kind", "= %q: want pkcs11 or tpm", b.Kind)
	}
	return ps
}

// uriProblem checks backend.uri as the pkcs11 backend will when it opens
// (hsm.ParseURI, on rfc7512), so that --check-config refuses what the daemon would. A
// URI carrying a PIN is refused without being echoed.
func uriProblem(uri string) (problem, bool) {
	if strings.Contains(uri, "pin-value") {
		return problem{"backend.uri", "carries pin-value: PINs come from a 0600 file (backend.pin_file) or a systemd credential, never from config text"}, true
	}
	if _, err := rfc7512.Parse(uri); err != nil {
		return problem{"backend.uri", strings.TrimSuffix(err.Error(), ": "+rfc7512.ErrInvalid.Error())}, true
	}
	return problem{}, false
}

// limitRange is an integer limit and its bounds.
type limitRange struct {
	key    string
	v      int
	lo, hi int
}

// durationLimit is a limit that must be positive.
type durationLimit struct {
	key string
	v   time.Duration
}

func (l Limits) problems() []problem {
	var ps []problem
	for _, ch := range []limitRange{
		{"limits.max_plaintext", l.MaxPlaintext, 1, keys.MaxPlaintext},
		{"limits.max_message", l.MaxMessage, 1024, 64 << 20},
		{"limits.max_batch", l.MaxBatch, 1, 1000},
		{"limits.batch_parallelism", l.BatchParallelism, 1, 1000},
		{"limits.max_connections", l.MaxConnections, 1, 1 << 16},
		{"limits.max_connections_per_uid", l.MaxConnectionsPerUID, 1, 1 << 16},
		{"limits.max_streams_per_connection", l.MaxStreamsPerConnection, 1, 1024},
		{"limits.max_concurrent_per_uid", l.MaxConcurrentPerUID, 1, 1 << 16},
		{"limits.max_denied_per_minute", l.MaxDeniedPerMinute, 1, 1 << 20},
		{"limits.max_failed_verify_mac_per_minute", l.MaxFailedVerifyMacPerMinute, 1, 1 << 20},
	} {
		if ch.v < ch.lo || ch.v > ch.hi {
			ps = append(ps, problem{ch.key, fmt.Sprintf("= %d: want %d..%d", ch.v, ch.lo, ch.hi)})
		}
	}
	for _, d := range []durationLimit{
		{"limits.handshake_timeout", l.HandshakeTimeout.Duration},
		{"limits.receive_timeout", l.ReceiveTimeout.Duration},
		{"limits.idle_timeout", l.IdleTimeout.Duration},
		{"limits.shutdown_grace", l.ShutdownGrace.Duration},
	} {
		if d.v <= 0 {
			ps = append(ps, problem{d.key, fmt.Sprintf("= %s: must be positive", fmtDuration(d.v))})
		}
	}
	return ps
}

// checkTPM checks the tpm backend's values. The device's form is checked
// here so that --check-config catches it; tpm.Dial checks it again
// (both with devspec: config stays free of cgo and the backends).
func checkTPM(b Backend) []problem {
	var ps []problem
	if b.Device == "" {
		ps = append(ps, problem{"backend.device", `= "": want a path under /dev/ (/dev/tpmrm0), "swtpm:HOST:PORT" or "swtpm+unix:/PATH"`})
	} else if err := devspec.Check(b.Device); err != nil {
		ps = append(ps, problem{"backend.device", fmt.Sprintf("= %q: %v", b.Device, err)})
	}
	if !filepath.IsAbs(b.StateDir) {
		ps = append(ps, problem{"backend.state_dir", fmt.Sprintf("= %q: want an absolute path", b.StateDir)})
	}
	if h := uint32(b.ParentHandle); h != 0 && h>>24 != 0x81 {
		ps = append(ps, problem{"backend.parent_handle", fmt.Sprintf("= 0x%08x: want a persistent handle, 0x81000000..0x81ffffff", h)})
	}
	return ps
}
