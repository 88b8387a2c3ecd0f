#!/usr/bin/env bash
# Provision a SoftHSM2 token for keyward. See --help.
set -euo pipefail
umask 077

prog=${0##*/}

usage() {
	cat <<EOF
Usage: $prog --dir DIR [options]

Create a SoftHSM2 configuration under DIR (if there is none yet) and initialise
a token in it for keyward, with fresh random user and SO PINs written to files.
PINs are never printed and never passed on a command line: they are typed into
softhsm2-util through a pseudo-terminal (util-linux script(1)).

Layout:
  DIR/softhsm2.conf   configuration (directories.tokendir = DIR/tokens)
  DIR/tokens/         token directory, one subdirectory per token
  DIR/pin             user PIN (default --pin-file), 0600, no trailing newline
  DIR/so-pin          SO PIN (default --so-pin-file), 0600, no trailing newline

On success the only output on stdout is the line to select the configuration:
  export SOFTHSM2_CONF=DIR/softhsm2.conf

Options:
  --dir DIR            directory for the configuration and tokens (required);
                       created 0700 if missing
  --label LABEL        token label, 1-32 of [A-Za-z0-9._-] (default: keyward)
  --pin-file FILE      where to write the new user PIN (default: DIR/pin);
                       the daemon reads it (systemd credential or 0600 file)
  --so-pin-file FILE   where to write the new SO PIN (default: DIR/so-pin);
                       move it offline after provisioning, the daemon never
                       needs it
  --owner USER         give DIR, the token directory and the user PIN file to
                       USER (the daemon's user: SoftHSM2 needs the token
                       directory owned by the user that runs it); the SO PIN
                       file stays with the invoking user. Needs root. To add
                       a token to a DIR given to USER before, run this as
                       USER (runuser -u USER -- $prog --dir DIR ...): DIR is
                       refused when another user owns it, who could point
                       root's writes anywhere.
  --module PATH        SoftHSM2 PKCS#11 module (default: \$KEYWARD_PKCS11_MODULE,
                       else the first existing libsofthsm2.so in the usual
                       Debian/Ubuntu places)
  --force              replace an existing token with the same label (its keys
                       are destroyed) and overwrite existing PIN files
  -h, --help           show this help

Exit status: 0 on success, 1 on any error, 2 on a usage error.
EOF
}

die() {
	printf '%s: %s\n' "$prog" "$*" >&2
	exit 1
}

usage_error() {
	printf '%s: %s (see --help)\n' "$prog" "$*" >&2
	exit 2
}

dir=
label=keyward
pin_file=
so_pin_file=
owner=
module=${KEYWARD_PKCS11_MODULE:-}
force=0

need_arg() {
	[[ $# -ge 2 && -n $2 ]] || usage_error "$1 needs a value"
}

while [[ $# -gt 0 ]]; do
	case $1 in
	--dir) need_arg "$@"; dir=$2; shift 2 ;;
	--dir=*) dir=${1#*=}; shift ;;
	--label) need_arg "$@"; label=$2; shift 2 ;;
	--label=*) label=${1#*=}; shift ;;
	--pin-file) need_arg "$@"; pin_file=$2; shift 2 ;;
	--pin-file=*) pin_file=${1#*=}; shift ;;
	--so-pin-file) need_arg "$@"; so_pin_file=$2; shift 2 ;;
	--so-pin-file=*) so_pin_file=${1#*=}; shift ;;
	--owner) need_arg "$@"; owner=$2; shift 2 ;;
	--owner=*) owner=${1#*=}; shift ;;
	--module) need_arg "$@"; module=$2; shift 2 ;;
	--module=*) module=${1#*=}; shift ;;
	--force) force=1; shift ;;
	-h | --help) usage; exit 0 ;;
	*) usage_error "unknown argument: $1" ;;
	esac
done

[[ -n $dir ]] || usage_error "--dir is required"
[[ $label =~ ^[A-Za-z0-9._-]{1,32}$ ]] || usage_error "--label must be 1-32 of [A-Za-z0-9._-]"

for tool in softhsm2-util script timeout od; do
	command -v "$tool" >/dev/null || die "$tool not found: install softhsm2 (apt-get install softhsm2; in the source tree, make deps does)"
done

if [[ -z $module ]]; then
	for m in /usr/lib/softhsm/libsofthsm2.so \
		/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
		/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so; do
		if [[ -f $m ]]; then module=$m; break; fi
	done
	[[ -n $module ]] || die "libsofthsm2.so not found: install softhsm2 (apt-get install softhsm2; in the source tree, make deps does)"
fi
[[ -f $module ]] || die "PKCS#11 module $module does not exist"

if [[ -n $owner ]]; then
	id -u "$owner" >/dev/null 2>&1 || die "--owner: no user $owner"
	if [[ $(id -u) -ne 0 && $(id -u "$owner") -ne $(id -u) ]]; then
		die "--owner $owner needs root"
	fi
fi

mkdir -p -- "$dir"
dir=$(cd -- "$dir" && pwd -P)
conf=$dir/softhsm2.conf
tokendir=$dir/tokens
pin_file=${pin_file:-$dir/pin}
so_pin_file=${so_pin_file:-$dir/so-pin}

# Everything below writes in DIR, as the invoking user (root, with --owner):
# a DIR another user owns (given away by an earlier --owner) lets that user
# swap its entries, the configuration's token directory among them, for
# links to anywhere, between any check here and root's write or chown.
me=$(id -u)
[[ $(stat -c %u -- "$dir") -eq $me ]] ||
	die "$dir is owned by $(stat -c %U -- "$dir"), not by the invoking user: run this as that user (runuser -u $(stat -c %U -- "$dir") -- $prog ...)"
# So is a parent that another user may write (not sticky): that user can
# rename DIR and put a link in its place.
parent=$(dirname -- "$dir")
pmode=$(stat -c %a -- "$parent")
puid=$(stat -c %u -- "$parent")
if [[ $puid -ne 0 && $puid -ne $me ]] || { ((8#$pmode & 8#022)) && ! ((8#$pmode & 8#1000)); }; then
	die "$parent (mode $pmode, owner $(stat -c %U -- "$parent")) lets another user replace $dir: run this as that user (runuser -u $(stat -c %U -- "$parent") -- $prog ...), or use a DIR elsewhere"
fi
for p in "$conf" "$tokendir"; do
	[[ ! -L $p ]] || die "$p is a symbolic link: not written by $prog; remove it"
done

if [[ -e $conf ]]; then
	# Reuse an existing configuration (another token in the same store), and
	# its token directory, which must be the one this script writes.
	[[ $(stat -c %u -- "$conf") -eq $me ]] || die "$conf is not owned by the invoking user: not written by $prog for it"
	have=$(sed -n 's/^[[:space:]]*directories\.tokendir[[:space:]]*=[[:space:]]*//p' "$conf" | tail -n 1)
	have=${have%"${have##*[![:space:]]}"}
	[[ $have == "$tokendir" ]] || die "$conf sets directories.tokendir to ${have:-nothing}, not $tokendir: not written by $prog; refusing to use it"
else
	cat >"$conf" <<EOF
# SoftHSM2 configuration for keyward, written by $prog.
directories.tokendir = $tokendir
objectstore.backend = file
log.level = ERROR
slots.mechanisms = ALL
EOF
fi
mkdir -p -- "$tokendir"
chmod 0700 -- "$dir" "$tokendir"

export SOFTHSM2_CONF=$conf

# Labels of initialised tokens, one a line.
token_labels() {
	softhsm2-util --module "$module" --show-slots |
		sed -n 's/^[[:space:]]*Label:[[:space:]]*//p' | sed 's/[[:space:]]*$//' | grep -v '^$' || true
}

exists=0
if token_labels | grep -qxF -- "$label"; then
	exists=1
	[[ $force -eq 1 ]] || die "a token labelled $label already exists in $tokendir (use --force to replace it and destroy its keys)"
fi
[[ $pin_file != "$so_pin_file" ]] || usage_error "--pin-file and --so-pin-file must differ"
for f in "$pin_file" "$so_pin_file"; do
	if [[ -e $f && $force -ne 1 ]]; then
		die "$f already exists (use --force to overwrite it)"
	fi
done
if [[ $exists -eq 1 ]]; then
	softhsm2-util --module "$module" --delete-token --token "$label" >/dev/null ||
		die "could not delete the existing token $label"
fi

# 16 random bytes each, hex. Kept in unexported shell variables only.
random_pin() {
	od -An -vtx1 -N16 /dev/urandom | tr -d ' \n'
}
user_pin=$(random_pin)
so_pin=$(random_pin)
[[ ${#user_pin} -eq 32 && ${#so_pin} -eq 32 ]] || die "could not read /dev/urandom"

# Create each PIN file anew, private from its first byte (umask 077), and
# write through the descriptor that opened it, only once that descriptor
# is shown to be a regular file: noclobber refuses an existing regular file
# and a dangling link (O_EXCL), but opens anything else put at the path
# meanwhile (a link to a FIFO someone reads), which the check then refuses.
write_secret() {
	local file=$1 value=$2
	rm -f -- "$file"
	(umask 077 && set -C && exec 3>"$file" && [[ -f /proc/self/fd/3 && ! -L $file ]] && printf '%s' "$value" >&3) 2>/dev/null ||
		die "could not create $file as a new regular file (something was put at that path meanwhile?)"
}

# softhsm2-util reads PINs only from a terminal (without --pin/--so-pin, which
# would put them on argv). script(1) gives it one; its output is captured and
# never shown as is, because the terminal may echo the PINs back before
# softhsm2-util turns echo off. printf is a bash builtin: no argv exposure.
# softhsm2-util loops forever on EOF at a prompt, hence the timeout.
cmd="softhsm2-util --init-token --free --label $(printf %q "$label") --module $(printf %q "$module")"
set +e
out=$(printf '%s\n%s\n%s\n%s\n' "$so_pin" "$so_pin" "$user_pin" "$user_pin" |
	SHELL=/bin/bash timeout 60 script -qec "$cmd" /dev/null 2>&1)
rc=$?
set -e
if [[ $rc -ne 0 ]]; then
	out=${out//"$so_pin"/<so-pin>}
	out=${out//"$user_pin"/<pin>}
	printf '%s\n' "$out" | tr -d '\r' | grep -vx -e '<so-pin>' -e '<pin>' >&2 || true
	die "softhsm2-util --init-token failed (exit $rc)"
fi
unset out

token_labels | grep -qxF -- "$label" || die "token $label not found after initialisation"

write_secret "$pin_file" "$user_pin"
write_secret "$so_pin_file" "$so_pin"
unset user_pin so_pin

if [[ -n $owner ]]; then
	# DIR last: until then only the invoking user can change its entries.
	# -h: a link is never followed, should one be there.
	chown -R -h -- "$owner:" "$tokendir"
	chown -h -- "$owner:" "$conf" "$pin_file"
	chown -h -- "$owner:" "$dir"
fi

printf '%s: token %s ready in %s (user PIN in %s, SO PIN in %s)\n' \
	"$prog" "$label" "$tokendir" "$pin_file" "$so_pin_file" >&2
printf 'export SOFTHSM2_CONF=%q\n' "$conf"
