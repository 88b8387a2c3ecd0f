#!/usr/bin/env bash
# Install the Debian packages given as arguments unless all are installed.
# Non-interactive; as root, or through passwordless sudo. Quiet when there is
# nothing to do.
set -euo pipefail

missing=()
for p in "$@"; do
	status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
	[[ $status == "install ok installed" ]] || missing+=("$p")
done
[[ ${#missing[@]} -gt 0 ]] || exit 0

if ! command -v apt-get >/dev/null; then
	echo "ensure-packages: missing ${missing[*]} and no apt-get: install them by hand" >&2
	exit 1
fi
sudo=()
if [[ $(id -u) -ne 0 ]]; then
	command -v sudo >/dev/null || { echo "ensure-packages: missing ${missing[*]}: run as root" >&2; exit 1; }
	sudo=(sudo -n)
fi

echo "ensure-packages: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt_install() {
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}
if ! apt_install; then
	# Usually a stale or absent package list (fresh containers have none).
	"${sudo[@]}" apt-get update -qq >/dev/null
	apt_install
fi
