#!/usr/bin/env bash
# Put promtool at $1 (default bin/promtool) unless it is there: taken from
# Debian's prometheus package, fetched with `apt-get download` (checked
# against the signed package lists like any install) and unpacked, not
# installed. Installing the package would pull ten JavaScript libraries and
# enable a Prometheus server on port 9090 as a system service, for a test
# tool: so only its promtool (48 MB, linked to libc alone) is kept.
set -euo pipefail

dest=$(realpath -m "${1:-bin/promtool}")
[[ -x $dest ]] && exit 0
command -v apt-get >/dev/null || { echo "get-promtool: no apt-get: put a promtool at $dest by hand" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
if ! apt-get download prometheus >/dev/null 2>&1; then
	# Usually a stale or absent package list (fresh containers have none).
	sudo=()
	[[ $(id -u) -eq 0 ]] || sudo=(sudo -n)
	"${sudo[@]}" apt-get update -qq >/dev/null
	apt-get download prometheus >/dev/null
fi
dpkg-deb --fsys-tarfile prometheus_*.deb | tar -x ./usr/bin/promtool
mkdir -p "$(dirname "$dest")"
install -m 0755 usr/bin/promtool "$dest"
echo "get-promtool: $("$dest" --version 2>&1 | head -1) in $dest" >&2
