package tpm

import (
	"context"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/google/go-tpm/tpm2"
)

// Finding is one problem Doctor found with a stored object.
type Finding struct {
	Key     string `json:"key,omitempty"` // empty for the keyring key
	Version uint32 `json:"version,omitempty"`
	Name    string `json:"name,omitempty"` // hex TPM object name
	Problem string `json:"problem"`
	// Weak: a protection problem (the object could leak or be misused).
	Weak bool `json:"weak"`
}

// Object is one checked object and the attributes the TPM reports for it.
type Object struct {
	Key        string `json:"key"`
	Version    uint32 `json:"version"`
	Name       string `json:"name"`       // hex TPM object name (hash of the public area)
	Attributes string `json:"attributes"` // as tpm2_readpublic spells them: fixedtpm|fixedparent|...
}

// Report is Doctor's result.
type Report struct {
	Device   string `json:"device"`
	StateDir string `json:"state_dir"`
	Parent   string `json:"parent"` // hex name of the pinned parent
	Keys     int    `json:"keys"`
	// Rollback is the rollback counter's state as Open found it: the NV
	// index, its value and the manifest's, or why there is none.
	Rollback string    `json:"rollback"`
	Objects  []Object  `json:"objects"`
	Findings []Finding `json:"findings"`
}

// Weak is the number of findings that are protection problems.
func (r *Report) Weak() int {
	n := 0
	for _, f := range r.Findings {
		if f.Weak {
			n++
		}
	}
	return n
}

// Doctor loads every stored blob (the keyring key and each live version) into
// the TPM and checks what the TPM itself reports (TPM2_ReadPublic on the
// loaded object, not the file): the attributes keyward requires
// (fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth, noDA; not
// restricted, no policy), the scheme of the key's type, and that the loaded
// object's name matches the stored public area, and every record's own MAC.
// Open already checked the pinned parent, the manifest and the rollback
// counter.
func (b *TPM) Doctor(ctx context.Context) (Report, error) {
	rep := Report{Device: b.device, StateDir: b.st.dir, Findings: []Finding{}, Objects: []Object{}, Rollback: b.ctr.status}
	if b.rollbackErr != nil {
		rep.Findings = append(rep.Findings, Finding{Problem: b.rollbackErr.Error(), Weak: true})
	}
	type item struct {
		key  string
		ver  uint32
		bp   *blobPair
		tmpl tpm2.TPMTPublic
	}
	err := b.do(ctx, true, func(d *device) error {
		rep.Parent = hex.EncodeToString(d.parentName.Buffer)
		items := []item{{key: "", bp: b.ringKey, tmpl: keyedHashTemplate()}}
		rep.Keys = len(b.recs)
		for _, r := range b.recs {
			// Open vouched for them through the manifest; their own MACs too.
			if err := b.verifyRecord(r); err != nil {
				if needsReset(err) {
					return err
				}
				rep.Findings = append(rep.Findings, Finding{Key: r.Name, Problem: err.Error(), Weak: true})
			}
		}
		for _, r := range b.recs {
			tmpl, err := templateFor(r.Type)
			if err != nil {
				rep.Findings = append(rep.Findings, Finding{Key: r.Name, Problem: err.Error(), Weak: true})
				continue
			}
			for _, v := range r.Vers {
				if v.Blob != nil {
					items = append(items, item{key: r.Name, ver: v.Version, bp: v.Blob, tmpl: tmpl})
				}
			}
		}
		for _, it := range items {
			o, err := d.load(it.bp)
			if err != nil {
				if needsReset(err) {
					return err
				}
				rep.Findings = append(rep.Findings, Finding{Key: it.key, Version: it.ver, Problem: err.Error(), Weak: true})
				continue
			}
			rsp, err := (tpm2.ReadPublic{ObjectHandle: o.handle}).Execute(d.conn)
			if err != nil {
				return fmt.Errorf("TPM2_ReadPublic: %w", err)
			}
			pub, err := rsp.OutPublic.Contents()
			if err != nil {
				return fmt.Errorf("TPM2_ReadPublic: %w", err)
			}
			name := hex.EncodeToString(rsp.Name.Buffer)
			label := it.key
			if label == "" {
				label = "(keyring key)"
			}
			rep.Objects = append(rep.Objects, Object{Key: label, Version: it.ver, Name: name, Attributes: attrString(pub.ObjectAttributes)})
			for _, p := range attrProblems(pub, it.tmpl) {
				rep.Findings = append(rep.Findings, Finding{Key: it.key, Version: it.ver, Name: name, Problem: p, Weak: true})
			}
			if stored, err := tpm2.Unmarshal[tpm2.TPM2BPublic](it.bp.Public); err == nil {
				if sp, err := stored.Contents(); err == nil {
					if sn, err := tpm2.ObjectName(sp); err == nil && hex.EncodeToString(sn.Buffer) != name {
						rep.Findings = append(rep.Findings, Finding{Key: it.key, Version: it.ver, Name: name, Problem: "the loaded object's name differs from the stored public area", Weak: true})
					}
				}
			}
		}
		return nil
	})
	return rep, err
}

// attrString spells object attributes as tpm2_readpublic does.
func attrString(a tpm2.TPMAObject) string {
	var s []string
	for _, f := range []struct {
		on   bool
		name string
	}{
		{a.FixedTPM, "fixedtpm"}, {a.STClear, "stclear"}, {a.FixedParent, "fixedparent"},
		{a.SensitiveDataOrigin, "sensitivedataorigin"}, {a.UserWithAuth, "userwithauth"},
		{a.AdminWithPolicy, "adminwithpolicy"}, {a.NoDA, "noda"}, {a.EncryptedDuplication, "encryptedduplication"},
		{a.Restricted, "restricted"}, {a.Decrypt, "decrypt"}, {a.SignEncrypt, "sign"},
	} {
		if f.on {
			s = append(s, f.name)
		}
	}
	return strings.Join(s, "|")
}
