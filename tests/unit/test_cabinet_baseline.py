"""system_baseline's firewall logic (filter_plugins/cabinet_baseline.py) and its templates:
declarations checked, turned into this host's rules, resolved, and rendered into a ruleset
that nft accepts; the rollback command's argument handling."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import jinja2
import pytest
import yaml
from ansible.errors import AnsibleFilterError
from cabinet_baseline import (firewall_allows, firewall_declaration_files, firewall_host_rules, firewall_names,
                              firewall_problems, firewall_resolve, listeners_not_covered, ssh_algorithm_problems,
                              integrity_exclude_problems, network_problems, ssh_proof_argv, sshd_drift)

ROOT = Path(__file__).resolve().parents[2]
GROUPS = {"all": ["srv", "pc1", "pc2", "offsite"], "ups_server": ["srv"], "ups_clients": ["pc1", "pc2"],
          "backup_clients": ["srv"], "backup_offsite": ["offsite"], "website_hosts": []}
HOSTVARS = {"srv": {"ansible_host": "192.0.2.10"}, "pc1": {"ansible_host": "pc1.cabinet.lan"},
            "pc2": {"cabinet_address": "192.0.2.12", "ansible_host": "pc2.cabinet.lan"},
            "offsite": {"ansible_host": "2001:db8::20"}}


def role_declarations(inventory: dict | None = None) -> list[dict]:
    """Every role's meta/firewall.yml, rendered as the baseline renders it (with ``inventory``)."""
    out = []
    for path in map(Path, firewall_declaration_files(str(ROOT / "roles" / "system_baseline" / ".."))):
        text = jinja2.Environment().from_string(path.read_text(encoding="utf-8")).render(**(inventory or {}))
        out += [{**rule, "declared_in": path.parent.parent.name} for rule in yaml.safe_load(text)]
    return out


SSH = {"name": "ssh", "description": "SSH", "port": "22", "proto": "tcp", "open_on": "all", "from": ["198.51.100.0/24"]}


# ----------------------------------------------------------------------------- declarations
def test_every_role_declaration_is_valid():
    declarations = role_declarations()
    assert {d["declared_in"] for d in declarations} == {"backup", "ups_monitoring", "website_privacy"}
    assert firewall_problems(declarations + [SSH]) == []


@pytest.mark.parametrize("rule, words", [
    ({"name": "x", "port": 0, "from": "any"}, "port expected"),
    ({"name": "x", "port": 65536, "from": "any"}, "port expected"),
    ({"name": "x", "port": True, "from": "any"}, "port expected"),
    ({"name": "x", "port": "22 accept", "from": "any"}, "port expected"),
    ({"name": "x", "port": 22, "proto": "icmp", "from": "any"}, "proto expected"),
    ({"name": "X Y", "port": 22, "from": "any"}, "name expected"),
    ({"name": "x", "port": 22}, "from expected"),
    ({"name": "x", "port": 22, "from": []}, "from expected"),
    ({"name": "x", "port": 22, "from": ["10.0.0.0/33"]}, "neither 'any'"),
    ({"name": "x", "port": 22, "from": ["192.0.2.1 } accept"]}, "neither 'any'"),
    ({"name": "x", "port": 22, "from": ["any"], "open_on": "a b"}, "open_on expected"),
    ({"name": "x", "port": 22, "from": ["10.1.2.3/8"]}, "host bits set"),
    ({"name": "x", "port": 22, "from": "10.0.0.0/8 10.1.2.3/16"}, "host bits set"),
    ("port 22", "expected a mapping"),
])
def test_bad_declarations_are_named(rule, words):
    problems = firewall_problems([rule])
    assert len(problems) == 1 and words in problems[0], problems


def test_a_declaration_list_that_is_not_a_list():
    assert "expected a list" in firewall_problems("ssh")[0]


# ----------------------------------------------------------------------------- rules for a host
def test_the_ups_server_opens_nut_to_its_clients_only():
    rules = firewall_host_rules(role_declarations() + [SSH], "srv", GROUPS, HOSTVARS)
    nut = next(r for r in rules if r["name"] == "nut")
    assert nut["port"] == 3493 and not nut["any"]
    assert nut["sources"] == ["192.0.2.12", "pc1.cabinet.lan"]  # cabinet_address first, then ansible_host
    assert [r["name"] for r in rules] == ["ssh", "nut"]  # by port; no website, not an off-site server


def test_a_host_outside_a_declaration_group_gets_no_rule():
    rules = firewall_host_rules(role_declarations() + [SSH], "pc1", GROUPS, HOSTVARS)
    assert [r["name"] for r in rules] == ["ssh"]


def test_the_offsite_server_takes_its_sources_from_its_own_variable():
    """Shared by every client: never one client inventory's backup_clients (whose next run
    would shut the other clients' practices out)."""
    rules = firewall_host_rules(role_declarations() + [SSH], "offsite", GROUPS, HOSTVARS)
    offsite = next(r for r in rules if r["name"] == "backup-offsite-ssh")
    assert offsite["any"] and offsite["sources"] == []
    listed = role_declarations({"backup_offsite_allowed_sources": ["203.0.113.7", "198.51.100.0/24"]})
    offsite = next(r for r in firewall_host_rules(listed, "offsite", GROUPS, HOSTVARS) if r["name"] == "backup-offsite-ssh")
    assert not offsite["any"] and offsite["sources"] == ["198.51.100.0/24", "203.0.113.7"]
    assert firewall_problems(listed) == []


def test_an_empty_or_unknown_source_group_opens_to_nobody():
    rules = firewall_host_rules([{"name": "x", "port": 80, "open_on": "all", "from": ["website_hosts", "nosuchgroup"]}],
                                "srv", GROUPS, HOSTVARS)
    assert rules[0]["sources"] == [] and not rules[0]["any"]
    resolved = firewall_resolve(rules, {})
    assert resolved[0]["v4"] == [] and resolved[0]["v6"] == []


def test_a_host_is_not_its_own_source():
    rules = firewall_host_rules([{"name": "x", "port": 80, "open_on": "all", "from": ["ups_server"]}], "srv", GROUPS, HOSTVARS)
    assert rules[0]["sources"] == []


# ----------------------------------------------------------------------------- resolution
def test_names_are_resolved_and_split_by_family():
    rules = firewall_host_rules(role_declarations() + [SSH], "srv", GROUPS, HOSTVARS)
    assert firewall_names(rules) == ["pc1.cabinet.lan"]
    resolved = firewall_resolve(rules, {"pc1.cabinet.lan": ["192.0.2.11", "2001:db8::11"]})
    nut = next(r for r in resolved if r["name"] == "nut")
    assert nut["v4"] == ["192.0.2.11/32", "192.0.2.12/32"] and nut["v6"] == ["2001:db8::11/128"]


def test_a_name_that_resolves_to_nothing_stops():
    rules = firewall_host_rules(role_declarations(), "srv", GROUPS, HOSTVARS)
    with pytest.raises(AnsibleFilterError, match="could not resolve 'pc1.cabinet.lan'"):
        firewall_resolve(rules, {"pc1.cabinet.lan": []})


def test_a_source_that_is_no_host_name_stops():
    with pytest.raises(AnsibleFilterError, match="neither addresses nor host names"):
        firewall_names([{"name": "x", "sources": ["pc1; accept"]}])


def test_the_current_ssh_client_check():
    rules = firewall_resolve(firewall_host_rules([SSH], "srv", GROUPS, HOSTVARS), {})
    assert firewall_allows(rules, "198.51.100.7", 22)
    assert not firewall_allows(rules, "203.0.113.7", 22)
    assert not firewall_allows(rules, "198.51.100.7", 2222)
    anywhere = firewall_resolve(firewall_host_rules([{**SSH, "from": "any"}], "srv", GROUPS, HOSTVARS), {})
    assert firewall_allows(anywhere, "203.0.113.7", 22)


def test_a_link_local_client_with_its_zone():
    rules = firewall_resolve(firewall_host_rules([{**SSH, "from": ["fe80::/10"]}], "srv", GROUPS, HOSTVARS), {})
    assert firewall_allows(rules, "fe80::1%eth0", 22)


def test_sources_in_one_string_are_split():
    rules = firewall_host_rules([{**SSH, "from": "198.51.100.0/24, 203.0.113.7"}], "srv", GROUPS, HOSTVARS)
    assert rules[0]["sources"] == ["198.51.100.0/24", "203.0.113.7"]


# ----------------------------------------------------------------------------- listeners
SS = """tcp   LISTEN 0      128          0.0.0.0:22         0.0.0.0:*
tcp   LISTEN 0      50           0.0.0.0:445        0.0.0.0:*
tcp   LISTEN 0      100        127.0.0.1:25         0.0.0.0:*
tcp   LISTEN 0      100            [::1]:25            [::]:*
tcp   LISTEN 0      4096               *:3493             *:*
udp   UNCONN 0      0      0.0.0.0%eth0:68         0.0.0.0:*
udp   UNCONN 0      0            0.0.0.0:5353       0.0.0.0:*
udp   UNCONN 0      0      127.0.0.53%lo:53         0.0.0.0:*
tcp   LISTEN 0      128             [::]:22            [::]:*
udp   UNCONN 0      0          [::1]%lo:53              [::]:*
udp   UNCONN 0      0            0.0.0.0:41234      0.0.0.0:*
tcp   LISTEN 0      128             [::]:9090          [::]:*""".splitlines()


def test_listeners_that_no_rule_opens_stop_the_run():
    rules = [{"port": 22, "proto": "tcp"}, {"port": 3493, "proto": "tcp"}]
    # [::1]%lo is loopback; 41234/udp is an unconnected socket of the ephemeral range (a client's);
    # 9090/tcp on every IPv6 address is a service.
    assert listeners_not_covered(SS, rules, []) == ["445/tcp", "5353/udp", "9090/tcp"]
    assert listeners_not_covered(SS, rules, ["445/tcp", 5353, "9090/tcp"]) == []
    assert listeners_not_covered(SS, [{"port": 22, "proto": "tcp"}], ["5353/udp", "445", "9090"]) == ["3493/tcp"]


# ----------------------------------------------------------------------------- sshd -T
def test_sshd_drift_sees_a_port_or_group_added_elsewhere():
    effective = ["port 22", "port 2222", "allowgroups sudo", "allowgroups users", "permitrootlogin no"]
    drift = sshd_drift(effective, {"port": "22", "allowgroups": "sudo", "permitrootlogin": "no", "ciphers": "aes256-ctr"})
    assert drift == ["port is 22 2222, not 22", "allowgroups is sudo users, not sudo", "ciphers is unset, not aes256-ctr"]
    assert sshd_drift(["port 22", "allowgroups sudo borg"], {"port": "22", "allowgroups": "sudo borg"}) == []


# ----------------------------------------------------------------------------- the new-session proof
def test_the_proof_never_rides_an_existing_connection():
    argv = ssh_proof_argv({"host": "10.0.0.5", "port": 2222, "private_key_file": "/k", "ssh_args": "-o ControlMaster=auto "
                           "-o ControlPersist=60s", "common_args": "-o ProxyJump=bastion", "extra_args": "",
                           "host_key_checking": "False"}, "msp-admin", ["sudo", "-n", "true"])
    assert argv[:5] == ["ssh", "-o", "ControlMaster=no", "-o", "ControlPath=none"]  # first: ssh keeps the first value
    assert argv.index("ControlMaster=no") < argv.index("ControlMaster=auto")
    assert ["-p", "2222"] == argv[argv.index("-p"):argv.index("-p") + 2] and "-i" in argv and "ProxyJump=bastion" in argv
    assert "StrictHostKeyChecking=no" in argv
    assert argv[-7:] == ["-l", "msp-admin", "--", "10.0.0.5", "sudo", "-n", "true"]
    mux = ssh_proof_argv({"host": "h", "ssh_args": "-M -S /tmp/cp -o IdentitiesOnly=yes -S/tmp/x -O check"}, "a", ["true"])
    assert "-M" not in mux and "-S" not in mux and "/tmp/cp" not in mux and "-S/tmp/x" not in mux and "-O" not in mux
    assert "IdentitiesOnly=yes" in mux
    with pytest.raises(AnsibleFilterError, match="not an account name"):
        ssh_proof_argv({"host": "h"}, "admin; touch /tmp/x", ["true"])
    plain = ssh_proof_argv({"host": "h", "port": "", "private_key_file": None, "host_key_checking": True}, "a", ["true"])
    assert "-p" not in plain and "-i" not in plain and "StrictHostKeyChecking=no" not in plain


def test_ssh_algorithms_unknown_to_the_release():
    assert ssh_algorithm_problems(["curve25519-sha256", "x@y"], ["curve25519-sha256\n", "aes"], "kex") == ["x@y"]


# ----------------------------------------------------------------------------- the ruleset nft reads
def render_ruleset(rules: list[dict]) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(ROOT / "roles" / "system_baseline" / "templates")),
                             trim_blocks=True)
    return env.get_template("etc/nftables.conf.j2").render(
        ansible_managed="managed", __system_baseline_nft_table="cabinet_filter",
        __system_baseline_firewall_rules=rules, system_baseline_firewall_log_per_minute=10)


def test_the_ruleset_says_what_the_rules_say():
    rules = firewall_resolve(firewall_host_rules(role_declarations() + [SSH], "srv", GROUPS, HOSTVARS),
                             {"pc1.cabinet.lan": ["192.0.2.11", "2001:db8::11"]})
    text = render_ruleset(rules)
    assert "ip saddr { 198.51.100.0/24 } tcp dport 22 accept" in text
    assert "ip saddr { 192.0.2.11/32, 192.0.2.12/32 } tcp dport 3493 accept" in text
    assert "ip6 saddr { 2001:db8::11/128 } tcp dport 3493 accept" in text
    assert "policy drop;" in text and "flush ruleset" not in text


def test_an_empty_source_list_writes_no_rule():
    rules = firewall_resolve(firewall_host_rules([{"name": "x", "port": 80, "open_on": "all", "from": ["website_hosts"]}],
                                                 "srv", GROUPS, HOSTVARS), {})
    assert "dport 80" not in render_ruleset(rules)


def test_nft_accepts_the_ruleset(tmp_path):
    """nft -c parses the rendered file (it needs CAP_NET_ADMIN: root, as the tests run; make
    setup installs nftables on the controller)."""
    assert shutil.which("nft"), "nft is missing: run make setup (scripts/setup-host.sh installs nftables)"
    rules = firewall_resolve(firewall_host_rules(role_declarations() + [SSH, {**SSH, "name": "web", "port": 443, "from": "any"}],
                                                 "srv", GROUPS, HOSTVARS),
                             {"pc1.cabinet.lan": ["192.0.2.11", "2001:db8::11"]})
    conf = tmp_path / "nftables.conf"
    conf.write_text(render_ruleset(rules), encoding="utf-8")
    check = subprocess.run(["nft", "-c", "-f", str(conf)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr


# ----------------------------------------------------------------------------- the rollback command
def test_the_rollback_command_refuses_an_unknown_part():
    script = ROOT / "roles" / "system_baseline" / "files" / "usr" / "local" / "sbin" / "cabinet-baseline-revert"
    done = subprocess.run(["sh", str(script), "pam"], capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "usage" in done.stderr


def test_every_keyword_the_sshd_template_writes_is_refused_as_an_extra_setting():
    """system_baseline_ssh_extra_settings cannot override what the role writes: the list the
    validation reads names every keyword of the template (X11Forwarding was missing; a keyword
    regex without digits hid it until session 9)."""
    import re  # noqa: PLC0415
    template = (ROOT / "roles" / "system_baseline" / "templates" / "etc" / "ssh" / "sshd_config.d"
                / "00-cabinet-baseline.conf.j2").read_text(encoding="utf-8")
    written = set(re.findall(r"^([A-Z][A-Za-z0-9]+) ", template, re.M))
    managed = yaml.safe_load((ROOT / "roles" / "system_baseline" / "vars" / "main.yml").read_text(encoding="utf-8"))
    assert written and written <= set(managed["__system_baseline_ssh_managed_keywords"]), \
        written - set(managed["__system_baseline_ssh_managed_keywords"])


# ----------------------------------------------------------------------------- integrity_exclude_problems
PROTECTED = ["/etc", "/usr", "/var/lib/dpkg"]
KEPT_BELOW = ["/opt", "/var", "/var/lib"]


@pytest.mark.parametrize("paths", [[], ["/srv/pacs", "/var/lib/postgresql", "/opt/app/cache", "/var/lib/dpkg-extra"]])
def test_exclusions_an_msp_may_ask_for(paths):
    assert integrity_exclude_problems(paths, PROTECTED, KEPT_BELOW) == []


@pytest.mark.parametrize("paths, says", [
    (["/etc"], "one of the system folders"),
    (["/etc/ssh"], "under one of the system folders AIDE is for (/etc)"),
    (["/var/lib/dpkg/info"], "under one"),
    (["/var"], "would leave out /var"),
    (["/var/lib"], "would leave out /var/lib"),
    (["/"], "not a plain absolute path"),
    (["/srv/pacs/"], "not a plain absolute path"),
    (["/srv/pacs\n"], "not a plain absolute path"),
    (["/srv/./pacs"], "not a plain absolute path"),
    (["/srv/../etc"], "not a plain absolute path"),
    ([7], "not a plain absolute path"),
    ("/srv/pacs", "expected a list"),
])
def test_exclusions_that_would_blind_the_check_are_refused(paths, says):
    problems = integrity_exclude_problems(paths, PROTECTED, KEPT_BELOW)
    assert len(problems) == 1 and says in problems[0], problems


def test_network_problems():
    assert network_problems(["192.0.2.7", "192.0.2.0/24", "2001:db8::/32", "::1"]) == []
    assert network_problems(["192.0.2.7/24"]) == ["'192.0.2.7/24': host bits set"]
    assert network_problems(["msp.example", "", " 192.0.2.7", 7]) == [
        f"{v!r}: not an address or a CIDR network" for v in ["msp.example", "", " 192.0.2.7", 7]]
    assert network_problems("192.0.2.7") == ["expected a list of addresses or CIDR networks, got '192.0.2.7'"]


@pytest.mark.parametrize("value", ["fe80::1%x\nAllowTcpForwarding yes", "fe80::1%a,b", "fe80::1%x y#z", "fe80::1%eth0"])
def test_an_ipv6_zone_cannot_carry_text_into_sshd_or_fail2ban(value):
    assert network_problems([value]) == [f"{value!r}: not an address or a CIDR network"]
    rule = {"name": "ssh", "port": 22, "proto": "tcp", "from": [value], "open_on": "all", "declared_in": "x"}
    assert firewall_problems([rule]), "the firewall's sources take it"
