package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/keyward/keyward/policy"
)

// writeBreakglassPaths adds explain's break-glass lines: the policies
// under which the caller could get the request with approval.
func writeBreakglassPaths(b *strings.Builder, pol *policy.Policy, id policy.Identity, req policy.Request) {
	paths := pol.BreakglassPaths(id, req)
	if len(paths) == 0 {
		return
	}
	b.WriteString("break-glass (nothing allowed until approved):\n")
	for _, bp := range paths {
		fmt.Fprintf(b, "  %s\n", bp.Path([]policy.Operation{req.Op}, req.Key))
	}
}

// breakglassJSON is one break-glass policy in policy report --json.
type breakglassJSON struct {
	Policy      string   `json:"policy"`
	Requesters  []string `json:"requesters"`
	Approvers   []string `json:"approvers"`
	Operations  []string `json:"operations"`
	Keys        []string `json:"keys"`
	MaxDuration string   `json:"max_duration"`
	Approvals   int      `json:"approvals"`
	RequestTTL  string   `json:"request_ttl"`
}

func breakglassReport(pol *policy.Policy) []breakglassJSON {
	out := []breakglassJSON{}
	for _, bp := range pol.Breakglass() {
		var ops []string
		for _, op := range bp.Operations() {
			ops = append(ops, string(op))
		}
		out = append(out, breakglassJSON{Policy: bp.Name(), Requesters: bp.Requesters(), Approvers: bp.Approvers(), Operations: ops,
			Keys: bp.Keys(), MaxDuration: policy.ShortDuration(bp.MaxDuration()), Approvals: bp.Approvals(), RequestTTL: policy.ShortDuration(bp.RequestTTL())})
	}
	return out
}

// printBreakglass lists the break-glass paths after the report's grants:
// each requester, what they could get, and with whose approval.
func printBreakglass(w io.Writer, pol *policy.Policy) error {
	bps := pol.Breakglass()
	if len(bps) == 0 {
		return nil
	}
	fmt.Fprintln(w, "\nBreak-glass (with approval only; nothing is allowed until approved):")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "REQUESTER\tCOULD GET")
	for _, bp := range bps {
		for _, r := range bp.Requesters() {
			fmt.Fprintf(tw, "%s\t%s\n", r, bp.Path(bp.Operations(), strings.Join(bp.Keys(), ",")))
		}
	}
	return tw.Flush()
}
