package tpm_test

import (
	"crypto/sha256"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/tpm"
	"github.com/keyward/keyward/tpm/swtpmtest"
)

// BenchmarkOps compares the backend's operations with the bare TPM commands
// they cost, on one swtpm in one run:
//
//	go test -run '^$' -bench Ops -count 5 ./tpm | benchstat -
//
// keyward/* go through tpm.TPM (mutex, record lookup, salted
// parameter-encrypted session, and for wrap/unwrap AES-256-GCM in software);
// raw/* send TPM2_HMAC and TPM2_Sign directly with the same kind of session,
// on objects made with the same templates. swtpm serves one client, so each
// side opens and closes its own connection.
func BenchmarkOps(b *testing.B) {
	sw := swtpmtest.Start(b)
	msg := make([]byte, 32)
	auth := sha256.Sum256([]byte("bench-auth"))

	b.Run("keyward", func(b *testing.B) {
		be, err := tpm.Open(b.Context(), tpm.Config{Device: sw.Device(), StateDir: b.TempDir(), Auth: testAuth})
		if err != nil {
			b.Fatal(err)
		}
		defer be.Close()
		ctx := b.Context()
		for _, k := range []struct {
			name string
			ty   keys.Type
		}{{"b/aes", keys.AES256GCM}, {"b/mac", keys.HMACSHA256}, {"b/ecdsa", keys.ECDSAP256}} {
			if _, err := be.CreateKey(ctx, k.name, k.ty); err != nil {
				b.Fatal(err)
			}
		}
		blob, err := be.Wrap(ctx, "b/aes", msg, keys.Context{"app": "bench"})
		if err != nil {
			b.Fatal(err)
		}
		b.Run("wrap", func(b *testing.B) {
			for b.Loop() {
				if _, err := be.Wrap(ctx, "b/aes", msg, keys.Context{"app": "bench"}); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("unwrap", func(b *testing.B) {
			for b.Loop() {
				if _, err := be.Unwrap(ctx, blob, keys.Context{"app": "bench"}); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("mac", func(b *testing.B) {
			for b.Loop() {
				if _, err := be.MAC(ctx, "b/mac", msg); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("sign-ecdsa", func(b *testing.B) {
			for b.Loop() {
				if _, err := be.Sign(ctx, "b/ecdsa", msg); err != nil {
					b.Fatal(err)
				}
			}
		})
	})

	b.Run("raw", func(b *testing.B) {
		conn, err := tpm.Dial(sw.Device())
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		srk, err := (tpm2.CreatePrimary{
			PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
			InPublic:      tpm2.New2B(tpm2.ECCSRKTemplate),
		}).Execute(conn)
		if err != nil {
			b.Fatal(err)
		}
		defer (tpm2.FlushContext{FlushHandle: srk.ObjectHandle}).Execute(conn)
		srkPub, _ := srk.OutPublic.Contents()
		load := func(tmpl tpm2.TPMTPublic) *tpm2.LoadResponse {
			c, err := (tpm2.Create{
				ParentHandle: tpm2.AuthHandle{Handle: srk.ObjectHandle, Name: srk.Name, Auth: tpm2.PasswordAuth(nil)},
				InSensitive:  tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{UserAuth: tpm2.TPM2BAuth{Buffer: auth[:]}}},
				InPublic:     tpm2.New2B(tmpl),
			}).Execute(conn)
			if err != nil {
				b.Fatal(err)
			}
			l, err := (tpm2.Load{
				ParentHandle: tpm2.AuthHandle{Handle: srk.ObjectHandle, Name: srk.Name, Auth: tpm2.PasswordAuth(nil)},
				InPrivate:    c.OutPrivate, InPublic: c.OutPublic,
			}).Execute(conn)
			if err != nil {
				b.Fatal(err)
			}
			return l
		}
		hk := load(tpm.KeyedHashTemplate())
		defer (tpm2.FlushContext{FlushHandle: hk.ObjectHandle}).Execute(conn)
		ek := load(tpm.ECCTemplate())
		defer (tpm2.FlushContext{FlushHandle: ek.ObjectHandle}).Execute(conn)
		enc, closeEnc, err := tpm2.HMACSession(conn, tpm2.TPMAlgSHA256, 16, tpm2.Auth(auth[:]), tpm2.Salted(srk.ObjectHandle, *srkPub), tpm2.AESEncryption(128, tpm2.EncryptInOut))
		if err != nil {
			b.Fatal(err)
		}
		defer closeEnc()
		plain, closePlain, err := tpm2.HMACSession(conn, tpm2.TPMAlgSHA256, 16, tpm2.Auth(auth[:]), tpm2.Salted(srk.ObjectHandle, *srkPub))
		if err != nil {
			b.Fatal(err)
		}
		defer closePlain()
		in := make([]byte, 48) // what wrap derives from: label + 32-byte nonce
		b.Run("hmac", func(b *testing.B) {
			for b.Loop() {
				if _, err := (tpm2.Hmac{Handle: tpm2.AuthHandle{Handle: hk.ObjectHandle, Name: hk.Name, Auth: enc},
					Buffer: tpm2.TPM2BMaxBuffer{Buffer: in}, HashAlg: tpm2.TPMAlgSHA256}).Execute(conn); err != nil {
					b.Fatal(err)
				}
			}
		})
		d := sha256.Sum256(msg)
		b.Run("sign-ecdsa", func(b *testing.B) {
			for b.Loop() {
				if _, err := (tpm2.Sign{KeyHandle: tpm2.AuthHandle{Handle: ek.ObjectHandle, Name: ek.Name, Auth: plain},
					Digest: tpm2.TPM2BDigest{Buffer: d[:]}, InScheme: tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
					Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull}}).Execute(conn); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
}
