package daemon

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strings"

	"github.com/keyward/keyward/audit"
	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/policy"
)

// ReloadUnit is the unit of the peer in the audit record of a reload:
// keywardd itself records it, after a SIGHUP.
const ReloadUnit = "reload"

// auditReload records one SIGHUP's outcome in trail (nil: audit off): the
// configuration file's digest and, applied, which rules and break-glass
// tables it added, removed or changed (by name), so that the trail shows
// when access was widened or narrowed, and from which file.
func auditReload(ctx context.Context, trail auditLog, prev, cur config.Config, err error, log *slog.Logger) {
	what := reloadChange(prev, cur)
	if err == nil {
		log.Info("reload: configuration applied", "sha256", cur.Digest, "changed", what)
	}
	if trail == nil {
		return
	}
	p := schedulerPeer()
	p.Unit = ReloadUnit
	rec := audit.Record{Peer: p, Op: auditConfigReload, Result: "OK", RequestID: newRequestID(),
		Reason: clipText("config sha256 "+cmp.Or(cur.Digest, "unknown")+"; "+what, maxReloadReason)}
	if err != nil {
		rec.Result, rec.Reason = resultFor(err), clipText("refused, the running configuration kept: "+err.Error(), maxReloadReason)
	}
	if aerr := trail.Append(context.WithoutCancel(ctx), rec); aerr != nil {
		log.Error("audit log write failed after a reload", "err", aerr.Error())
	}
}

// auditConfigReload is the audit op of a reload.
const auditConfigReload = "config.reload"

// maxReloadReason bounds a reload record's reason (a configuration may
// name many rules).
const maxReloadReason = 4000

// reloadChange says which rules and break-glass tables cur added, removed
// or changed against prev, by name.
func reloadChange(prev, cur config.Config) string {
	rules := diffNamed(prev.Rules, cur.Rules, func(r policy.Rule) string { return r.Name })
	bg := diffNamed(prev.Breakglass, cur.Breakglass, func(b config.Breakglass) string { return b.Name })
	return "rules: " + rules + "; break-glass tables: " + bg
}

// diffNamed lists the names of the elements added, removed and changed
// from a to b ("unchanged" when none). An unnamed one is named by its
// place, "rule #N", as the policy names unnamed rules: inserting one before
// it shows it as changed.
func diffNamed[T any](a, b []T, name func(T) string) string {
	index := func(s []T) map[string]T {
		m := make(map[string]T, len(s))
		for i, v := range s {
			m[cmp.Or(name(v), fmt.Sprintf("rule #%d", i+1))] = v
		}
		return m
	}
	am, bm := index(a), index(b)
	var added, removed, changed []string
	for n, v := range bm {
		old, ok := am[n]
		switch {
		case !ok:
			added = append(added, n)
		case !reflect.DeepEqual(old, v):
			changed = append(changed, n)
		}
	}
	for n := range am {
		if _, ok := bm[n]; !ok {
			removed = append(removed, n)
		}
	}
	var parts []string
	for _, p := range []struct {
		what  string
		names []string
	}{{"added", added}, {"removed", removed}, {"changed", changed}} {
		if len(p.names) > 0 {
			slices.Sort(p.names)
			parts = append(parts, p.what+" "+strings.Join(p.names, ", "))
		}
	}
	if len(parts) == 0 {
		return "unchanged"
	}
	return strings.Join(parts, "; ")
}
