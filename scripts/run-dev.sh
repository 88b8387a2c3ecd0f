#!/usr/bin/env bash
# What `make run` does after building: start keywardd --dev on a SoftHSM2
# token kept under the repository (.dev/keywardd), show a wrap/unwrap round
# trip through the socket with the keyward CLI, then keep the daemon in the
# foreground (on a terminal) or stop it (when not on a terminal, as in CI).
set -euo pipefail
cd "$(dirname "$0")/.."

dev_dir=.dev/keywardd
sock=.dev/keyward.sock
export KEYWARD_SOCKET="$sock"
mkdir -p .dev
log=.dev/keywardd.log

./bin/keywardd --dev --dev-dir "$dev_dir" --socket "$sock" >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' EXIT

for _ in $(seq 1 100); do
	if grep -q '^keywardd: serving on' "$log" 2>/dev/null; then break; fi
	if ! kill -0 "$pid" 2>/dev/null; then cat "$log" >&2; exit 1; fi
	sleep 0.05
done
grep -q '^keywardd: serving on' "$log" || { echo "keywardd did not start:" >&2; cat "$log" >&2; exit 1; }
grep '^keywardd:' "$log"

step() { printf '\n$ %s\n' "$*"; }
k=./bin/keyward
key=demo/app-secret

if ! $k key show "$key" >/dev/null 2>&1; then
	step keyward key create "$key" --type aes-256-gcm
	$k key create "$key" --type aes-256-gcm
fi
step "printf 's3cr3t-api-token' | keyward wrap --key $key --context app=demo > .dev/blob.txt"
printf 's3cr3t-api-token' | $k wrap --key "$key" --context app=demo > .dev/blob.txt
cat .dev/blob.txt
step "keyward unwrap --context app=demo < .dev/blob.txt"
$k unwrap --context app=demo < .dev/blob.txt; echo
step "keyward unwrap --context app=other < .dev/blob.txt   # wrong context: refused"
$k unwrap --context app=other < .dev/blob.txt || true
step keyward key rotate "$key"
$k key rotate "$key" >/dev/null && $k key show "$key"
step "keyward rewrap --context app=demo < .dev/blob.txt   # re-encrypted under the newest version"
$k rewrap --context app=demo < .dev/blob.txt
step keyward status
$k status
step "keyward audit verify $dev_dir/audit.log   # every call above left a hash-chained record"
$k audit verify "$dev_dir/audit.log"
$k audit tail -n 1 "$dev_dir/audit.log"   # complete records only: the file ends with free space while keywardd runs

if [ -t 0 ] && [ -t 1 ]; then
	printf '\nkeywardd is running (pid %s, log %s). Try the commands above with\n  export KEYWARD_SOCKET=%s PATH=%s/bin:$PATH\nPress Ctrl-C to stop it.\n' "$pid" "$log" "$sock" "$PWD"
	wait "$pid"
fi
