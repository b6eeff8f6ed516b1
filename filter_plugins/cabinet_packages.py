"""Which of a task's packages a host lacks, from one dpkg listing a play (issue 15).

An idempotent re-run spent a sixth of its time in apt tasks that found every package there:
the apt module opens the package cache each time (1 to 2.5 s a task on the demo). The preflight
role lists the installed packages once a play (dpkg-query, registered, so never taken from an
inventory or a fact cache), and each install task runs apt only when this filter finds a
package missing. A package the listing cannot vouch for (a version pin, an architecture, a
wildcard, a .deb path) counts as missing, so apt decides as before.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ansible.errors import AnsibleFilterError

_PLAIN = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")


def installed_packages(dpkg_lines: Sequence[str]) -> set[str]:
    """Names dpkg reports installed, from `dpkg-query --show --showformat='${db:Status-Abbrev} ${Package}\\n'`.

    The abbreviation's second letter is the current state: i (installed) only; c (config files
    left), U, F, H, W, t (half or pending) and n (not installed) do not count."""
    names = set()
    for line in dpkg_lines:
        status, _, name = str(line).partition(" ")
        name = name.strip()
        if len(status) >= 2 and status[1] == "i" and status[2:] in ("", " ") and _PLAIN.match(name):
            names.add(name)
    return names


def packages_missing(names, dpkg_lines) -> list[str]:
    """The names of `names` not installed according to `dpkg_lines` (all of them if no listing)."""
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, Sequence):
        raise AnsibleFilterError(f"packages_missing expects a list of package names, got {type(names).__name__}")
    if dpkg_lines is None or isinstance(dpkg_lines, str) or not isinstance(dpkg_lines, Sequence):
        return [str(n) for n in names]
    present = installed_packages(dpkg_lines)
    return [str(n) for n in names if not (_PLAIN.match(str(n)) and str(n) in present)]


class FilterModule:
    """cabinet-hardening package filters."""

    def filters(self) -> dict[str, object]:
        return {"packages_missing": packages_missing}
