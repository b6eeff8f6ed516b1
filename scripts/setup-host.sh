#!/usr/bin/env bash
# Host set-up for the test rig and the demo: container tooling and its configuration.
# Idempotent: installs only what is missing, rewrites containers.conf only when it differs.
set -euo pipefail

say() { printf '==> %s\n' "$*"; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
  die "the test rig needs root (rootful podman, debootstrap). Run as root, or install by hand:
  apt-get install podman runc netavark aardvark-dns iptables debootstrap chromium testssl.sh nftables npm
  libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core poppler-utils
and copy scripts/containers.conf to /etc/containers/containers.conf."
fi
if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-query >/dev/null 2>&1; then
  die "this host has no apt/dpkg. The rig is supported on Debian 12 hosts. Install by hand:
  podman (with runc as runtime), netavark, aardvark-dns, debootstrap, and the settings of
  scripts/containers.conf in /etc/containers/containers.conf."
fi

# chromium and testssl.sh: the website practice's browser and TLS checks (Playwright drives
# Debian's chromium; nothing downloads a browser). npm fetches the consent library and axe-core
# on the controller; a host that already has an npm (from another packaging of Node.js) keeps it.
# nftables: the unit tests check the firewall the baseline renders with nft -c (the package
# does not enable its service). The compliance report: WeasyPrint (pip) draws its PDF with
# pango and DejaVu fonts; poppler-utils' pdftotext lets the tests read the PDF back.
packages=(podman runc netavark aardvark-dns iptables debootstrap chromium testssl.sh nftables
          libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core poppler-utils)
command -v npm >/dev/null 2>&1 || packages+=(npm)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  say "Installing host packages: ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  say "Host packages present: ${packages[*]}"
fi

here=$(cd "$(dirname "$0")" && pwd)
install -d -m 0755 /etc/containers
if ! cmp -s "$here/containers.conf" /etc/containers/containers.conf; then
  say "Writing /etc/containers/containers.conf (runc, netavark, lower ulimits)"
  install -m 0644 "$here/containers.conf" /etc/containers/containers.conf
fi

# The ANSSI BP-028 content of ComplianceAsCode for Debian 12 (ssg-debian12-ds.xml), which only
# Debian 13's ssg-debian package ships: the system_baseline tests evaluate its profiles with
# OpenSCAP on the lab's hosts. The .deb is pinned by its SHA-256 and kept in the cache.
ssg_version=0.1.76-1
ssg_sha256=f6880719015c16e8e221bc2503c0e5a9f83d6a09fc6f9292d3522e46bf4fc9d7
cache=${CABINET_CACHE_DIR:-$HOME/.cache/cabinet-hardening}/anssi
ds=$cache/ssg-debian12-ds-$ssg_version.xml
if [ ! -s "$ds" ]; then
  say "Fetching the ANSSI BP-028 content (ssg-debian $ssg_version, from Debian 13)"
  install -d -m 0755 "$cache"
  deb=$cache/ssg-debian_${ssg_version}_all.deb
  if ! printf '%s  %s\n' "$ssg_sha256" "$deb" | sha256sum -c --status 2>/dev/null; then
    curl -fsS --retry 3 -o "$deb.part" \
      "http://deb.debian.org/debian/pool/main/s/scap-security-guide/ssg-debian_${ssg_version}_all.deb" \
      || die "cannot download ssg-debian $ssg_version from deb.debian.org (trixie's pool); put the .deb in $cache by hand"
    printf '%s  %s\n' "$ssg_sha256" "$deb.part" | sha256sum -c --status \
      || die "ssg-debian_${ssg_version}_all.deb does not have the pinned SHA-256; refusing it"
    mv "$deb.part" "$deb"
  fi
  tmp=$(mktemp -d)
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" ./usr/share/xml/scap/ssg/content/ssg-debian12-ds.xml
  mv "$tmp/usr/share/xml/scap/ssg/content/ssg-debian12-ds.xml" "$ds"
  rm -rf "$tmp"
else
  say "ANSSI BP-028 content present: $ds"
fi
