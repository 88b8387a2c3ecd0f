package keys

import (
	"errors"
	"testing"
)

// TestUseResolve: the type and version rules every backend's Device applies
// through Use.Resolve, on one record.
func TestUseResolve(t *testing.T) {
	aes := &KeyInfo{Name: "a", Type: AES256GCM, MinDecryptVersion: 2, Versions: []VersionInfo{
		{Version: 1, State: Enabled}, {Version: 2, State: Disabled}, {Version: 3, State: Enabled}, {Version: 4, State: Destroyed}}}
	ec := &KeyInfo{Name: "e", Type: ECDSAP256, Versions: []VersionInfo{{Version: 1, State: Enabled}, {Version: 2, State: Disabled}}}
	off := &KeyInfo{Name: "h", Type: HMACSHA256, Versions: []VersionInfo{{Version: 1, State: Disabled}}}
	tests := []struct {
		name    string
		u       Use
		r       *KeyInfo
		want    uint32
		wantErr error
	}{
		{name: "wrap newest enabled", u: Use{Op: OpWrap, Name: "a"}, r: aes, want: 3},
		{name: "unwrap enabled", u: Use{Op: OpUnwrap, Name: "a", Version: 3}, r: aes, want: 3},
		{name: "unwrap below minimum", u: Use{Op: OpUnwrap, Name: "a", Version: 1}, r: aes, wantErr: ErrBelowMinVersion},
		{name: "unwrap disabled", u: Use{Op: OpUnwrap, Name: "a", Version: 2}, r: aes, wantErr: ErrVersionDisabled},
		{name: "unwrap destroyed", u: Use{Op: OpUnwrap, Name: "a", Version: 4}, r: aes, wantErr: ErrVersionDestroyed},
		{name: "unwrap version 0", u: Use{Op: OpUnwrap, Name: "a"}, r: aes, wantErr: ErrKeyNotFound},
		{name: "unwrap beyond newest", u: Use{Op: OpUnwrap, Name: "a", Version: 5}, r: aes, wantErr: ErrKeyNotFound},
		{name: "sign with aes", u: Use{Op: OpSign, Name: "a"}, r: aes, wantErr: ErrWrongKeyType},
		{name: "wrap with ec", u: Use{Op: OpWrap, Name: "e"}, r: ec, wantErr: ErrWrongKeyType},
		{name: "mac with ec", u: Use{Op: OpMAC, Name: "e"}, r: ec, wantErr: ErrWrongKeyType},
		{name: "sign", u: Use{Op: OpSign, Name: "e"}, r: ec, want: 1},
		{name: "verify version 0", u: Use{Op: OpVerify, Name: "e"}, r: ec, wantErr: ErrInvalidArgument},
		{name: "verify disabled", u: Use{Op: OpVerify, Name: "e", Version: 2}, r: ec, wantErr: ErrVersionDisabled},
		{name: "public key newest", u: Use{Op: OpPublicKey, Name: "e"}, r: ec, want: 1},
		{name: "public key disabled", u: Use{Op: OpPublicKey, Name: "e", Version: 2}, r: ec, wantErr: ErrVersionDisabled},
		{name: "mac, none enabled", u: Use{Op: OpMAC, Name: "h"}, r: off, wantErr: ErrNoEnabledVersion},
		{name: "verify-mac disabled", u: Use{Op: OpVerifyMAC, Name: "h", Version: 1}, r: off, wantErr: ErrVersionDisabled},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.u.Resolve(tc.r)
			if !errors.Is(err, tc.wantErr) || tc.wantErr == nil && err != nil {
				t.Fatalf("Resolve: %v, want %v", err, tc.wantErr)
			}
			if tc.wantErr == nil && got != tc.want {
				t.Fatalf("Resolve = v%d, want v%d", got, tc.want)
			}
		})
	}
}

// TestResolveAllocates: resolving is on every data operation's path.
func TestResolveAllocates(t *testing.T) {
	r := &KeyInfo{Name: "a", Type: AES256GCM, Versions: []VersionInfo{{Version: 1, State: Enabled}}}
	u := Use{Op: OpUnwrap, Name: "a", Version: 1}
	if n := testing.AllocsPerRun(100, func() { u.Resolve(r) }); n != 0 {
		t.Fatalf("Resolve allocates %v times", n)
	}
}

func TestErrReadOnlyIsUnsupported(t *testing.T) {
	if !errors.Is(ErrReadOnly, ErrUnsupported) {
		t.Fatal("ErrReadOnly does not wrap ErrUnsupported: the wire code of a read-only refusal would change")
	}
}
