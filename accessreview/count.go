package accessreview

import (
	"strconv"
	"strings"
	"time"

	"github.com/keyward/keyward/audit"
)

// opRefused is the op of keywardd's refusal summaries (daemon.OpRefused):
// calls refused before any operation ran, counted per caller, result and
// interval in one record.
const opRefused = "refused"

// resultMixed is the result of the summary that folds in the callers past
// the summary's budget; its peer is no caller.
const resultMixed = "MIXED"

// Results that count as a call allowed, or denied; any other result is a
// call that failed.
var (
	allowedResults = map[string]bool{"OK": true, "INVALID": true}
	deniedResults  = map[string]bool{
		"PERMISSION_DENIED": true, "RATE_LIMITED": true, "TOO_MANY_REQUESTS": true,
		"CONNECTION_LIMIT": true, "RECEIVE_TIMEOUT": true,
	}
	// skippedResults are records that are not a call's outcome: an intent
	// record precedes the outcome record of a key change.
	skippedResults = map[string]bool{"STARTED": true}
)

// outcome is how a record counts.
type outcome uint8

const (
	outcomeNone outcome = iota // not counted
	outcomeAllowed
	outcomeDenied
	outcomeFailed
)

func outcomeOf(r *audit.Record) outcome {
	switch {
	case r.Op == audit.OpCheckpoint || skippedResults[r.Result]:
		return outcomeNone
	case allowedResults[r.Result]:
		return outcomeAllowed
	case deniedResults[r.Result] || r.Op == opRefused:
		return outcomeDenied
	}
	return outcomeFailed
}

// groupKey is one row: a subject, a key, an operation.
type groupKey struct {
	uid    uint32
	folded bool // the callers a refusal summary folded together (no uid)
	// otherKeys: calls that would have needed a new row once the review
	// held MaxRows rows (key and unit are then "").
	otherKeys bool
	unit      string
	key       string
	op        string
}

// counts is a row's tally.
type counts struct {
	allowed, denied, failed uint64
	last, lastAllowed       time.Time
}

func (c *counts) add(o outcome, n uint64, t time.Time) {
	switch o {
	case outcomeAllowed:
		c.allowed += n
		if t.After(c.lastAllowed) {
			c.lastAllowed = t
		}
	case outcomeDenied:
		c.denied += n
	case outcomeFailed:
		c.failed += n
	}
	if t.After(c.last) {
		c.last = t
	}
}

// summary is what a refusal summary's reason says: "[callers=N (...) ]
// count=N ops=OP:N,OP:N first=TIME last=TIME".
type summary struct {
	count uint64
	ops   []opCount
	last  time.Time
}

type opCount struct {
	op string
	n  uint64
}

// parseSummary reads a refusal summary's reason; ok false when it does not
// read as keywardd writes it (its op counts must add up to its count).
func parseSummary(reason string) (s summary, ok bool) {
	i := strings.Index(reason, "count=")
	if i < 0 || (i > 0 && reason[i-1] != ' ') {
		return s, false
	}
	seen := map[string]bool{}
	for _, field := range strings.Fields(reason[i:]) {
		name, val, found := strings.Cut(field, "=")
		if !found || seen[name] {
			return s, false
		}
		seen[name] = true
		var err error
		switch name {
		case "count":
			s.count, err = strconv.ParseUint(val, 10, 64)
		case "ops":
			if s.ops, ok = parseOps(val); !ok {
				return s, false
			}
		case "last":
			s.last, err = time.Parse(time.RFC3339Nano, val)
		}
		if err != nil {
			return s, false
		}
	}
	var sum uint64
	for _, oc := range s.ops {
		if oc.n > s.count-sum { // more than the count: never wrap around
			return s, false
		}
		sum += oc.n
	}
	return s, seen["count"] && seen["ops"] && s.count > 0 && sum == s.count
}

// parseOps reads a summary's ops field, OP:N,OP:N...; ok false when it
// does not read so.
func parseOps(val string) (ops []opCount, ok bool) {
	for _, item := range strings.Split(val, ",") {
		op, num, found := strings.Cut(item, ":")
		n, err := strconv.ParseUint(num, 10, 64)
		if !found || op == "" || err != nil || n == 0 {
			return nil, false
		}
		ops = append(ops, opCount{op, n})
	}
	return ops, true
}
