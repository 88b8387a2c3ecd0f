#!/usr/bin/env bash
# Build keyward's container image from this machine's files, without a
# registry: keywardd and keyward (built here, cgo), SoftHSM2's module and
# softhsm2-util, and the shared libraries they load, copied from the Debian
# packages installed on this machine (with those packages' copyright files),
# into a root filesystem that `podman import` turns into an image.
#
#   container/build-image.sh [IMAGE]        (default localhost/keyward:dev)
#
# $BIN_DIR: take keywardd, keywardd-admin and keyward from there instead of building them.
# $PODMAN: the podman command (default podman).
#
# The image runs `keywardd --dev --socket /run/keyward/keyward.sock` as root:
# a fresh SoftHSM2 token in the container's /tmp, every operation allowed to
# uid 0. /run/keyward is a volume: bind-mount a host directory there and
# clients on the host reach the daemon through the socket in it.
set -euo pipefail
cd "$(dirname "$0")/.."

image=${1:-localhost/keyward:dev}
podman=${PODMAN:-podman}
command -v "$podman" >/dev/null || { echo "build-image: $podman not found (make deps installs podman)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs

if [[ -z ${BIN_DIR:-} ]]; then
	BIN_DIR=$work/bin
	CGO_ENABLED=1 go build -trimpath -o "$BIN_DIR/" ./cmd/keywardd ./cmd/keywardd-admin ./cmd/keyward
fi

module=$(readlink -f /usr/lib/softhsm/libsofthsm2.so)
util=$(command -v softhsm2-util)
[[ -f $module && -n $util ]] || { echo "build-image: SoftHSM2 is not installed (make deps installs softhsm2)" >&2; exit 1; }

# Debian's merged /usr: /bin, /lib and /lib64 are links into /usr.
mkdir -p "$root"/usr/{bin,lib,lib64} "$root"/{etc,tmp,run/keyward,root}
ln -s usr/bin "$root/bin"
ln -s usr/lib "$root/lib"
ln -s usr/lib64 "$root/lib64"
ln -s bin "$root/usr/sbin"
chmod 1777 "$root/tmp"
chmod 0755 "$root/run/keyward"
chmod 0700 "$root/root"

# put copies FILE to its path in the image (under /usr for /lib and /bin) and
# remembers the Debian package it came from.
packages=()
put() {
	local src=$1 dst=${2:-$1}
	case $dst in
	/lib/* | /lib64/* | /bin/*) dst=/usr$dst ;;
	esac
	mkdir -p "$root$(dirname "$dst")"
	cp -L "$src" "$root$dst"
	local pkg
	if pkg=$(dpkg -S "$(readlink -f "$src")" 2>/dev/null || dpkg -S "$src" 2>/dev/null); then
		packages+=("${pkg%%:*}")
	fi
}

install -m 0755 "$BIN_DIR/keywardd" "$root/usr/bin/keywardd"
install -m 0755 "$BIN_DIR/keywardd-admin" "$root/usr/bin/keywardd-admin"
install -m 0755 "$BIN_DIR/keyward" "$root/usr/bin/keyward"
put "$util" /usr/bin/softhsm2-util
put "$module"
# keywardd looks for the module where Debian links it.
mkdir -p "$root/usr/lib/softhsm"
ln -s "../${module#/usr/lib/}" "$root/usr/lib/softhsm/libsofthsm2.so"
# Every shared library the four load, and the dynamic loader.
for f in "$BIN_DIR/keywardd" "$BIN_DIR/keywardd-admin" "$BIN_DIR/keyward" "$module" "$util"; do
	ldd "$f" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'
done | sort -u > "$work/libs"
while read -r lib; do put "$lib"; done < "$work/libs"

# Owners of the copied files: their copyright notices go along.
for pkg in $(printf '%s\n' "${packages[@]}" | sort -u); do
	if [[ -f /usr/share/doc/$pkg/copyright ]]; then
		mkdir -p "$root/usr/share/doc/$pkg"
		cp "/usr/share/doc/$pkg/copyright" "$root/usr/share/doc/$pkg/"
	fi
done

printf 'root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"

tar --numeric-owner --owner=0 --group=0 -C "$root" -cf "$work/rootfs.tar" .
"$podman" import --quiet \
	--change 'ENV KEYWARD_SOCKET=/run/keyward/keyward.sock' \
	--change 'VOLUME /run/keyward' \
	--change 'WORKDIR /root' \
	--change 'STOPSIGNAL SIGTERM' \
	--change 'CMD ["/usr/bin/keywardd", "--dev", "--socket", "/run/keyward/keyward.sock"]' \
	--message "keyward: keywardd --dev on SoftHSM2" \
	"$work/rootfs.tar" "$image" >/dev/null
echo "$image"
