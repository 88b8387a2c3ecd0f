package hsm

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestParseURI(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		check   func(URI) bool
		wantErr error
	}{
		{name: "token", in: "pkcs11:token=keyward", check: func(u URI) bool { return u.Token == "keyward" }},
		{name: "escaped", in: "pkcs11:token=my%20token;object=k1;id=%01%ff;type=secret-key", check: func(u URI) bool {
			return u.Token == "my token" && u.Object == "k1" && bytes.Equal(u.ID, []byte{1, 0xff}) && u.Type == "secret-key"
		}},
		{name: "slot id", in: "pkcs11:slot-id=7", check: func(u URI) bool { return u.SlotID != nil && *u.SlotID == 7 }},
		{name: "ignored query", in: "pkcs11:token=a?module-path=/x.so", check: func(u URI) bool { return u.Token == "a" }},
		{name: "no scheme", in: "token=a", wantErr: ErrConfig},
		{name: "pin value refused", in: "pkcs11:token=a?pin-value=1234", wantErr: ErrConfig},
		{name: "pin value in a malformed uri", in: "pkcs:token=a?pin-value=s3cr3t-pin", wantErr: ErrConfig},
		{name: "pin value in a bad attribute", in: "pkcs11:token=%zz?pin-value=s3cr3t-pin", wantErr: ErrConfig},
		{name: "unknown attr", in: "pkcs11:tokn=a", wantErr: ErrConfig},
		{name: "duplicate", in: "pkcs11:token=a;token=b", wantErr: ErrConfig},
		{name: "bad escape", in: "pkcs11:token=%zz", wantErr: ErrConfig},
		{name: "bad type", in: "pkcs11:type=foo", wantErr: ErrConfig},
		{name: "bad slot", in: "pkcs11:slot-id=x", wantErr: ErrConfig},
		{name: "no equals", in: "pkcs11:token", wantErr: ErrConfig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := ParseURI(tt.in)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "s3cr3t") {
					t.Fatalf("the error quotes the PIN: %v", err)
				}
				return
			}
			if err != nil || !tt.check(u) {
				t.Fatalf("ParseURI(%q) = %+v, %v", tt.in, u, err)
			}
		})
	}
}

func TestIsVersionLabel(t *testing.T) {
	for _, c := range []struct {
		label, name string
		v           uint32
	}{
		{versionLabel("app/k", 1), "app/k", 1},
		{versionLabel("app/k", 12), "app/k", 12},
		{versionLabel("app/k", 123456), "app/k", 123456},
		{versionLabel("app/k", 1), "app/k", 2},
		{versionLabel("app/k", 1), "app/kk", 1},
		{versionLabel("app/kk", 1), "app/k", 1},
		{labelPrefix + "app/k:v01", "app/k", 1},
		{metaKeyLabel, "app/k", 1},
		{"app/k:v1", "app/k", 1},
	} {
		if got, want := isVersionLabel(c.label, c.name, c.v), c.label == versionLabel(c.name, c.v); got != want {
			t.Errorf("isVersionLabel(%q, %q, %d) = %v, want %v", c.label, c.name, c.v, got, want)
		}
	}
}
