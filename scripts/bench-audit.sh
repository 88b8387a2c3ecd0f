#!/bin/bash
# bench-audit.sh: what the audit log costs. Starts three keywardd that differ
# only in the audit log (off, audit_sync = "write", audit_sync = "fsync"),
# each on its own fresh SoftHSM2 token under a temporary directory, and drives
# them with `keyward bench --op wrap` in turns of DURATION each, ROUNDS times,
# so that the machine's drift hits the three alike. Prints, per concurrency,
# the median rate of each and the median of the per-round ratios to "off",
# then, for "write" and "fsync", what one sync of the log file cost
# (keyward_audit_fsync_seconds from each keywardd's metrics socket: the mean
# per sync, and syncs per second, per concurrency).
#
# Settings (environment): ROUNDS (10), DURATION (1s), CONCURRENCY (1,8,64),
# BATCH (0: single calls; N: batches of N items), AUDIT_DIR (where the two
# audit logs go; default: the temporary directory, which must be on the disk
# you want to measure: not a tmpfs), WORK_PARENT (where the temporary
# directory is made: /var/tmp). Needs bin/keywardd and bin/keyward
# (make build) and softhsm2; tokens are made by softhsm-test/provision-token.sh.
set -euo pipefail

ROUNDS=${ROUNDS:-10}
DURATION=${DURATION:-1s}
CONCURRENCY=${CONCURRENCY:-1,8,64}
BATCH=${BATCH:-0}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/bin}
MODULE=${MODULE:-/usr/lib/softhsm/libsofthsm2.so}
for b in "$BIN/keywardd" "$BIN/keyward"; do
	[ -x "$b" ] || { echo "bench-audit: $b missing (run make build)" >&2; exit 2; }
done
[ -r "$MODULE" ] || { echo "bench-audit: $MODULE missing (apt-get install softhsm2)" >&2; exit 2; }

WORK=$(mktemp -d "${WORK_PARENT:-/var/tmp}/keyward-bench-audit.XXXXXX")
chmod 700 "$WORK"
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT

MODES=(off write fsync)
for mode in "${MODES[@]}"; do
	d=$WORK/$mode
	out=$("$ROOT/softhsm-test/provision-token.sh" --dir "$d" --label bench --module "$MODULE" 2>&1) ||
		{ echo "bench-audit: provisioning a token failed: $out" >&2; exit 1; }
	audit_log=${AUDIT_DIR:-$d}/audit-$mode-$$.log
	sync=fsync
	case $mode in
	off) audit_log=off ;;
	write) sync=write ;;
	esac
	cat >"$d/keyward.toml" <<EOF
socket = "$d/keyward.sock"
audit_log = "$audit_log"
audit_sync = "$sync"
log_level = "warn"
metrics_socket = "$d/metrics.sock"
[backend]
kind = "pkcs11"
module = "$MODULE"
token = "bench"
pin_file = "$d/pin"
[limits]
max_concurrent_per_uid = 4096
[[rule]]
name = "bench"
uids = [$(id -u)]
keys = ["bench/**"]
operations = ["wrap", "key.create", "key.read"]
EOF
	SOFTHSM2_CONF=$d/softhsm2.conf "$BIN/keywardd" --config "$d/keyward.toml" >"$d/keywardd.log" 2>&1 &
	PIDS+=($!)
	for _ in $(seq 100); do [ -S "$d/keyward.sock" ] && break; sleep 0.1; done
	[ -S "$d/keyward.sock" ] || { echo "bench-audit: keywardd ($mode) did not start:" >&2; cat "$d/keywardd.log" >&2; exit 1; }
done

# sync_totals MODE prints that keywardd's count and sum (seconds) of audit
# log syncs so far.
sync_totals() {
	curl -s --unix-socket "$WORK/$1/metrics.sock" http://keywardd/metrics |
		awk '$1 == "keyward_audit_fsync_seconds_count" { n = $2 } $1 == "keyward_audit_fsync_seconds_sum" { s = $2 } END { print n + 0, s + 0 }'
}

batch=()
[ "$BATCH" != 0 ] && batch=(--batch "$BATCH")
for mode in write fsync; do echo "0 0 $mode $(sync_totals "$mode")" >>"$WORK/syncs"; done
echo "bench-audit: ${ROUNDS} rounds of ${DURATION} per keywardd and concurrency (${CONCURRENCY}), batch ${BATCH}" >&2
: >"$WORK/results"
IFS=, read -ra concs <<<"$CONCURRENCY"
for r in $(seq "$ROUNDS"); do
	for c in "${concs[@]}"; do
		for mode in "${MODES[@]}"; do
			# The table's fourth column is ops/s (items/s for batches).
			if ! table=$("$BIN/keyward" --socket "$WORK/$mode/keyward.sock" bench --op wrap --concurrency "$c" \
				--duration "$DURATION" "${batch[@]}" 2>"$WORK/bench.err"); then
				echo >&2
				echo "bench-audit: keyward bench against the $mode keywardd failed:" >&2
				cat "$WORK/bench.err" >&2
				exit 1
			fi
			rate=$(awk '$1 == "wrap" { print $4 }' <<<"$table")
			echo "$c $r $mode $rate" >>"$WORK/results"
			[ "$mode" = off ] || echo "$c $r $mode $(sync_totals "$mode")" >>"$WORK/syncs"
		done
	done
	printf '\rround %d/%d' "$r" "$ROUNDS" >&2
done
echo >&2

awk '
function median(a, n,    i, j, t) {
	for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j > 0 && a[j] > t; j--) a[j+1] = a[j]; a[j+1] = t }
	return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2
}
{ rate[$1, $2, $3] = $4; if (!($1 in seen)) { seen[$1] = 1; order[++nc] = $1 } if ($2 > rounds) rounds = $2 }
END {
	printf "%6s  %10s  %10s  %10s  %9s  %9s\n", "conc", "off/s", "write/s", "fsync/s", "write/off", "fsync/off"
	for (k = 1; k <= nc; k++) {
		c = order[k]
		split("", o); split("", w); split("", f); split("", rw); split("", rf)
		for (r = 1; r <= rounds; r++) {
			o[r] = rate[c, r, "off"]; w[r] = rate[c, r, "write"]; f[r] = rate[c, r, "fsync"]
			rw[r] = o[r] > 0 ? w[r] / o[r] : 0; rf[r] = o[r] > 0 ? f[r] / o[r] : 0
		}
		printf "%6s  %10.0f  %10.0f  %10.0f  %9.3f  %9.3f\n", c, median(o, rounds), median(w, rounds), median(f, rounds), median(rw, rounds), median(rf, rounds)
	}
}' "$WORK/results"

# Per concurrency and mode: the syncs during its measurements (each line's
# totals minus the previous line's of that mode) and the time they took.
case $DURATION in
*ms) dur=$(awk -v d="${DURATION%ms}" 'BEGIN { print d / 1000 }') ;;
*s) dur=${DURATION%s} ;;
*) dur=1 ;;
esac
awk -v dur="$dur" '
{ c = $1; m = $3; if (m in pn) { dn[c, m] += $4 - pn[m]; ds[c, m] += $5 - ps[m]; if (!(c in seen)) { seen[c] = 1; order[++nc] = c }; runs[c, m]++ } pn[m] = $4; ps[m] = $5 }
END {
	printf "%6s  %14s  %14s  %14s  %14s\n", "conc", "write: syncs/s", "us per sync", "fsync: syncs/s", "us per sync"
	for (k = 1; k <= nc; k++) {
		c = order[k]
		printf "%6s", c
		split("write fsync", ms, " ")
		for (i = 1; i <= 2; i++) {
			m = ms[i]; n = dn[c, m]
			printf "  %14.0f  %14.1f", runs[c, m] ? n / (runs[c, m] * dur) : 0, n ? ds[c, m] / n * 1e6 : 0
		}
		printf "\n"
	}
}' "$WORK/syncs"
