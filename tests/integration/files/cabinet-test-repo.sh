#!/bin/bash
# Lab helper for tests/integration/test_auto_updates.py: signed local apt repositories with a
# throwaway GPG key. Copied to and run on a lab host only.
#   cabinet-test-repo.sh init
#   cabinet-test-repo.sh publish trusted|untrusted|security|debian-security PACKAGE VERSION [failing]
# trusted: origin CabinetTest; security: origin CabinetTest, suite cabinet-test-security (a
# "-security" archive, as the pending-update check knows them); untrusted: CabinetUntrusted;
# debian-security: what Debian's security archive says of itself (Origin Debian, Label
# Debian-Security, Suite and Codename <codename>-security), so the role's real origin pattern
# must match it. Only listed in apt's sources between "security-source on" and "off".
#   cabinet-test-repo.sh security-source on|off
#   cabinet-test-repo.sh clean
set -euo pipefail
top=/srv/cabinet-test-repo
export GNUPGHOME=$top/gnupg

codename=$(. /etc/os-release && echo "$VERSION_CODENAME")

index() {   # index REPO ORIGIN [SUITE [LABEL]]
  local repo=$1 origin=$2 suite=${3:-cabinet-test} label=${4:-$2}
  (cd "$top/$repo" &&
   apt-ftparchive packages . > Packages &&
   apt-ftparchive -o "APT::FTPArchive::Release::Origin=$origin" -o "APT::FTPArchive::Release::Label=$label" \
     -o "APT::FTPArchive::Release::Suite=$suite" -o "APT::FTPArchive::Release::Codename=$suite" \
     release . > Release &&
   rm -f InRelease && gpg --batch --yes --clearsign -o InRelease Release)
}

case $1 in
  init)
    command -v apt-ftparchive >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q apt-utils >/dev/null
    command -v gpg-agent >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q gpg gpg-agent >/dev/null
    rm -rf "$top"; mkdir -p "$top/trusted" "$top/untrusted" "$top/security" "$top/debian-security" "$GNUPGHOME"
    chmod 700 "$GNUPGHOME"
    gpg --batch --pinentry-mode loopback --passphrase '' --quick-gen-key 'cabinet-hardening test repository <test@cabinet.invalid>' rsa2048 sign never
    gpg --export > "$top/key.gpg"
    chmod -R a+rX "$top"; chmod 700 "$GNUPGHOME"
    index trusted CabinetTest; index untrusted CabinetUntrusted; index security CabinetTest cabinet-test-security
    index debian-security Debian "$codename-security" Debian-Security
    cat > /etc/apt/sources.list.d/cabinet-test.list <<LIST
deb [signed-by=$top/key.gpg] file:$top/trusted ./
deb [signed-by=$top/key.gpg] file:$top/untrusted ./
deb [signed-by=$top/key.gpg] file:$top/security ./
LIST
    ;;
  publish)
    repo=$2 pkg=$3 version=$4 failing=${5:-}
    build=$(mktemp -d); mkdir -p "$build/DEBIAN" "$build/usr/share/doc/$pkg"
    echo "$pkg $version" > "$build/usr/share/doc/$pkg/VERSION"
    cat > "$build/DEBIAN/control" <<CONTROL
Package: $pkg
Version: $version
Architecture: all
Maintainer: cabinet-hardening tests <test@cabinet.invalid>
Priority: optional
Section: misc
Description: cabinet-hardening test package
CONTROL
    if [ "$failing" = failing ]; then
      printf '#!/bin/sh\necho "cabinet test: this postinst fails on purpose" >&2\nexit 1\n' > "$build/DEBIAN/postinst"
      chmod 755 "$build/DEBIAN/postinst"
    fi
    dpkg-deb --root-owner-group --build "$build" "$top/$repo/${pkg}_${version}_all.deb" >/dev/null
    rm -rf "$build"
    case $repo in
      trusted) index trusted CabinetTest ;;
      untrusted) index untrusted CabinetUntrusted ;;
      security) index security CabinetTest cabinet-test-security ;;
      debian-security) index debian-security Debian "$codename-security" Debian-Security ;;
    esac
    chmod -R a+rX "$top/$repo"
    ;;
  security-source)
    if [ "$2" = on ]; then
      echo "deb [signed-by=$top/key.gpg] file:$top/debian-security ./" > /etc/apt/sources.list.d/cabinet-test-security.list
    else
      rm -f /etc/apt/sources.list.d/cabinet-test-security.list
    fi
    ;;
  clean)
    for p in $(dpkg-query -W -f '${Package}\n' 'cabinet-test-*' 2>/dev/null); do dpkg --purge --force-all "$p" >/dev/null 2>&1 || :; done
    rm -rf "$top" /etc/apt/sources.list.d/cabinet-test.list /etc/apt/sources.list.d/cabinet-test-security.list
    ;;
  *) echo "usage: $0 init|publish|security-source|clean" >&2; exit 2 ;;
esac
