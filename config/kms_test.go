package config

import (
	"strings"
	"testing"
)

// TestKMSKeys: kms_socket and kms_key parse, and what cannot work is
// refused with the key and its line.
func TestKMSKeys(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"both", "kms_socket = \"/run/keyward/kms.sock\"\nkms_key = \"k8s/etcd\"\n", ""},
		{"key alone (a passed socket)", "kms_key = \"k8s/etcd\"\n", ""},
		{"socket without key", "kms_socket = \"/run/keyward/kms.sock\"\n", "kms_key (default): empty, but kms_socket is set"},
		{"bad key name", "kms_socket = \"/run/k.sock\"\nkms_key = \"K8S etcd\"\n", "test.toml:2: kms_key:"},
		{"the checkpoint key", "kms_key = \"audit/ckpt\"\naudit_checkpoint_key = \"audit/ckpt\"\n", "kms_key: is audit_checkpoint_key"},
		{"the API socket's path", "kms_socket = \"/run/keyward/keyward.sock\"\nkms_key = \"k8s/etcd\"\n", `kms_socket = "/run/keyward/keyward.sock": the same path as socket`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := ParseConfig("test.toml", []byte(tt.in+"[backend]\ntoken = \"k\"\n"))
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tt.want == "" && (cfg.KMSKey != "k8s/etcd"):
				t.Fatalf("kms_key = %q", cfg.KMSKey)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}
