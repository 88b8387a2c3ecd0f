package daemon

import (
	"context"

	"github.com/keyward/keyward/audit"
	"github.com/keyward/keyward/policy"
)

// auditLog is what the service needs of the audit log: *audit.Log in the
// daemon, an in-memory trail in service tests. A Service without one (nil)
// runs with the audit log off.
type auditLog interface {
	// Append and AppendAll return once the records are durable (or fail).
	Append(ctx context.Context, r audit.Record) error
	AppendAll(ctx context.Context, rs []audit.Record) error
	// Accepting is false while the log is failing and no retry is due.
	Accepting() bool
	Status() (failing bool, lastErr error, queue int)
	// ContextDigest keys a canonical context so the trail never holds it.
	ContextDigest(canonical []byte) [32]byte
	SyncMode() audit.SyncMode
	Stats() audit.Stats
}

var _ auditLog = (*audit.Log)(nil)

// serviceMetrics is what the service and its gate count: *Metrics in the
// daemon, noMetrics when there are none.
type serviceMetrics interface {
	deny(op policy.Operation)
	rateLimited(kind abuseKind)
	refusedAtOpen(result string)
	kmsKeyIDChanged()
	verifyFailed(op policy.Operation)
}

var _ serviceMetrics = (*Metrics)(nil)

// noMetrics counts nothing.
type noMetrics struct{}

func (noMetrics) deny(policy.Operation)         {}
func (noMetrics) rateLimited(abuseKind)         {}
func (noMetrics) refusedAtOpen(string)          {}
func (noMetrics) kmsKeyIDChanged()              {}
func (noMetrics) verifyFailed(policy.Operation) {}
