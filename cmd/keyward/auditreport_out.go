package main

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/keyward/keyward/accessreview"
	"github.com/keyward/keyward/audit"
)

// reviewJSON is audit report --json. Its field names are stable; the
// access review page documents them.
type reviewJSON struct {
	Chain  chainJSON         `json:"chain"`
	Window windowJSON        `json:"window"`
	Rows   []reviewRowJSON   `json:"rows"`
	Grants []reviewGrantJSON `json:"grants,omitzero"` // with --config only
}

type chainJSON struct {
	OK                  bool        `json:"ok"`
	Files               int         `json:"files"`
	Records             uint64      `json:"records"`
	FirstSeq            uint64      `json:"first_seq"`
	LastSeq             uint64      `json:"last_seq"`
	LastHash            string      `json:"last_hash"`
	Checkpoints         uint64      `json:"checkpoints"`
	CheckpointsVerified bool        `json:"checkpoints_verified"`
	LastCheckpointSeq   uint64      `json:"last_checkpoint_seq"`
	Broken              *brokenJSON `json:"broken"`
	Torn                []string    `json:"torn"` // torn tails moved aside, not part of the chain
}

type brokenJSON struct {
	File   string `json:"file"`
	Line   int    `json:"line"`
	Seq    uint64 `json:"seq"`
	Reason string `json:"reason"`
}

type windowJSON struct {
	Since           *time.Time `json:"since"` // null: every record
	Records         uint64     `json:"records"`
	UnreadSummaries uint64     `json:"unread_summaries"`
	OtherKeysCalls  uint64     `json:"other_keys_calls"`
}

type reviewRowJSON struct {
	UID         *uint32    `json:"uid"` // null: the callers a refusal summary folded together
	User        string     `json:"user"`
	Unit        string     `json:"unit"`
	Key         string     `json:"key"`
	OtherKeys   bool       `json:"other_keys"` // calls past --max-rows rows, per uid and op
	Op          string     `json:"op"`
	Allowed     uint64     `json:"allowed"`
	Denied      uint64     `json:"denied"`
	Failed      uint64     `json:"failed"`
	Last        time.Time  `json:"last"`
	LastAllowed *time.Time `json:"last_allowed"`
}

type reviewGrantJSON struct {
	Kind       string            `json:"kind"`
	Name       string            `json:"name"`
	Subjects   []string          `json:"subjects"`
	Keys       []string          `json:"keys"`
	Operations []string          `json:"operations"`
	Context    map[string]string `json:"context"`
	Used       bool              `json:"used"`
	Allowed    uint64            `json:"allowed"`
	LastUse    *time.Time        `json:"last_use"`
}

func timeOrNil(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func orEmpty[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// reviewOutcome is what audit report found, for printing.
type reviewOutcome struct {
	rep          *accessreview.Report
	err          error // the break, or accessreview.ErrNoRecords
	keysGiven    bool  // --checkpoint-key
	noCheckpoint bool  // keys given, and no checkpoint found
	torn         []string
}

// json is the review as JSON.
func (o reviewOutcome) json() reviewJSON {
	rep, res := o.rep, o.rep.Chain
	out := reviewJSON{Chain: chainJSON{OK: o.err == nil && !o.noCheckpoint, Files: res.Files, Records: res.Records, FirstSeq: res.FirstSeq,
		LastSeq: res.LastSeq, Checkpoints: res.Checkpoints, CheckpointsVerified: o.keysGiven, LastCheckpointSeq: res.LastCheckpointSeq,
		Torn: orEmpty(o.torn)},
		Window: windowJSON{Since: timeOrNil(rep.Since), Records: rep.InWindow, UnreadSummaries: rep.UnreadSummaries, OtherKeysCalls: rep.OtherKeysCalls},
		Rows:   []reviewRowJSON{}}
	if res.Records > 0 {
		out.Chain.LastHash = hex.EncodeToString(res.LastHash[:])
	}
	out.Chain.Broken = brokenOf(o.err, o.noCheckpoint)
	for _, r := range rep.Rows {
		row := reviewRowJSON{User: r.User, Unit: r.Unit, Key: r.Key, OtherKeys: r.OtherKeys, Op: r.Op, Allowed: r.Allowed, Denied: r.Denied, Failed: r.Failed,
			Last: r.Last, LastAllowed: timeOrNil(r.LastAllowed)}
		if !r.Folded {
			row.UID = &r.UID
		}
		out.Rows = append(out.Rows, row)
	}
	for _, g := range rep.Grants {
		ctx := g.Context
		if ctx == nil {
			ctx = map[string]string{}
		}
		out.Grants = append(out.Grants, reviewGrantJSON{Kind: g.Kind, Name: g.Name, Subjects: orEmpty(g.Subjects), Keys: orEmpty(g.Keys),
			Operations: orEmpty(g.Operations), Context: ctx, Used: g.Used(), Allowed: g.Allowed, LastUse: timeOrNil(g.LastUse)})
	}
	if rep.Grants != nil && out.Grants == nil {
		out.Grants = []reviewGrantJSON{}
	}
	return out
}

// brokenOf is why the chain does not pass, nil when it does.
func brokenOf(err error, noCheckpoint bool) *brokenJSON {
	var brk *audit.Break
	switch {
	case errors.As(err, &brk):
		return &brokenJSON{File: brk.File, Line: brk.Line, Seq: brk.Seq, Reason: brk.Reason}
	case err != nil:
		return &brokenJSON{Reason: "no records (a log truncated to nothing, its rotated files removed, looks the same; --allow-empty when it is a new log)"}
	case noCheckpoint:
		return &brokenJSON{Reason: "no checkpoint record in the files checked (with --checkpoint-key, at least one must be there)"}
	}
	return nil
}

// print prints the review as text: the chain, the window, the table of
// use, and the grants no allowed call used.
func (o reviewOutcome) print(w io.Writer) error {
	var b strings.Builder
	rep, res := o.rep, o.rep.Chain
	if brk := brokenOf(o.err, o.noCheckpoint); brk != nil {
		if brk.File != "" {
			fmt.Fprintf(&b, "broken: %s\n", o.err)
		} else {
			fmt.Fprintf(&b, "broken: %s\n", brk.Reason)
		}
		if res.Records > 0 {
			fmt.Fprintf(&b, "the counts below cover only the %d records before it, seq %d..%d\n", res.Records, res.FirstSeq, res.LastSeq)
		}
	} else if res.Records > 0 {
		fmt.Fprintf(&b, "ok: %d records verified (files: %d), seq %d..%d, last hash %s\n", res.Records, res.Files, res.FirstSeq, res.LastSeq,
			hex.EncodeToString(res.LastHash[:]))
	}
	if res.Checkpoints > 0 {
		how := "signatures verified"
		if !o.keysGiven {
			how = "signatures NOT checked (give --checkpoint-key)"
		}
		fmt.Fprintf(&b, "checkpoints: %d, %s; last at seq %d\n", res.Checkpoints, how, res.LastCheckpointSeq)
	}
	window := "all records"
	if !rep.Since.IsZero() {
		window = "since " + rep.Since.UTC().Format(time.RFC3339)
	}
	fmt.Fprintf(&b, "window: %s: %d records\n", window, rep.InWindow)
	if rep.UnreadSummaries > 0 {
		fmt.Fprintf(&b, "note: %d refusal summaries did not read as keywardd writes them: each counted as one denial of op \"refused\"\n", rep.UnreadSummaries)
	}
	for _, t := range o.torn {
		fmt.Fprintf(&b, "note: %s holds a torn tail keywardd moved aside at restart (not part of the chain; see its log)\n", t)
	}
	if rep.OtherKeysCalls > 0 {
		fmt.Fprintf(&b, "note: more rows than --max-rows: %d calls that needed a new row are counted in (other keys) rows, per uid and operation\n", rep.OtherKeysCalls)
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return err
	}
	if err := printRows(w, rep.Rows); err != nil {
		return err
	}
	if rep.Grants != nil {
		return printUnused(w, rep.Grants)
	}
	return nil
}

func printRows(w io.Writer, rows []accessreview.Row) error {
	if len(rows) == 0 {
		_, err := fmt.Fprintln(w, "no calls in the window")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "UID\tUSER\tUNIT\tKEY\tOP\tALLOWED\tDENIED\tFAILED\tLAST")
	for _, r := range rows {
		uid, user := strconv.FormatUint(uint64(r.UID), 10), dash(r.User)
		if r.Folded {
			uid, user = "*", "(callers folded in a summary)"
		}
		key := dash(r.Key)
		if r.OtherKeys {
			key = "(other keys)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\n", uid, user, dash(r.Unit), key, dash(r.Op),
			r.Allowed, r.Denied, r.Failed, r.Last.UTC().Format(time.RFC3339))
	}
	return tw.Flush()
}

// dash is a table cell for text from a record or the host: "-" when empty,
// quoted when it holds anything but plain printable text.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return cell(s)
}

// printUnused lists the grants no allowed call in the window may have come
// through, then how many were used.
func printUnused(w io.Writer, grants []accessreview.Grant) error {
	var unused []accessreview.Grant
	for _, g := range grants {
		if !g.Used() {
			unused = append(unused, g)
		}
	}
	fmt.Fprintf(w, "\ngrants used in the window: %d of %d\n", len(grants)-len(unused), len(grants))
	if len(unused) == 0 {
		return nil
	}
	fmt.Fprintln(w, "unused: no allowed call in the window may have come through these (candidates to remove):")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KIND\tNAME\tSUBJECTS\tKEYS\tOPERATIONS\tCONTEXT")
	for _, g := range unused {
		ctx := "-"
		if len(g.Context) > 0 {
			var pairs []string
			for _, k := range slices.Sorted(maps.Keys(g.Context)) {
				pairs = append(pairs, cell(k)+"="+cell(g.Context[k]))
			}
			ctx = strings.Join(pairs, ",")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", g.Kind, cell(g.Name), strings.Join(g.Subjects, ","), strings.Join(g.Keys, ","),
			strings.Join(g.Operations, ","), ctx)
	}
	return tw.Flush()
}
