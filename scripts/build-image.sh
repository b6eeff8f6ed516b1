#!/usr/bin/env bash
# Build (or reuse) the systemd base image of one Debian release for the test rig and the demo.
#   scripts/build-image.sh bookworm|trixie
# The image is tagged localhost/cabinet-debian:<suite> and labelled with the hash of its
# recipe (this file); it is rebuilt only when the recipe changes or the image is missing.
set -euo pipefail

suite=${1:?usage: build-image.sh bookworm|trixie}
case "$suite" in bookworm|trixie) ;; *) echo "unsupported suite: $suite (bookworm, trixie)" >&2; exit 2 ;; esac

mirror=${CABINET_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security_mirror=${CABINET_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
cache=${CABINET_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cabinet-hardening}
image=localhost/cabinet-debian:$suite
recipe=$( (cat "$0"; echo "$suite $mirror $security_mirror") | sha256sum | cut -c1-16)

current=$(podman image inspect --format '{{ index .Labels "cabinet.recipe" }}' "$image" 2>/dev/null || true)
if [ "$current" = "$recipe" ]; then
  echo "==> $image is up to date (recipe $recipe)"
  exit 0
fi

echo "==> Building $image with debootstrap (recipe $recipe); progress follows"
mkdir -p "$cache/debootstrap-$suite"
rootfs=$(mktemp -d "/var/tmp/cabinet-rootfs-$suite.XXXXXX")
trap 'rm -rf "$rootfs"' EXIT

include=systemd,systemd-sysv,dbus,python3,python3-apt,ca-certificates,iproute2,procps,less,gpg
debootstrap --variant=minbase --include="$include" --cache-dir="$cache/debootstrap-$suite" \
  "$suite" "$rootfs" "$mirror" 2>&1 | grep --line-buffered -E '^(I|W|E):' | sed -u "s/^/   [$suite] /"

cat > "$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror $suite main
deb $mirror $suite-updates main
deb $security_mirror $suite-security main
SOURCES
# Keep downloaded packages: the rig bind-mounts a per-release cache on /var/cache/apt/archives.
printf 'Binary::apt::APT::Keep-Downloaded-Packages "true";\nAPT::Keep-Downloaded-Packages "true";\n' \
  > "$rootfs/etc/apt/apt.conf.d/01cabinet-keep-debs"
printf 'APT::Install-Recommends "false";\n' > "$rootfs/etc/apt/apt.conf.d/01cabinet-no-recommends"
# A throwaway test container needs no fsync after every file dpkg unpacks (Debian's own
# container images do the same), nor man-db's index rebuilt after every install: both only
# cost time (issue 16). Lab images only; the roles never set these on a practice's machine.
printf 'force-unsafe-io\n' > "$rootfs/etc/dpkg/dpkg.cfg.d/01cabinet-unsafe-io"
printf 'man-db man-db/auto-update boolean false\n' | chroot "$rootfs" debconf-set-selections
# A container has no consoles, no kernel to tune, no fsck to run.
for unit in getty@tty1.service console-getty.service systemd-remount-fs.service \
            systemd-sysctl.service systemd-modules-load.service sys-kernel-config.mount \
            sys-kernel-debug.mount sys-kernel-tracing.mount systemd-firstboot.service; do
  ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
done
: > "$rootfs/etc/machine-id"
# A freshly installed Debian has package lists; so does the image (check mode needs them).
echo "   [$suite] apt-get update"
cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
chroot "$rootfs" apt-get update -q 2>&1 | sed -un "/^\(Get\|Err\|W:\|E:\)/s/^/   [$suite] /p"
# The installer takes security updates at install time; so does the image.
echo "   [$suite] apt-get upgrade (security and point-release updates)"
chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Use-Pty=0 upgrade 2>&1 \
  | sed -un "/^\(Inst\|Setting up\|W:\|E:\)/s/^/   [$suite] /p"
rm -f "$rootfs"/var/cache/apt/archives/*.deb "$rootfs/etc/resolv.conf"

echo "==> Importing $image"
previous=$(podman image inspect --format '{{ .Id }}' "$image" 2>/dev/null || :)
tar -C "$rootfs" -c . | podman import \
  --change 'CMD ["/sbin/init"]' \
  --change 'STOPSIGNAL SIGRTMIN+3' \
  --change "LABEL cabinet.recipe=$recipe" \
  --change "LABEL cabinet.suite=$suite" \
  - "$image" >/dev/null
# Drop the image this one replaces, unless a container still uses it.
if [ -n "$previous" ]; then podman rmi "$previous" >/dev/null 2>&1 || :; fi
echo "==> $image built"
