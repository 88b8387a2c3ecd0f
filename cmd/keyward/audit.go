package main

import (
	"crypto"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/keyward/keyward/audit"
	"github.com/keyward/keyward/envelope"
)

// errBroken: audit verify found the chain broken. The command has said where
// on stdout; exit status 1 with nothing on stderr, like verify's "invalid".
var errBroken = fmt.Errorf("audit chain broken: %w", errInvalid)

func (a *app) auditCmd() *cobra.Command {
	c := groupCmd("audit", "check keywardd's audit log (no daemon needed)",
		"  keyward audit verify --dir /var/log/keyward", a.auditVerifyCmd(), a.auditContextDigestCmd(), a.auditTailCmd(), a.auditReportCmd())
	c.Annotations = localOnly
	return c
}

const auditVerifyLong = `Checks the hash chain of keywardd's audit log: every line is a complete,
canonical record, each seq is one more than the one before, each prev is the
hash of the record before (64 zeros for seq 1), and each hash recomputes as
SHA-256(prev || the record without its hash). Files are checked in the order
given, oldest first: the first record of a file must continue the last of the
one before. The first record must be the genesis record (seq 1, prev 64
zeros): a trail whose first records or oldest files are gone is broken.

When older files were removed on purpose (keywardd never removes any), give
where the kept trail starts: --from-seq N --from-hash H, N the seq of its
first record and H the hash of the record before it (seq N-1, the last one
removed). Take both from the "file:" line of the first file kept, as a run
over the whole trail printed it before the older files were removed; keep
them with the last hash.

With --dir, the log in DIR is found: its rotated files (NAME.<first>-<last>,
oldest first) and then the current file NAME. The current file (the last
one checked, when its name is not a rotated one) may end with free space:
NUL bytes after its last record, which keywardd writes ahead of its records
and cuts at stop and rotation. Only NULs may follow them; a NUL anywhere
else (inside or before a record, in a rotated file) is reported broken. A torn tail keywardd moved
aside at restart (NAME.torn-TIME) is not part of the chain; it is named in a
"note:" line.

Signed checkpoints (audit_checkpoint_key in keyward.toml): with
--checkpoint-key FILE (a PEM public key from "keyward pubkey KEY"; repeat it
for each version of the key that signed), every checkpoint record's
signature must verify, and at least one checkpoint must be present. Whoever
can write the log can rewrite a tail and recompute its hashes, but cannot
sign a checkpoint without the HSM or TPM: the records up to the last
checkpoint are anchored; the output says how many come after it.

Output: "ok: N records, seq A..B, last hash H" (and "checkpoints: ..."), then
one line per file: "file: FILE seq A..B, start --from-seq A --from-hash P";
or "broken: FILE:LINE (seq S): WHY", the first record that does not verify,
and what verified before it. Keep the last hash somewhere else: a later run that
no longer reaches it means the log was cut or rewritten.

Exit status 0 when the chain holds; 1 when it is broken, or when
--checkpoint-key was given and no checkpoint was found (nothing on stderr);
2 for a bad command line, or a DIR holding several logs; 3 when a file may
not be read; 4 when a FILE or DIR does not exist, or DIR holds no log.`

const auditVerifyExample = `  keyward audit verify --dir /var/log/keyward
  keyward audit verify /var/log/keyward/audit.log
  keyward audit verify /var/log/keyward/audit.log.0* /var/log/keyward/audit.log   # the glob lists rotated files in order
  keyward pubkey audit/checkpoint > checkpoint.pem
  keyward audit verify --dir /var/log/keyward --checkpoint-key checkpoint.pem
  keyward audit verify --dir /var/log/keyward --from-seq 120001 --from-hash 9f86d0...   # older files pruned`

// auditVerifyFlags are audit verify's flags.
type auditVerifyFlags struct {
	dir, fromHash string
	fromSeq       uint64
	allowEmpty    bool
	keyFiles      []string
}

func (a *app) auditVerifyCmd() *cobra.Command {
	var f auditVerifyFlags
	c := &cobra.Command{
		Use:         "verify (FILE... | --dir DIR) [--checkpoint-key PEM]... [--from-seq N --from-hash HEX]",
		Short:       "check the audit log's hash chain and seqs; name the first broken record",
		Long:        auditVerifyLong,
		Example:     auditVerifyExample,
		Annotations: localOnly,
		Args:        cobra.ArbitraryArgs,
		RunE: func(c *cobra.Command, args []string) error {
			return a.auditVerify(cmdName(c), c.Flags().Changed("from-seq"), f, args)
		},
	}
	c.Flags().StringVar(&f.dir, "dir", "", "find the log's files in `DIR` (instead of naming them)")
	c.Flags().StringArrayVar(&f.keyFiles, "checkpoint-key", nil, "check checkpoint signatures with the PEM public key in `FILE` (from keyward pubkey; repeat for each key version)")
	c.Flags().BoolVar(&f.allowEmpty, "allow-empty", false, "a trail with no record at all passes (a new log); without it, it is reported broken")
	c.Flags().Uint64Var(&f.fromSeq, "from-seq", 0, "the trail starts at seq `N` (older files removed on purpose); needs --from-hash")
	c.Flags().StringVar(&f.fromHash, "from-hash", "", "the hash of seq N-1, the last record removed (64 hex digits, from the \"file:\" line noted before pruning)")
	return c
}

// auditVerify runs audit verify (command name cmd; seqGiven: --from-seq
// was given) on the files args or f.dir names.
func (a *app) auditVerify(cmd string, seqGiven bool, f auditVerifyFlags, args []string) error {
	files, torn, err := auditFiles(cmd, f.dir, args)
	if err != nil {
		return err
	}
	opts, err := verifyOptions(cmd, seqGiven, f)
	if err != nil {
		return err
	}
	res, err := audit.VerifyWith(opts, files...)
	var brk *audit.Break
	if errors.As(err, &brk) {
		fmt.Fprintf(a.stdout, "broken: %s\n", brk)
		if res.Records > 0 {
			fmt.Fprintf(a.stdout, "before it: %d records verified, seq %d..%d\n", res.Records, res.FirstSeq, res.LastSeq)
		} else if opts.From == nil && brk.Seq > 1 {
			fmt.Fprintf(a.stdout, "hint: if the files before it were removed on purpose, give the start noted then: --from-seq %d --from-hash <hash of seq %d>\n",
				brk.Seq, brk.Seq-1)
		}
		return errBroken
	}
	if err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	if err := a.verifyReport(res, f); err != nil {
		return err
	}
	for _, t := range torn {
		fmt.Fprintf(a.stdout, "note: %s holds a torn tail keywardd moved aside at restart (see its log)\n", t)
	}
	return nil
}

// verifyReport prints what audit verify found in an unbroken chain;
// errBroken when it has no records (unless allowed) or no checkpoint
// where keys were given.
func (a *app) verifyReport(res audit.Result, f auditVerifyFlags) error {
	if res.Records == 0 {
		if !f.allowEmpty {
			fmt.Fprintf(a.stdout, "broken: no records (a log truncated to nothing, its rotated files removed, looks the same; --allow-empty when it is a new log)\n")
			return errBroken
		}
		fmt.Fprintf(a.stdout, "ok: 0 records\n")
	} else {
		fmt.Fprintf(a.stdout, "ok: %d records, seq %d..%d, last hash %s\n",
			res.Records, res.FirstSeq, res.LastSeq, hex.EncodeToString(res.LastHash[:]))
	}
	for _, sp := range res.Spans {
		fmt.Fprintf(a.stdout, "file: %s seq %d..%d, start --from-seq %d --from-hash %s\n",
			sp.File, sp.Start.Seq, sp.LastSeq, sp.Start.Seq, hex.EncodeToString(sp.Start.Prev[:]))
	}
	switch {
	case res.Checkpoints == 0 && len(f.keyFiles) > 0:
		fmt.Fprintf(a.stdout, "broken: no checkpoint record in the files checked (with --checkpoint-key, at least one must be there)\n")
		return errBroken
	case res.Checkpoints > 0:
		how := "signatures verified"
		if len(f.keyFiles) == 0 {
			how = "signatures NOT checked (give --checkpoint-key)"
		}
		fmt.Fprintf(a.stdout, "checkpoints: %d, %s; last at seq %d, %d records after it not anchored\n",
			res.Checkpoints, how, res.LastCheckpointSeq, res.LastSeq-res.LastCheckpointSeq)
	}
	return nil
}

// startFlags reads --from-seq and --from-hash: nil (the trail starts at the
// genesis record) when neither is given.
func startFlags(cmd string, seqGiven bool, seq uint64, hash string) (*audit.Start, error) {
	switch {
	case !seqGiven && hash == "":
		return nil, nil
	case !seqGiven || hash == "":
		return nil, usagef(cmd, "give --from-seq and --from-hash together")
	case seq == 0:
		return nil, usagef(cmd, "--from-seq: seqs start at 1")
	}
	var st audit.Start
	st.Seq = seq
	if b, err := hex.DecodeString(hash); err != nil || len(b) != len(st.Prev) || hash != strings.ToLower(hash) {
		return nil, usagef(cmd, "--from-hash: want 64 lower-case hex digits")
	} else {
		copy(st.Prev[:], b)
	}
	return &st, nil
}

// auditFiles is the chain to check: the files named, in that order, or the
// log found in dir.
func auditFiles(cmd, dir string, args []string) (files, torn []string, err error) {
	switch {
	case dir != "" && len(args) > 0:
		return nil, nil, usagef(cmd, "give FILE... or --dir, not both")
	case dir == "" && len(args) == 0:
		return nil, nil, usagef(cmd, "missing the FILE... to check (or --dir DIR)")
	case dir == "":
		for _, f := range args {
			if fi, err := os.Stat(f); err == nil && fi.IsDir() {
				return nil, nil, usagef(cmd, "%s is a directory: use --dir %s", f, f)
			}
		}
		return args, nil, nil
	}
	logs, err := audit.Logs(dir)
	switch {
	case err != nil:
		return nil, nil, fmt.Errorf("%s: %w", cmd, err)
	case len(logs) == 0:
		return nil, nil, fmt.Errorf("%s: no audit log in %s: %w", cmd, dir, fs.ErrNotExist)
	case len(logs) > 1:
		return nil, nil, usagef(cmd, "%s holds several logs (%s): name the files instead", dir, strings.Join(logs, ", "))
	}
	files, torn, err = audit.Chain(logs[0])
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", cmd, err)
	}
	return files, torn, nil
}

// readPublicKeyPEM reads a PKIX "PUBLIC KEY" PEM file.
func readPublicKeyPEM(path string) (crypto.PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PUBLIC KEY" {
		return nil, errors.New(`not a PEM "PUBLIC KEY" (make one with keyward pubkey KEY)`)
	}
	return x509.ParsePKIXPublicKey(block.Bytes)
}

const auditContextDigestLong = `Prints the context_digest keywardd writes in its audit records for a
context, so that the records of operations that used it can be found (grep
the log for it). The digest is "hmac-sha256:" and the HMAC-SHA256, under the
audit directory's context key, of the context's canonical encoding: without
the key, a digest tells nothing about the values. The key is DIR/context.key
(created by keywardd, 0600), read with --dir DIR, or a copy of it with
--key-file FILE; it may not be a symlink nor readable by group or others, so
run this as root or the daemon's user. No daemon is needed.

Records written before keyed digests hold a plain SHA-256 (no prefix); an
operation without a context has 64 zeros.

Exit status 0; 2 for a bad command line or a key file refused (too open, not
a key); 4 when the key file does not exist.`

func (a *app) auditContextDigestCmd() *cobra.Command {
	var dir, keyFile string
	var ctxFlag contextFlag
	c := &cobra.Command{
		Use:   "context-digest (--dir DIR | --key-file FILE) --context K=V...",
		Short: "print the audit records' context_digest of a context (for grep)",
		Long:  auditContextDigestLong,
		Example: `  keyward audit context-digest --dir /var/log/keyward --context app=billing
  grep -aF "$(keyward audit context-digest --dir /var/log/keyward --context app=billing)" /var/log/keyward/audit.log*   # -a: the current file ends with free space (NULs)`,
		Annotations: localOnly,
		Args:        cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cmd := cmdName(c)
			switch {
			case dir != "" && keyFile != "":
				return usagef(cmd, "give --dir or --key-file, not both")
			case dir == "" && keyFile == "":
				return usagef(cmd, "missing --dir DIR (the audit directory) or --key-file FILE")
			case dir != "":
				keyFile = filepath.Join(dir, audit.ContextKeyName)
			}
			pairs, err := ctxFlag.pairs(cmd)
			if err != nil {
				return err
			}
			key, err := audit.ReadContextKey(keyFile)
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return fmt.Errorf("%s: %w", cmd, err)
				}
				return usagef(cmd, "%v", err)
			}
			defer clear(key)
			if len(pairs) == 0 {
				fmt.Fprintln(a.stdout, strings.Repeat("0", 64))
				return nil
			}
			canonical := envelope.CanonicalContext(pairs)
			d := audit.ContextDigest(key, canonical)
			clear(canonical)
			fmt.Fprintf(a.stdout, "%s%s\n", audit.ContextHMACPrefix, hex.EncodeToString(d[:]))
			return nil
		},
	}
	c.Flags().StringVar(&dir, "dir", "", "the audit `DIR`ectory: its context.key is read")
	c.Flags().StringVar(&keyFile, "key-file", "", "read the context key from `FILE` (a copy of DIR/context.key)")
	c.Flags().Var(&ctxFlag, "context", "a context pair as the caller gave it; repeat for more")
	return c
}
