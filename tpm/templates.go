package tpm

import (
	"fmt"

	"github.com/google/go-tpm/tpm2"

	"github.com/keyward/keyward/keys"
)

// keyAttrs are every keyward key object's attributes: bound to this TPM and
// this parent (no duplication), generated inside the TPM, usable with the
// auth value, exempt from dictionary-attack lockout (the auth value is a
// 32-byte derived secret, and a crash must never lock the daemon out).
func keyAttrs() tpm2.TPMAObject {
	return tpm2.TPMAObject{
		FixedTPM:            true,
		FixedParent:         true,
		SensitiveDataOrigin: true,
		UserWithAuth:        true,
		NoDA:                true,
		SignEncrypt:         true,
	}
}

// keyedHashTemplate: an HMAC-SHA256 key (aes-256-gcm keys derive their
// per-message keys with it; hmac-sha256 keys MAC with it; the keyring key).
func keyedHashTemplate() tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:             tpm2.TPMAlgKeyedHash,
		NameAlg:          tpm2.TPMAlgSHA256,
		ObjectAttributes: keyAttrs(),
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
			Scheme: tpm2.TPMTKeyedHashScheme{
				Scheme:  tpm2.TPMAlgHMAC,
				Details: tpm2.NewTPMUSchemeKeyedHash(tpm2.TPMAlgHMAC, &tpm2.TPMSSchemeHMAC{HashAlg: tpm2.TPMAlgSHA256}),
			},
		}),
	}
}

func eccTemplate() tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:             tpm2.TPMAlgECC,
		NameAlg:          tpm2.TPMAlgSHA256,
		ObjectAttributes: keyAttrs(),
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			CurveID: tpm2.TPMECCNistP256,
			Scheme: tpm2.TPMTECCScheme{
				Scheme:  tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
			},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
	}
}

func rsaTemplate() tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:             tpm2.TPMAlgRSA,
		NameAlg:          tpm2.TPMAlgSHA256,
		ObjectAttributes: keyAttrs(),
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
			Scheme: tpm2.TPMTRSAScheme{
				Scheme:  tpm2.TPMAlgRSAPSS,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgRSAPSS, &tpm2.TPMSSigSchemeRSAPSS{HashAlg: tpm2.TPMAlgSHA256}),
			},
			KeyBits: 3072,
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{}),
	}
}

// templateFor returns the template of a key type's version objects.
func templateFor(t keys.Type) (tpm2.TPMTPublic, error) {
	switch t {
	case keys.AES256GCM, keys.HMACSHA256:
		return keyedHashTemplate(), nil
	case keys.ECDSAP256:
		return eccTemplate(), nil
	case keys.RSA3072PSS:
		return rsaTemplate(), nil
	}
	return tpm2.TPMTPublic{}, fmt.Errorf("key type %s on a TPM: %w", t, keys.ErrUnsupported)
}

// checkObject checks a stored public area against the template keyward
// creates for it: type, name algorithm, attributes and scheme must be exactly
// those, so an edited or foreign blob with weaker attributes (extractable
// through duplication, no auth, DA-protected...) is refused before use.
func checkObject(bp *blobPair, want tpm2.TPMTPublic) error {
	pub2b, err := tpm2.Unmarshal[tpm2.TPM2BPublic](bp.Public)
	if err != nil {
		return fmt.Errorf("stored public area: %v: %w", err, keys.ErrIntegrity)
	}
	pub, err := pub2b.Contents()
	if err != nil {
		return fmt.Errorf("stored public area: %v: %w", err, keys.ErrIntegrity)
	}
	if problems := attrProblems(pub, want); len(problems) > 0 {
		return fmt.Errorf("stored object %v: %w", problems, keys.ErrIntegrity)
	}
	return nil
}

// attrProblems lists how pub differs from the template want (nil: none).
func attrProblems(pub *tpm2.TPMTPublic, want tpm2.TPMTPublic) []string {
	var p []string
	if pub.Type != want.Type {
		p = append(p, fmt.Sprintf("type 0x%04x, want 0x%04x", uint16(pub.Type), uint16(want.Type)))
	}
	if pub.NameAlg != want.NameAlg {
		p = append(p, "name algorithm is not SHA-256")
	}
	a, w := pub.ObjectAttributes, want.ObjectAttributes
	check := func(got, want bool, name string) {
		if got != want {
			if want {
				p = append(p, "not "+name)
			} else {
				p = append(p, name)
			}
		}
	}
	check(a.FixedTPM, w.FixedTPM, "fixedTPM")
	check(a.FixedParent, w.FixedParent, "fixedParent")
	check(a.SensitiveDataOrigin, w.SensitiveDataOrigin, "sensitiveDataOrigin")
	check(a.UserWithAuth, w.UserWithAuth, "userWithAuth")
	check(a.AdminWithPolicy, w.AdminWithPolicy, "adminWithPolicy")
	check(a.NoDA, w.NoDA, "noDA")
	check(a.EncryptedDuplication, w.EncryptedDuplication, "encryptedDuplication")
	check(a.Restricted, w.Restricted, "restricted")
	check(a.Decrypt, w.Decrypt, "decrypt")
	check(a.SignEncrypt, w.SignEncrypt, "sign")
	if len(pub.AuthPolicy.Buffer) != 0 {
		p = append(p, "has an auth policy")
	}
	if len(p) == 0 && !sameParms(pub, want) {
		p = append(p, "parameters differ from keyward's template")
	}
	return p
}

// sameParms compares the marshalled parameters (scheme, curve, key size).
func sameParms(pub *tpm2.TPMTPublic, want tpm2.TPMTPublic) bool {
	a := tpm2.Marshal(tpm2.TPMTPublicParms{Type: pub.Type, Parameters: pub.Parameters})
	b := tpm2.Marshal(tpm2.TPMTPublicParms{Type: want.Type, Parameters: want.Parameters})
	return string(a) == string(b)
}
