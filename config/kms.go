package config

import (
	"fmt"

	"github.com/keyward/keyward/keys"
)

// KMSSystemdSocketName is the FileDescriptorName= of the socket unit's
// Kubernetes KMS socket: when systemd passes one by that name, keywardd
// serves the KMS API on it instead of binding kms_socket.
const KMSSystemdSocketName = "kms"

// kmsProblems checks kms_socket and kms_key: a socket needs a key, the key
// a valid name that is not the audit checkpoint key, and the socket a path
// of its own.
func (c *Config) kmsProblems() []problem {
	var ps []problem
	add := func(key, format string, args ...any) { ps = append(ps, problem{key, fmt.Sprintf(format, args...)}) }
	if c.KMSSocket != "" && c.KMSKey == "" {
		add("kms_key", "empty, but kms_socket is set: name the aes-256-gcm key that serves the Kubernetes KMS API")
	}
	if c.KMSKey != "" {
		if err := keys.ValidateName(c.KMSKey); err != nil {
			add("kms_key", "%v", err)
		}
		if c.KMSKey == c.AuditCheckpointKey {
			add("kms_key", "is audit_checkpoint_key: use a key of its own")
		}
	}
	if c.KMSSocket != "" && (c.KMSSocket == c.Socket || c.KMSSocket == c.MetricsSocket) {
		add("kms_socket", "= %q: the same path as socket or metrics_socket", c.KMSSocket)
	}
	return ps
}
