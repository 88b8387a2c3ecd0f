#!/bin/bash
# bench-audit.sh: what the audit log costs. Starts three keywardd that differ
# only in the audit log (off, audit_sync = "write", audit_sync = "fsync"),
# each on its own fresh SoftHSM2 token under a temporary directory, and drives
# them with `keyward bench --op wrap` in turns of DURATION each, ROUNDS times,
# so that the machine's drift hits the three alike. Prints, per concurrency,
# the median rate of each and the median of the per-round ratios to "off".
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

batch=()
[ "$BATCH" != 0 ] && batch=(--batch "$BATCH")
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
