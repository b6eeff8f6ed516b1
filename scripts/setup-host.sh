#!/usr/bin/env bash
# Host set-up for the test rig and the demo: container tooling and its configuration.
# Idempotent: installs only what is missing, rewrites containers.conf only when it differs.
set -euo pipefail

say() { printf '==> %s\n' "$*"; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
  die "the test rig needs root (rootful podman, debootstrap). Run as root, or install by hand:
  apt-get install podman runc netavark aardvark-dns iptables debootstrap chromium testssl.sh npm
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
packages=(podman runc netavark aardvark-dns iptables debootstrap chromium testssl.sh)
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
