#!/usr/bin/env bash
# Makes a minimal Debian root file system (debootstrap --variant=minbase) in DIR, for the test
# that installs the built .deb packages into a clean root. The suite and the mirror are this
# machine's own (from /etc/os-release and its apt sources), so nothing else is reached. A DIR
# that already holds a finished root is kept.
#
#   dist/rootfs.sh DIR
set -euo pipefail

die() {
    echo "dist/rootfs.sh: $*" >&2
    exit 1
}

[ $# -eq 1 ] || die "usage: dist/rootfs.sh DIR"
dir=$1
if [ -f "$dir/.kokoa-rootfs-done" ]; then
    echo "dist/rootfs.sh: $dir is ready"
    exit 0
fi
[ "$(id -u)" -eq 0 ] || die "debootstrap needs root"
command -v debootstrap >/dev/null || die "debootstrap not installed (apt-get install debootstrap)"

# shellcheck disable=SC1091
suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[ -n "$suite" ] || die "no VERSION_CODENAME in /etc/os-release"
# The first Debian archive this machine's apt uses (deb822 .sources or one-line lists).
mirror=$(
    {
        grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources || true
        grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
            sed 's/\[[^]]*\]//' || true
    } | awk '{ print $2 }' | { grep -v -e security -e updates || true; } | head -n 1
)
[ -n "$mirror" ] || die "no Debian mirror found in this machine's apt sources"

rm -rf "$dir"
mkdir -p "$dir"
echo "dist/rootfs.sh: debootstrap --variant=minbase $suite into $dir"
debootstrap --variant=minbase "$suite" "$dir" "$mirror" >"$dir.log" 2>&1 ||
    die "debootstrap failed; see $dir.log"
rm -rf "$dir/var/cache/apt/archives/"*.deb
touch "$dir/.kokoa-rootfs-done"
echo "dist/rootfs.sh: $dir is ready ($(du -sh "$dir" | cut -f1))"
