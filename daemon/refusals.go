package daemon

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/keyward/keyward/audit"
)

// OpRefused is the op of a summary record: calls refused before any
// operation ran (rate limits, concurrency and connection limits, callers no
// rule names, requests not received in time), counted per caller, result
// and interval instead of one record each, so that a flood of refusals
// cannot fill the audit disk.
const OpRefused = "refused"

// ResultReceiveTimeout is the result of a request cut because its message
// did not arrive within limits.receive_timeout; ResultConnLimit that of a
// connection refused at its handshake.
const (
	ResultReceiveTimeout = "RECEIVE_TIMEOUT"
	ResultConnLimit      = "CONNECTION_LIMIT"
)

// maxRefusalCallers bounds the callers counted apart in one interval; the
// rest are counted together in the overflow record.
const maxRefusalCallers = 10000

type refusalKey struct {
	uid    uint32
	unit   string
	result string
}

type refusalCount struct {
	n           uint64
	gid         uint32
	pid         int32 // the last caller's
	ops         map[string]uint64
	first, last time.Time
}

// refusals counts refused calls between flushes.
type refusals struct {
	mu       sync.Mutex
	now      func() time.Time
	counts   map[refusalKey]*refusalCount
	overflow refusalCount // calls of callers beyond maxRefusalCallers
}

func newRefusals(now func() time.Time) *refusals {
	return &refusals{now: now, counts: map[refusalKey]*refusalCount{}}
}

// note counts one refused call. op must come from a closed set (methodOp
// maps unknown RPC names to "unknown"): it becomes part of a record.
func (r *refusals) note(p audit.Peer, op, result string) {
	t := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	k := refusalKey{uid: p.UID, unit: p.Unit, result: result}
	c := r.counts[k]
	if c == nil {
		if len(r.counts) >= maxRefusalCallers {
			c = &r.overflow
		} else {
			c = &refusalCount{}
			r.counts[k] = c
		}
	}
	if c.n == 0 {
		c.first = t
	}
	c.n++
	c.last, c.gid, c.pid = t, p.GID, p.PID
	if c.ops == nil {
		c.ops = map[string]uint64{}
	}
	c.ops[op]++
}

// take returns the summary records of everything counted since the last
// take, at most maxRecords (the callers with the most refusals) plus one
// record folding in the rest, and starts counting afresh.
func (r *refusals) take(maxRecords int) []audit.Record {
	r.mu.Lock()
	counts, overflow := r.counts, r.overflow
	r.counts, r.overflow = map[refusalKey]*refusalCount{}, refusalCount{}
	r.mu.Unlock()
	keys := slices.SortedFunc(maps.Keys(counts), func(a, b refusalKey) int {
		if c := cmp.Compare(counts[b].n, counts[a].n); c != 0 {
			return c
		}
		return cmp.Or(cmp.Compare(a.uid, b.uid), cmp.Compare(a.unit, b.unit), cmp.Compare(a.result, b.result))
	})
	var out []audit.Record
	folded := 0
	for _, k := range keys {
		c := counts[k]
		if len(out) < maxRecords {
			out = append(out, summaryRecord(audit.Peer{UID: k.uid, GID: c.gid, PID: c.pid, Unit: k.unit}, k.result, c, ""))
			continue
		}
		folded++
		overflow.merge(c)
	}
	if overflow.n > 0 {
		out = append(out, summaryRecord(audit.Peer{}, "MIXED", &overflow,
			fmt.Sprintf("callers=%d (more than audit_refusal_max_records or %d callers in one interval) ", folded, maxRefusalCallers)))
	}
	return out
}

func (c *refusalCount) merge(o *refusalCount) {
	if c.n == 0 || o.first.Before(c.first) {
		c.first = o.first
	}
	if o.last.After(c.last) {
		c.last = o.last
	}
	c.n += o.n
	if c.ops == nil {
		c.ops = map[string]uint64{}
	}
	for op, n := range o.ops {
		c.ops[op] += n
	}
}

// summaryRecord writes c as one record: count, ops with their counts, and
// the first and last refusal (its Duration is last - first).
func summaryRecord(p audit.Peer, result string, c *refusalCount, prefix string) audit.Record {
	var ops []string
	for _, op := range slices.Sorted(maps.Keys(c.ops)) {
		ops = append(ops, fmt.Sprintf("%s:%d", op, c.ops[op]))
	}
	reason := fmt.Sprintf("%scount=%d ops=%s first=%s last=%s", prefix, c.n, strings.Join(ops, ","),
		c.first.UTC().Format(time.RFC3339Nano), c.last.UTC().Format(time.RFC3339Nano))
	return audit.Record{Peer: p, Op: OpRefused, Result: result, Reason: reason, Duration: c.last.Sub(c.first)}
}

// refusalFlusher writes the summaries every interval and once more when
// stopped. Records go to the audit log when there is one; each summary is
// also one WARN line, so the journal says it once per caller and interval
// rather than once per call.
type refusalFlusher struct {
	r          *refusals
	al         auditLog // nil: audit off
	log        *slog.Logger
	interval   time.Duration
	maxRecords int
	stop       chan struct{}
	done       chan struct{}
}

func (f *refusalFlusher) run() {
	defer close(f.done)
	t := time.NewTicker(f.interval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			f.flush()
		case <-f.stop:
			f.flush()
			return
		}
	}
}

// Stop writes what is left and returns once it is written.
func (f *refusalFlusher) Stop() {
	close(f.stop)
	<-f.done
}

func (f *refusalFlusher) flush() {
	recs := f.r.take(f.maxRecords)
	if len(recs) == 0 {
		return
	}
	for _, r := range recs {
		f.log.Warn("calls refused before an operation ran (summary)", "uid", r.Peer.UID, "unit", r.Peer.Unit,
			"result", r.Result, "detail", r.Reason)
	}
	if f.al == nil {
		return
	}
	if err := f.al.AppendAll(context.Background(), recs); err != nil {
		f.log.Error("audit log write failed: refusal summaries lost", "records", len(recs), "err", err.Error())
	}
}
