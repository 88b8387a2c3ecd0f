package audit

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/keyward/keyward/keys"
)

// Checkpoints. The hash chain shows that records were changed, but whoever
// can write the file can also rewrite a whole tail and re-chain it. A
// checkpoint record carries a signature, made by a key in the HSM or TPM,
// over its seq and prev (the hash of the record before it), so a rewritten
// tail cannot be re-chained through a checkpoint without the device:
// everything up to the last checkpoint is anchored; the records after it
// are as safe as the file.

// OpCheckpoint is the Op of checkpoint records.
const OpCheckpoint = "audit.checkpoint"

const checkpointLabel = "keyward/v1/audit-checkpoint\x00"

// CheckpointMessage is what a checkpoint's signature covers: a label, the
// checkpoint's seq (8 bytes, big endian) and its prev.
func CheckpointMessage(seq uint64, prev [32]byte) []byte {
	m := make([]byte, 0, len(checkpointLabel)+8+32)
	m = append(m, checkpointLabel...)
	m = binary.BigEndian.AppendUint64(m, seq)
	return append(m, prev[:]...)
}

// Signer signs checkpoint messages with a device-held key. The signature
// must verify as keyward's sign operation makes them: ECDSA (ASN.1 DER) and
// RSA-PSS over SHA-256(msg), Ed25519 over msg.
type Signer interface {
	SignCheckpoint(ctx context.Context, msg []byte) (key string, version uint32, sig []byte, err error)
}

// signTimeout bounds one checkpoint signature (the writer waits for it);
// after a failure the next attempt waits checkpointRetryGap (or the
// interval, if shorter), so a missing key does not cost a call per batch.
const (
	signTimeout        = 5 * time.Second
	checkpointRetryGap = 10 * time.Second
)

func (l *Log) checkpointDue(records int) bool {
	if l.opts.Checkpoint == nil {
		return false
	}
	n := l.sinceCheckpoint + records
	if l.forceCheckpoint {
		return n > 0
	}
	if time.Now().Before(l.checkpointRetry) {
		return false
	}
	return n >= l.opts.CheckpointEvery || (n > 0 && time.Since(l.lastCheckpoint) >= l.opts.CheckpointInterval)
}

// checkpointWait says how long the idle writer may sleep before a
// time-based checkpoint is due (false: none pending). l.mu is held, and no
// commit is under way.
func (l *Log) checkpointWait() (time.Duration, bool) {
	if l.opts.Checkpoint == nil || l.sinceCheckpoint == 0 || l.failing {
		return 0, false
	}
	due := l.lastCheckpoint.Add(l.opts.CheckpointInterval)
	if l.checkpointRetry.After(due) {
		due = l.checkpointRetry
	}
	return max(time.Until(due), 0), true
}

func (l *Log) isFailing() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.failing
}

// checkpoint signs and prepares the checkpoint record for seq after prev.
// A signer failure skips it (logged once per streak): the records are
// durable either way, and the next batch tries again.
func (l *Log) checkpoint(seq uint64, prev [32]byte) (prepared, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), signTimeout)
	defer cancel()
	key, version, sig, err := l.opts.Checkpoint.SignCheckpoint(ctx, CheckpointMessage(seq, prev))
	if err == nil && len(sig) == 0 {
		err = fmt.Errorf("empty signature")
	}
	var p prepared
	if err == nil {
		p, err = prepare(Record{Op: OpCheckpoint, Key: key, Version: version, Result: "OK", Sig: sig}, time.Now())
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		if !l.checkpointFailing {
			l.log.Warn("audit checkpoint not written; retrying later", "seq", seq, "err", err.Error())
		}
		l.stats.CheckpointFailures++
		l.checkpointFailing = true
		l.checkpointRetry = time.Now().Add(min(l.opts.CheckpointInterval, checkpointRetryGap))
		return prepared{}, false
	}
	if l.checkpointFailing {
		l.log.Info("audit checkpoints written again", "seq", seq)
		l.checkpointFailing = false
	}
	return p, true
}

// verifyCheckpoint checks a checkpoint record's signature against pubs
// (the versions of the checkpoint key).
func verifyCheckpoint(pubs []crypto.PublicKey, r Record) error {
	msg := CheckpointMessage(r.Seq, r.Prev)
	for _, pub := range pubs {
		switch pub.(type) {
		case *ecdsa.PublicKey, *rsa.PublicKey, ed25519.PublicKey:
		default:
			return fmt.Errorf("checkpoint key of type %T is not a signing key", pub)
		}
		// The one form keyward signs in (low-S ECDSA, PSS salt 32), as verify.
		if keys.VerifySignature(pub, msg, r.Sig) {
			return nil
		}
	}
	return fmt.Errorf("checkpoint signature (key %s v%d) does not verify with the given public key(s)", r.Key, r.Version)
}
