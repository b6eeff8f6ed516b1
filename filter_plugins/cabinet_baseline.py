"""Filters of the system_baseline role: the firewall built from the roles' declarations.

Every role that needs inbound traffic declares it in roles/<role>/meta/firewall.yml, a list of
{name, description, port, proto, open_on, from}: ``open_on`` is the inventory group whose hosts
accept it, ``from`` the groups (or addresses, CIDR, or ``any``) it may come from. The inventory
adds its own (system_baseline_firewall_extra_rules, which apply to the host they are set for).

- firewall_declaration_files(roles_dir): the roles' declaration files
- firewall_problems(declarations): one sentence per bad declaration (validated before any change)
- firewall_host_rules(declarations, host, groups, hostvars): the rules this host applies, with
  the addresses or names of their sources
- firewall_resolve(rules, resolved): names replaced by the addresses the host resolved, split
  into IPv4 and IPv6 for nftables
- listeners_not_covered(ss_lines, rules, closed): listening services no rule opens nor closes
- ssh_algorithm_problems(wanted, known, kind): names the release's OpenSSH does not know
- sshd_drift(effective, wanted): how sshd -T differs from the settings the role wants
- ssh_proof_argv(connection, login, command): a new SSH session's argv, for the anti-lockout proof
- integrity_exclude_problems(paths, protected, kept_below): what is wrong with the paths an
  inventory asks AIDE to leave out
- network_problems(values): what is not an address or a CIDR network in a list
- networks_only(values): the entries of a list that are addresses or CIDR networks
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence

from ansible.errors import AnsibleFilterError

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?$")
_GROUP = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_PROTOS = ("tcp", "udp")


# Digits, dots, colons and a prefix length only: Python's ipaddress also takes an IPv6 zone
# ("fe80::1%<anything>"), whose text would reach sshd's and fail2ban's files as it is.
_ADDRESS_TEXT = re.compile(r"[0-9A-Fa-f.:]+(/[0-9]{1,3})?")


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    if not isinstance(text, str) or not _ADDRESS_TEXT.fullmatch(text):
        return None
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def _strict(text: str) -> bool:
    """A network written as it is (10.1.0.0/16), not an address with a mask (10.1.2.3/16),
    which ip_network would silently widen."""
    if not isinstance(text, str) or not _ADDRESS_TEXT.fullmatch(text):
        return False
    try:
        ipaddress.ip_network(text, strict=True)
        return True
    except ValueError:
        return False


def _port(value: object) -> int | None:
    """The port as a number (a templated declaration gives a string of digits), or None."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        return None
    return value


def _sources(rule: Mapping) -> list[str]:
    """The rule's sources; a string may hold several, separated by spaces or commas (a
    declaration templated from an inventory list: "{{ sources | join(' ') }}")."""
    value = rule.get("from", [])
    if isinstance(value, str):
        return [s for s in re.split(r"[\s,]+", value) if s]
    return list(value) if isinstance(value, Sequence) else []


def firewall_problems(declarations: object) -> list[str]:
    """Why each declaration is unusable; empty when all are good."""
    if not isinstance(declarations, Sequence) or isinstance(declarations, (str, bytes)):
        return [f"expected a list of firewall rules, got {type(declarations).__name__}"]
    problems: list[str] = []
    for index, rule in enumerate(declarations):
        where = f"firewall rule #{index + 1}"
        if not isinstance(rule, Mapping):
            problems.append(f"{where}: expected a mapping with name, port, proto and from, got {rule!r}.")
            continue
        origin = rule.get("declared_in", "")
        name = rule.get("name")
        if isinstance(name, str) and name:
            where = f"firewall rule {name!r}" + (f" ({origin})" if origin else "")
        if not isinstance(name, str) or not _NAME.match(name):
            problems.append(f"{where}: name expected as a short lower-case word, got {name!r}.")
        port = _port(rule.get("port"))
        if port is None:
            problems.append(f"{where}: port expected as a number from 1 to 65535, got {rule.get('port')!r}.")
        proto = rule.get("proto", "tcp")
        if proto not in _PROTOS:
            problems.append(f"{where}: proto expected as tcp or udp, got {proto!r}.")
        open_on = rule.get("open_on", "all")
        if not isinstance(open_on, str) or not _GROUP.match(open_on):
            problems.append(f"{where}: open_on expected as one inventory group name, got {open_on!r}.")
        sources = rule.get("from")
        if sources is None or (not isinstance(sources, str)
                               and not (isinstance(sources, Sequence) and len(sources) > 0)):
            problems.append(f"{where}: from expected as 'any' or a non-empty list of groups, addresses or networks, "
                            f"got {sources!r}.")
            continue
        for source in _sources(rule):
            if not isinstance(source, str) or not source:
                problems.append(f"{where}: from holds {source!r}; expected a group, an address, a network or 'any'.")
            elif source != "any" and _network(source) is None and not _GROUP.match(source):
                problems.append(f"{where}: from holds {source!r}, neither 'any', an address, a network (CIDR) "
                                f"nor an inventory group name.")
            elif source != "any" and _network(source) is not None and not _strict(source):
                problems.append(f"{where}: from holds {source!r}, a network with host bits set: did you mean "
                                f"{_network(source)} (wider) or the address alone?")
    return problems


def firewall_declaration_files(roles_dir: str) -> list[str]:
    """Every roles/<role>/meta/firewall.yml under ``roles_dir`` (the project's roles folder),
    sorted. A filter, not the fileglob lookup: that one cannot match a folder pattern."""
    import glob  # noqa: PLC0415 - only here
    import os  # noqa: PLC0415
    return sorted(glob.glob(os.path.join(os.path.realpath(roles_dir), "*", "meta", "firewall.yml")))


def _address_of(host: str, hostvars: Mapping) -> str:
    variables = hostvars.get(host, {}) if isinstance(hostvars, Mapping) else {}
    for key in ("cabinet_address", "ansible_host"):
        value = variables.get(key) if isinstance(variables, Mapping) else None
        if isinstance(value, str) and value:
            return value
    return host


def firewall_host_rules(declarations: Sequence[Mapping], host: str, groups: Mapping, hostvars: Mapping) -> list[dict]:
    """The declarations that apply to ``host`` (a member of their ``open_on`` group), each with
    ``any`` (from anywhere) or ``sources``: the addresses or names its traffic may come from.
    A source group that is empty or unknown gives no address (never 'anywhere')."""
    rules: list[dict] = []
    for rule in declarations:
        target = rule.get("open_on", "all")
        if target != "all" and host not in (groups.get(target) or []):
            continue
        sources: list[str] = []
        any_source = False
        for source in _sources(rule):
            if source == "any":
                any_source = True
            elif _network(source) is not None:
                sources.append(source)
            else:
                sources.extend(_address_of(member, hostvars) for member in (groups.get(source) or [])
                               if member != host)
        rules.append({
            "name": rule["name"],
            "description": str(rule.get("description", "")).replace("\n", " ").strip(),
            "port": _port(rule["port"]),
            "proto": rule.get("proto", "tcp"),
            "any": any_source,
            "sources": sorted(set(sources)),
        })
    return sorted(rules, key=lambda r: (r["port"], r["proto"], r["name"]))


def firewall_names(rules: Sequence[Mapping]) -> list[str]:
    """The sources that are names, which the host must resolve."""
    names = {source for rule in rules for source in rule.get("sources", []) if _network(source) is None}
    bad = sorted(name for name in names if not _HOSTNAME.match(name))
    if bad:
        raise AnsibleFilterError(f"firewall sources that are neither addresses nor host names: {', '.join(bad)}")
    return sorted(names)


def firewall_resolve(rules: Sequence[Mapping], resolved: Mapping[str, Sequence[str]]) -> list[dict]:
    """Each rule with ``v4`` and ``v6``: its sources as networks, names replaced by what the
    host resolved (``resolved``: name -> addresses). A name that resolved to nothing is an
    error: the rule would silently open to nobody, or worse be read as open to all."""
    out: list[dict] = []
    for rule in rules:
        networks = []
        for source in rule.get("sources", []):
            net = _network(source)
            if net is not None:
                networks.append(net)
                continue
            addresses = resolved.get(source) or []
            if not addresses:
                raise AnsibleFilterError(f"firewall rule {rule['name']!r}: the host could not resolve {source!r}")
            networks.extend(ipaddress.ip_network(a, strict=False) for a in addresses)
        v4 = sorted({str(n) for n in networks if n.version == 4})
        v6 = sorted({str(n) for n in networks if n.version == 6})
        out.append({**rule, "v4": v4, "v6": v6})
    return out


def firewall_allows(rules: Sequence[Mapping], address: str, port: int, proto: str = "tcp") -> bool:
    """Whether the resolved rules let ``address`` reach ``port`` (the anti-lockout check of
    the current SSH session's client)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 link-local client carries its zone
    for rule in rules:
        if int(rule["port"]) != int(port) or rule.get("proto", "tcp") != proto:
            continue
        if rule.get("any"):
            return True
        for net in rule.get("v4", []) + rule.get("v6", []):
            if ip in ipaddress.ip_network(net, strict=False):
                return True
    return False


_CLIENT_PORTS = {("udp", 68), ("udp", 546)}  # DHCP clients: their replies are not new inbound traffic


def listeners_not_covered(ss_lines: Sequence[str], rules: Sequence[Mapping], closed: Sequence) -> list[str]:
    """The "port/proto" of services listening on a non-loopback address (``ss -H -l -n -t -u``)
    that no rule opens and that ``closed`` (ports closed on purpose: "3493/tcp", "5353/udp",
    or a bare number for both) does not list."""
    opened = {(r.get("proto", "tcp"), int(r["port"])) for r in rules}
    shut: set[tuple[str, int]] = set()
    for entry in closed:
        port, _, proto = str(entry).partition("/")
        for p in ([proto] if proto else ["tcp", "udp"]):
            shut.add((p, int(port)))
    found: set[tuple[str, int]] = set()
    for line in ss_lines:
        fields = line.split()
        if len(fields) < 5 or fields[0] not in ("tcp", "udp"):
            continue
        address, _, port = fields[4].rpartition(":")
        address = address.split("%", 1)[0].strip("[]")  # "[::1]%lo", "0.0.0.0%eth0"
        if address not in ("*", "0.0.0.0", "::"):
            try:
                if ipaddress.ip_address(address).is_loopback:
                    continue
            except ValueError:
                pass
        key = (fields[0], int(port))
        # An unconnected UDP socket on a port of the ephemeral range is a client's, or a
        # service's that picks a new one at each start (rpc.statd): not one to decide about.
        if fields[0] == "udp" and int(port) >= 32768:
            continue
        if key not in opened and key not in shut and key not in _CLIENT_PORTS:
            found.add(key)
    return [f"{port}/{proto}" for proto, port in sorted(found, key=lambda k: (k[1], k[0]))]


def _without_multiplexing(args: list[str]) -> list[str]:
    """ssh arguments without -M, -S and -O (a master, a control path, a control command):
    as options they would override the multiplexing the proof turns off first."""
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in ("-S", "-O"):
            skip = True
            continue
        if arg == "-M" or arg.startswith(("-S", "-O")) and len(arg) > 2:
            continue
        out.append(arg)
    return out


def ssh_proof_argv(connection: Mapping, login: str, command: Sequence[str]) -> list[str]:
    """The argv of a brand-new SSH session to the host as Ansible reaches it (``connection``:
    host, port, private_key_file, ssh_args, common_args, extra_args, host_key_checking), as
    ``login``, running ``command``. Multiplexing is off and comes first (ssh keeps the first
    value it reads): a ControlMaster left by Ansible's own connection would otherwise carry
    the session, and prove nothing about a new login."""
    import shlex  # noqa: PLC0415
    if not re.match(r"^[a-z_][a-z0-9_.-]*[$]?$", login):
        raise AnsibleFilterError(f"ssh_proof_argv: {login!r} is not an account name")
    argv = ["ssh", "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=20", "-o", "ServerAliveInterval=10"]
    if str(connection.get("host_key_checking", True)).strip().lower() in ("false", "no", "0", "off"):
        argv += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    if str(connection.get("port") or "").strip() not in ("", "None"):
        argv += ["-p", str(connection["port"]).strip()]
    if str(connection.get("private_key_file") or "").strip() not in ("", "None"):
        argv += ["-i", str(connection["private_key_file"]).strip()]
    for key in ("common_args", "ssh_args", "extra_args"):
        if str(connection.get(key) or "").strip() not in ("", "None"):
            argv += _without_multiplexing(shlex.split(str(connection[key])))
    return argv + ["-l", login, "--", str(connection["host"]), *command]


def sshd_drift(effective: Sequence[str], wanted: Mapping[str, str]) -> list[str]:
    """How ``sshd -T``'s output (``effective``, one "keyword value" a line; keywords that add
    up, such as port, on several lines) differs from ``wanted`` (keyword -> value)."""
    seen: dict[str, list[str]] = {}
    for line in effective:
        key, _, value = line.strip().partition(" ")
        if key:
            seen.setdefault(key.lower(), []).append(value.strip())
    drift = []
    for key, value in wanted.items():
        got = " ".join(seen.get(key.lower(), []))
        if got != str(value):
            drift.append(f"{key} is {got or 'unset'!s}, not {value}")
    return drift


def ssh_algorithm_problems(wanted: Sequence[str], known: Sequence[str], kind: str) -> list[str]:
    """Names in ``wanted`` that the host's OpenSSH does not list (``ssh -Q <kind>``)."""
    known_set = {line.strip() for line in known if line.strip()}
    return [name for name in wanted if name not in known_set]


_EXCLUDE_PATH = re.compile(r"(/[A-Za-z0-9._+@-]+)+")


def integrity_exclude_problems(paths: object, protected: Sequence[str], kept_below: Sequence[str]) -> list[str]:
    """One sentence per path AIDE may not leave out.

    A path must be absolute, plain (letters, digits, ``._+@-``; no ``.`` or ``..`` component,
    no trailing slash or line break). It may be neither ``protected`` nor under one of them
    (the system's folders: /etc, /usr...), nor above one of ``kept_below`` either (/var holds
    dpkg's database, /opt is where a practice's software lives and must stay watched itself)."""
    if isinstance(paths, (str, bytes)) or not isinstance(paths, Sequence):
        return [f"expected a list of absolute paths, got {paths!r}"]
    problems = []
    for path in paths:
        if not isinstance(path, str) or not _EXCLUDE_PATH.fullmatch(path) \
                or any(part in (".", "..") for part in path.split("/")):
            problems.append(f"{path!r} is not a plain absolute path (letters, digits, ._+@-; no . or .., no spaces)")
            continue
        for root in protected:
            if path == root or path.startswith(root.rstrip("/") + "/"):
                problems.append(f"{path} is {'one' if path == root else 'under one'} of the system folders AIDE is for ({root})")
                break
        else:
            above = [root for root in [*protected, *kept_below] if root == path or root.startswith(path + "/")]
            if above:
                problems.append(f"{path} would leave out {above[0]}, which AIDE is for")
    return problems


def network_problems(values: object) -> list[str]:
    """One sentence per entry of ``values`` that is not an IPv4 or IPv6 address or a CIDR
    network written as it is (10.1.0.0/16, not 10.1.2.3/16, which would silently widen)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        return [f"expected a list of addresses or CIDR networks, got {values!r}"]
    problems = []
    for value in values:
        if not isinstance(value, str) or not value.strip() or value != value.strip() or not _strict(value):
            reason = "host bits set" if isinstance(value, str) and _network(value) is not None and not _strict(value) \
                else "not an address or a CIDR network"
            problems.append(f"{value!r}: {reason}")
    return problems


def networks_only(values: object) -> list[str]:
    """The entries of ``values`` that are addresses or CIDR networks written as they are
    (the firewall's sources may also name groups, hosts or "any")."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        return []
    return [v for v in values if isinstance(v, str) and _strict(v)]


class FilterModule:
    def filters(self):
        return {
            "firewall_declaration_files": firewall_declaration_files,
            "firewall_problems": firewall_problems,
            "firewall_host_rules": firewall_host_rules,
            "firewall_names": firewall_names,
            "firewall_resolve": firewall_resolve,
            "firewall_allows": firewall_allows,
            "listeners_not_covered": listeners_not_covered,
            "ssh_algorithm_problems": ssh_algorithm_problems,
            "sshd_drift": sshd_drift,
            "ssh_proof_argv": ssh_proof_argv,
            "integrity_exclude_problems": integrity_exclude_problems,
            "network_problems": network_problems,
            "networks_only": networks_only,
        }
