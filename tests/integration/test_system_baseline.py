"""System baseline: the ANSSI BP-028 base under every practice.

Audit checks read what sshd, nftables, journald, the kernel, sudo and the shells really use
(``sshd -T``, ``nft list``, ``systemd-analyze cat-config``, ``modprobe -n``...). Kernel settings,
modules and the packet filter belong to the host's kernel: in a container they are reported as
not applicable there (never as passed), except the firewall when the container may filter its
own traffic (CAP_NET_ADMIN, as in the lab). Lab checks (cabinet_lab: true) log in over SSH with
a real client, probe ports from other machines, inject faults and run the ANSSI scanner.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import admin_gets_in, connect, not_applicable, run_playbook

ROOT = Path(__file__).resolve().parents[2]
ROLE = "system_baseline"
AUDITED_GROUP = "cabinet_managed"
CONTAINER_TYPES = ("container", "docker", "podman", "lxc", "systemd-nspawn", "containerd")
TABLE = "cabinet_filter"
DROPIN = "/etc/ssh/sshd_config.d/00-cabinet-baseline.conf"
sys.path.insert(0, str(ROOT / "scripts"))
import anssi_scan  # noqa: E402 - the scan shared with make demo

TAILORING = anssi_scan.TAILORING


def in_container(host) -> bool:
    return host.run("systemd-detect-virt --container").rc == 0


def kernel_not_applicable(host) -> None:
    if in_container(host):
        not_applicable("a container: the kernel, its settings and modules are the host's")


def has_sshd(host) -> bool:
    return host.package("openssh-server").is_installed


def sshd_settings(host) -> dict[str, str]:
    """sshd's effective settings (`sshd -T`), keyword (lower case) to value."""
    out = host.check_output("sshd -T -C user=nobody,host=localhost,addr=127.0.0.1")
    settings: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        # keywords that add up (port, allowgroups...) come one value a line
        settings[key] = f"{settings[key]} {value}" if key in settings else value
    return settings


def firewall_usable(host) -> bool:
    return host.run("nft list tables").rc == 0


def expected_algorithms(host, expect, kind: str) -> list[str]:
    wanted = expect({"kex": "system_baseline_ssh_kex_algorithms", "ciphers": "system_baseline_ssh_ciphers",
                     "macs": "system_baseline_ssh_macs"}[kind])
    if wanted:
        return wanted
    release = host.system_info.release.split(".")[0]
    import yaml  # noqa: PLC0415 - only here
    strong = yaml.safe_load((ROOT / "roles" / ROLE / "vars" / "main.yml").read_text())["__system_baseline_ssh_strong"]
    return strong[release][kind]


# ----------------------------------------------------------------------------- audit: SSH
def test_sshd_accepts_its_configuration(host):
    if not has_sshd(host):
        not_applicable("no OpenSSH server on this host")
    result = host.run("sshd -t")
    assert result.rc == 0, result.stderr


def test_sshd_keys_only_no_root_admin_groups(host, expect, inventory):
    if not has_sshd(host):
        not_applicable("no OpenSSH server on this host")
    s = sshd_settings(host)
    assert s["permitrootlogin"] == "no"
    assert s["passwordauthentication"] == "no"
    assert s["kbdinteractiveauthentication"] == "no"
    assert s["pubkeyauthentication"] == "yes"
    assert s["permitemptypasswords"] == "no"
    assert s["authenticationmethods"] == "publickey"
    groups = list(expect("system_baseline_ssh_allow_groups"))
    # The off-site server lets the practices' copies in as the backup role's account.
    if host.inventory_name in inventory.group("backup_offsite"):
        account = inventory.vars(host.inventory_name).get("backup_server_user", "borg")
        groups += [] if account in groups else [account]
    assert s["allowgroups"].split() == groups


def test_sshd_strong_algorithms_only(host, expect):
    if not has_sshd(host):
        not_applicable("no OpenSSH server on this host")
    s = sshd_settings(host)
    assert s["kexalgorithms"].split(",") == expected_algorithms(host, expect, "kex")
    assert s["ciphers"].split(",") == expected_algorithms(host, expect, "ciphers")
    assert s["macs"].split(",") == expected_algorithms(host, expect, "macs")
    for weak in ("diffie-hellman-group1-sha1", "diffie-hellman-group14-sha1", "3des-cbc", "aes128-cbc", "hmac-sha1",
                 "hmac-md5", "umac-64@openssh.com"):
        assert weak not in s["kexalgorithms"] + s["ciphers"] + s["macs"], weak


def test_sshd_limits_idle_and_forwarding(host, expect):
    if not has_sshd(host):
        not_applicable("no OpenSSH server on this host")
    s = sshd_settings(host)
    assert int(s["logingracetime"]) == expect("system_baseline_ssh_login_grace_time")
    assert int(s["maxauthtries"]) == expect("system_baseline_ssh_max_auth_tries")
    assert int(s["clientaliveinterval"]) == expect("system_baseline_ssh_client_alive_interval")
    assert int(s["clientalivecountmax"]) == expect("system_baseline_ssh_client_alive_count_max")
    assert s["allowtcpforwarding"] == ("yes" if expect("system_baseline_ssh_allow_tcp_forwarding") else "no")
    assert s["allowagentforwarding"] == ("yes" if expect("system_baseline_ssh_allow_agent_forwarding") else "no")
    assert s["x11forwarding"] == ("yes" if expect("system_baseline_ssh_x11_forwarding") else "no")
    assert s["permittunnel"] == "no"
    assert s["tcpkeepalive"] == "no" and s["compression"] == "no"
    assert s["banner"] == "/etc/issue.net"
    config = host.file("/etc/ssh/sshd_config")
    assert config.user == "root" and config.mode & 0o077 == 0, "sshd_config readable by others"
    assert host.file("/etc/issue.net").content_string.strip() == expect("system_baseline_ssh_banner").strip()
    if host.system_info.release.split(".")[0] >= "13":
        assert s["persourcepenalties"] != "no"


def ban_exempt(expect) -> list[str]:
    return expect("system_baseline_ssh_ban_exempt") or [
        s for s in expect("system_baseline_firewall_ssh_sources") if s != "any"]


def test_sources_that_keep_failing_are_shut_out(host, expect):
    """Debian 13: OpenSSH's per-source penalties, the MSP's networks exempt. Debian 12: fail2ban's
    sshd jail, reading the journal of Debian's ssh.service, banning with nftables."""
    if not expect("system_baseline_ssh_enabled") or not has_sshd(host):
        not_applicable("no SSH server hardened here")
    if not expect("system_baseline_ssh_ban_enabled"):
        not_applicable("bans turned off in this inventory")
    exempt = ban_exempt(expect)
    if int(host.system_info.release.split(".")[0]) >= 13:
        settings = sshd_settings(host)
        assert settings.get("persourcepenalties", "no") != "no", settings.get("persourcepenalties")
        if exempt:
            assert settings.get("persourcepenaltyexemptlist") == ",".join(exempt), settings.get("persourcepenaltyexemptlist")
        return
    assert host.service("fail2ban").is_enabled and host.service("fail2ban").is_running
    status = host.run("fail2ban-client status sshd")
    assert status.rc == 0, status.stdout + status.stderr
    assert host.check_output("fail2ban-client get sshd maxretry") == str(expect("system_baseline_ssh_ban_after_failures"))
    ignored = host.check_output("fail2ban-client get sshd ignoreip")
    assert all(source in ignored for source in exempt), ignored
    assert "_SYSTEMD_UNIT=ssh.service" in host.check_output("fail2ban-client get sshd journalmatch")
    assert "nftables-multiport" in host.check_output("fail2ban-client get sshd actions")


def test_no_rollback_pending_and_the_settings_in_force_were_proven(host):
    """A revert timer still armed means a run lost its way in and is about to roll back; a
    file of the baseline that differs from the last one a run proved (an interrupted run, or
    an edit by hand) has never been through the anti-lockout proof."""
    timers = host.run("systemctl list-units --all --plain --no-legend 'cabinet-baseline-revert-*'").stdout
    assert not [l for l in timers.splitlines() if " active " in f" {l} "], timers
    for part, path in (("ssh", DROPIN), ("firewall", "/etc/nftables.conf"),
                       ("kernel", "/etc/sysctl.d/90-cabinet-baseline.conf")):
        applied = {"ssh": has_sshd(host), "firewall": firewall_usable(host) and host.file(path).exists,
                   "kernel": not in_container(host)}[part]
        if not applied:
            continue  # no sshd, no packet filter of its own, or a container's kernel: not applied here
        proven = host.file(f"/var/lib/cabinet-baseline/{part}.proven")
        assert proven.exists, f"no run ever proved {path}"
        assert proven.content_string.strip() == host.file(path).sha256sum, f"{path} is not the file a run proved"
        assert host.file(f"/var/lib/cabinet-baseline/{part}.previous").sha256sum == host.file(path).sha256sum, \
            f"the rollback's copy of {path} is not the proven file"


# ----------------------------------------------------------------------------- audit: firewall
def accept_rules(text: str) -> set[tuple[str, frozenset[str], str, int]]:
    """The port rules of a ruleset (file or `nft list`), as (family, sources, proto, port):
    nft lists a one-element set without braces and an address without /32."""
    rules = set()
    for m in re.finditer(r"^\s*(?:(ip6?) saddr (\{[^}]*\}|\S+) )?(tcp|udp) dport (\d+) accept\s*$", text, re.M):
        sources = frozenset(re.sub(r"/(32|128)$", "", s.strip()) for s in (m[2] or "").strip("{} ").split(",") if s.strip())
        rules.add((m[1] or "any", sources, m[3], int(m[4])))
    return rules



def test_firewall_denies_inbound_by_default(host, expect):
    if not expect("system_baseline_firewall_enabled"):
        not_applicable("firewall disabled in this inventory")
    if not firewall_usable(host):
        not_applicable("this host may not manage its packet filter (a container without CAP_NET_ADMIN)")
    table = host.run(f"nft list table inet {TABLE}")
    assert table.rc == 0, "the baseline's table is not loaded"
    assert re.search(r"type filter hook input priority filter; policy drop;", table.stdout)
    # No forward chain: forwarding is the kernel's (ip_forward), and a drop there would beat a
    # container engine's or a VPN's own accepts.
    assert "hook forward" not in table.stdout
    assert "ct state established,related accept" in table.stdout
    assert 'log prefix "cabinet-firewall drop: "' in table.stdout
    assert host.service("nftables").is_enabled
    # What is loaded is what the file says (a reboot loads the file): the same accept rules.
    conf = host.file("/etc/nftables.conf").content_string
    assert accept_rules(conf) and accept_rules(conf) == accept_rules(table.stdout), (conf, table.stdout)
    ssh_port = expect("system_baseline_ssh_port")
    assert re.search(rf"tcp dport {ssh_port} accept", table.stdout), "no SSH rule"


# ----------------------------------------------------------------------------- audit: journal
def test_journal_is_persistent_and_bounded(host, expect):
    if not expect("system_baseline_logging_enabled"):
        not_applicable("logging disabled in this inventory")
    config = host.check_output("systemd-analyze cat-config systemd/journald.conf")
    values = dict(line.split("=", 1) for line in config.splitlines() if "=" in line and not line.startswith("#"))
    assert values.get("Storage") == "persistent"
    assert values.get("SystemMaxUse") == expect("system_baseline_journald_max_use")
    assert values.get("MaxRetentionSec") == f"{expect('system_baseline_journald_max_retention_days')}day"
    machine = host.file("/etc/machine-id").content_string.strip()
    assert host.file(f"/var/log/journal/{machine}").is_directory, "journald does not write to /var/log/journal"


# ----------------------------------------------------------------------------- audit: time
def test_logs_go_to_the_msps_log_host_over_tls(host, expect):
    """R71: rsyslog running, the forwarding action over TLS with the peer's name checked, and
    a configuration rsyslog itself accepts."""
    if not expect("system_baseline_logging_enabled") or not expect("system_baseline_log_forwarding_enabled"):
        not_applicable("log forwarding is off in this inventory")
    assert host.service("rsyslog").is_running
    conf = host.file("/etc/rsyslog.d/90-cabinet-forward.conf").content_string
    assert f'target="{expect("system_baseline_log_host")}"' in conf
    assert 'StreamDriver="gtls" StreamDriverMode="1" StreamDriverAuthMode="x509/name"' in conf
    peer = expect("system_baseline_log_peer_name") or expect("system_baseline_log_host")
    assert f'StreamDriverPermittedPeers="{peer}"' in conf
    assert 'queue.saveOnShutdown="on"' in conf and 'action.resumeRetryCount="-1"' in conf
    checked = host.run("rsyslogd -N1")
    assert checked.rc == 0, checked.stderr


def installed(host, package: str) -> bool:
    """Present in any state but removed (held or half-configured count), as the role reads it."""
    state = host.run(f"dpkg-query --show --showformat='${{db:Status-Status}}' {package}").stdout.strip()
    return state not in ("", "not-installed", "config-files")


def test_time_is_taken_from_the_msps_servers(host, expect):
    """chrony's sources where the host runs chrony, else timesyncd's NTP=, name the servers."""
    if not expect("system_baseline_time_enabled"):
        not_applicable("time part disabled in this inventory")
    servers = expect("system_baseline_time_servers")
    if installed(host, "chrony"):
        text = host.file("/etc/chrony/sources.d/cabinet-baseline.sources").content_string
        assert re.findall(r"^server (\S+) iburst$", text, re.M) == servers, text
    elif any(installed(host, p) for p in ("ntp", "ntpsec", "openntpd")):
        not_applicable("the host keeps the time with its own ntp daemon, which the role leaves as it is")
    else:
        assert installed(host, "systemd-timesyncd")
        config = host.check_output("systemd-analyze cat-config systemd/timesyncd.conf")
        ntp = [line.split("=", 1)[1] for line in config.splitlines() if line.startswith("NTP=")]
        assert ntp and ntp[-1].split() == servers, config
        assert host.service("systemd-timesyncd").is_enabled


def test_the_clock_check_runs_every_half_hour(host, expect):
    if not expect("system_baseline_time_enabled"):
        not_applicable("time part disabled in this inventory")
    assert host.file("/usr/local/sbin/cabinet-time-check").mode == 0o755
    timer = host.service("cabinet-time-check.timer")
    assert timer.is_enabled and timer.is_running
    settings = json.loads(host.file("/etc/cabinet/time.json").content_string)
    assert settings["alert_after_minutes"] == expect("system_baseline_time_alert_after_minutes")
    assert settings["servers"] == expect("system_baseline_time_servers")


def test_the_clock_is_synchronised(host, expect):
    """What timedatectl says (the kernel's answer, whatever daemon keeps the time)."""
    if not expect("system_baseline_time_enabled"):
        not_applicable("time part disabled in this inventory")
    if in_container(host):
        not_applicable("a container's clock is its host kernel's, which it cannot set")
    assert host.check_output("timedatectl show --property=NTPSynchronized --value") == "yes"


# ----------------------------------------------------------------------------- audit: integrity
def aide_setting(host, name: str) -> str:
    """A setting of Debian's aide.conf (the last line that sets it)."""
    lines = host.file("/etc/aide/aide.conf").content_string.splitlines()
    return next((line.split("=", 1)[1].strip() for line in reversed(lines) if re.match(rf"{name}\s*=", line)), "")


def test_aide_checks_the_files_every_day(host, expect):
    """R76/R79: AIDE installed, its database built, cabinet-integrity's timer instead of Debian's."""
    if not expect("system_baseline_integrity_enabled"):
        not_applicable("integrity part disabled in this inventory")
    assert installed(host, "aide")
    assert host.run("aide --config=/etc/aide/aide.conf --config-check").rc == 0
    assert aide_setting(host, "Checksums") == "sha512"
    database = host.file("/var/lib/aide/aide.db")
    assert database.is_file and database.user == "root" and not database.mode & 0o022, "no database, or others may write it"
    dropin = host.file("/etc/aide/aide.conf.d/90_cabinet_hardening").content_string
    for path in ["/home", "/var/lib/cabinet", *expect("system_baseline_integrity_exclude_paths")]:
        assert f"!{re.escape(path)}(/|$)" in dropin, path
    timer = host.service("cabinet-integrity-check.timer")
    assert timer.is_enabled and timer.is_running
    assert not host.service("dailyaidecheck.timer").is_enabled, "Debian's unfiltered daily report is on too"
    assert json.loads(host.file("/etc/cabinet/integrity.json").content_string)["realert_days"] == \
        expect("system_baseline_integrity_realert_days")


def test_package_files_are_verified_every_week(host, expect):
    """R76: debsums installed, the weekly verification on, and its last run did not fail."""
    if not expect("system_baseline_integrity_enabled"):
        not_applicable("integrity part disabled in this inventory")
    assert installed(host, "debsums")
    timer = host.service("cabinet-packages-verify.timer")
    assert timer.is_enabled and timer.is_running
    assert host.run("systemctl is-failed --quiet cabinet-packages-verify.service").rc != 0


# ----------------------------------------------------------------------------- audit: kernel
def test_kernel_settings_file(host, expect):
    import yaml  # noqa: PLC0415
    if not expect("system_baseline_kernel_enabled"):
        not_applicable("kernel part disabled in this inventory")
    vars_ = yaml.safe_load((ROOT / "roles" / ROLE / "vars" / "main.yml").read_text())
    wanted = dict(vars_["__system_baseline_sysctls"])
    if not expect("system_baseline_kernel_ipv6_router_advertisements"):
        wanted.update(vars_["__system_baseline_sysctls_no_ra"])
    text = host.file("/etc/sysctl.d/90-cabinet-baseline.conf").content_string
    found = dict(line.split(" = ", 1) for line in text.splitlines() if " = " in line and not line.startswith("#"))
    assert found == {k: str(v) for k, v in wanted.items()}


def test_kernel_settings_in_force(host):
    kernel_not_applicable(host)
    text = host.file("/etc/sysctl.d/90-cabinet-baseline.conf").content_string
    for line in text.splitlines():
        if " = " in line and not line.startswith("#"):
            name, value = line.split(" = ", 1)
            live = host.run(f"sysctl -n {name}")
            if live.rc != 0:
                continue  # a setting this kernel does not have (a module not loaded)
            assert live.stdout.split() == value.split(), f"{name} is {live.stdout.strip()}, not {value}"


def test_unused_modules_refused(host, expect):
    if not expect("system_baseline_kernel_enabled"):
        not_applicable("kernel part disabled in this inventory")
    text = host.file("/etc/modprobe.d/cabinet-baseline.conf").content_string
    for module in ("cramfs", "hfsplus", "dccp", "sctp"):
        assert f"install {module} /bin/false" in text
    assert ("install usb-storage /bin/false" in text) != bool(expect("system_baseline_kernel_allow_usb_storage"))
    if not in_container(host):
        assert "install /bin/false" in host.check_output("modprobe -n -v cramfs 2>&1 || true")


def test_temporary_folders_mount_options(host):
    """BP-028 R28: reported, not changed (an installation choice; see the README)."""
    kernel_not_applicable(host)
    problems = []
    for path in ("/tmp", "/var/tmp", "/dev/shm"):
        mount = host.run(f"findmnt -n -o TARGET,OPTIONS --target {path}").stdout.split()
        if mount and mount[0] == path:
            options = mount[1].split(",")
            problems += [f"{path} lacks {o}" for o in ("nodev", "nosuid") if o not in options]
    assert not problems, problems


# ----------------------------------------------------------------------------- audit: accounts
def test_umask_and_shell_timeout(host, expect):
    if not expect("system_baseline_accounts_enabled"):
        not_applicable("accounts part disabled in this inventory")
    umask = expect("system_baseline_umask").lstrip("0").rjust(3, "0")
    assert re.search(rf"^UMASK\s+0?{umask}$", host.file("/etc/login.defs").content_string, re.M)
    shell = host.run("su -s /bin/bash -l nobody -c 'umask; echo $TMOUT; TMOUT=5 2>&1; echo done'")
    lines = shell.stdout.split()
    assert lines[0] == "0" + umask, shell.stdout
    assert lines[1] == str(expect("system_baseline_shell_timeout")), shell.stdout
    assert "readonly" in shell.stderr, "TMOUT can be changed by the user"


def test_no_core_dumps(host, expect):
    if not expect("system_baseline_accounts_enabled"):
        not_applicable("accounts part disabled in this inventory")
    assert "*               hard    core            0" in host.file("/etc/security/limits.d/cabinet-baseline.conf").content_string
    # A session through su (pam_limits in its stack), as nobody: the hard limit it gets.
    assert host.check_output("su --shell /bin/sh --command 'ulimit -Hc' nobody") == "0"


def test_su_restricted_to_its_group(host, expect):
    if not expect("system_baseline_accounts_enabled"):
        not_applicable("accounts part disabled in this inventory")
    su = host.file("/etc/pam.d/su").content_string
    active = [l for l in su.splitlines() if re.match(r"^\s*auth\s+required\s+pam_wheel\.so", l)]
    assert len(active) == 1, active
    line = active[0]
    assert "# auth       required   pam_wheel.so deny group=nosu" in su, "Debian's deny example was rewritten"
    assert f"group={expect('system_baseline_su_group')}" in line.split()
    assert su.index("pam_rootok.so") < su.index(line)


def test_sudo_rules(host, expect):
    """The Defaults sudo applies to an account (sudo -l -U), as sudo itself resolves them."""
    if not expect("system_baseline_accounts_enabled"):
        not_applicable("accounts part disabled in this inventory")
    listing = host.check_output("sudo -n -l -U root")
    defaults = listing.split("Matching Defaults entries", 1)[1].split("\n\n", 1)[0]
    for wanted in ("use_pty", "env_reset", "ignore_dot", "umask=0077", f"logfile={expect('system_baseline_sudo_logfile')}"):
        assert wanted in defaults, f"{wanted} not in force: {defaults}"
    sudoers_d = host.file("/etc/sudoers.d")
    assert sudoers_d.user == "root" and sudoers_d.mode == 0o750
    assert host.run("visudo -c").rc == 0


def test_sudo_commands_run_clean_and_logged(lab, lab_admin, expect):
    """What sudo does: umask 077 and a clean environment for the command, and a line in the
    log file. (ignore_dot is checked in the Defaults only: Debian's secure_path already keeps
    the current folder out of sudo's command search, so no outcome could show it.)"""
    logfile = expect("system_baseline_sudo_logfile")
    token = f"lab-sudo-{time.time_ns()}"
    lab.check_output(f"install -d -m 755 /tmp/lab-dot && printf 'umask\\necho \"env=${{LAB_LEAK-}}\"\\n' > /tmp/lab-dot/{token}.sh")
    try:
        out = lab.check_output(f"su -s /bin/sh {lab_admin} -c 'LAB_LEAK=leak sudo -n /bin/sh /tmp/lab-dot/{token}.sh' < /dev/null")
    finally:
        lab.run("rm -rf /tmp/lab-dot")
    assert out.split() == ["0077", "env="], out
    assert f"/tmp/lab-dot/{token}.sh" in lab.file(logfile).content_string, f"the command is not in {logfile}"


def test_root_password_has_a_maximum_age(host, expect):
    maximum = expect("system_baseline_root_max_days")
    if not maximum:
        not_applicable("no maximum for root's password in this inventory")
    entry = host.check_output("getent shadow root").split(":")
    last, current = entry[2], entry[4]
    if not last or (int(time.time()) // 86400) - int(last) >= int(maximum) - 7:
        pytest.fail(f"root's password is older than {int(maximum) - 7} days (or undated): the role does not age it "
                    "(that would expire it at once); change it (passwd root), then run again")
    assert current == str(maximum)


def test_no_account_without_a_password(host):
    shadow = host.check_output("getent shadow")
    empty = [l.split(":")[0] for l in shadow.splitlines() if l.split(":")[1] == ""]
    assert not empty, f"accounts with an empty password: {empty}"


def test_inactive_accounts_are_looked_for_every_day(host, expect):
    if not expect("system_baseline_accounts_enabled") or not expect("system_baseline_inactive_enabled"):
        not_applicable("inactive-account check disabled in this inventory")
    timer = host.service("cabinet-accounts-check.timer")
    assert timer.is_enabled and timer.is_running
    settings = json.loads(host.file("/etc/cabinet/accounts.json").content_string)
    assert settings["inactive_days"] == expect("system_baseline_inactive_days")
    assert settings["lock"] == expect("system_baseline_inactive_lock")
    assert set(expect("system_baseline_inactive_exempt")) <= set(settings["exempt"])
    assert "root" not in settings["exempt"]
    # Its last run, if any, did not fail (a failure also alerts the MSP).
    assert host.run("systemctl is-failed --quiet cabinet-accounts-check.service").rc != 0


# ----------------------------------------------------------------------------- audit: auditd
def test_auditd_runs_with_the_anssi_rules(host, expect):
    """On machines and VMs: auditd running, the rules in force (auditctl -l) carry the keys of
    ComplianceAsCode's ANSSI set, and are immutable when asked."""
    if not expect("system_baseline_audit_enabled"):
        not_applicable("audit part disabled in this inventory")
    kernel_not_applicable(host)
    assert host.service("auditd").is_enabled and host.service("auditd").is_running
    rules = host.check_output("auditctl -l")
    for key in ("time-change", "audit_rules_usergroup_modification", "audit_rules_networkconfig_modification",
                "logins", "session", "actions", "perm_mod", "access", "delete", "export", "modules", "privileged"):
        assert f"key={key}" in rules or f"-k {key}" in rules, f"no audit rule with the key {key}"
    assert "/usr/bin/sudo" in rules
    if expect("system_baseline_audit_immutable"):
        assert re.search(r"^enabled 2$", host.check_output("auditctl -s"), re.M)


# ----------------------------------------------------------------------------- audit: packages and services
def test_unneeded_packages_are_absent(host, expect):
    if not expect("system_baseline_packages_enabled"):
        not_applicable("packages part disabled in this inventory")
    present = [p for p in expect("system_baseline_packages_absent") if installed(host, p)]
    assert present == [], f"installed although a practice does not need them: {present}"


def test_unneeded_services_are_masked(host, expect):
    if not expect("system_baseline_packages_enabled"):
        not_applicable("packages part disabled in this inventory")
    units = expect("system_baseline_services_masked")
    listed = host.run("systemctl list-unit-files --no-legend --full -- " + " ".join(shlex.quote(u) for u in units))
    states = dict(line.split()[:2] for line in listed.stdout.splitlines() if len(line.split()) >= 2)
    assert {u: s for u, s in states.items() if u in units and s != "masked"} == {}
    running = [u for u in states if u in units and host.run(f"systemctl is-active --quiet {shlex.quote(u)}").rc == 0]
    assert running == [], f"running although masked: {running}"


# ----------------------------------------------------------------------------- lab: SSH with a real client
@pytest.fixture(scope="module")
def ssh_target(lab, lab_admin, tmp_path_factory):
    """The controller's ssh towards the lab host: its address, a known_hosts with its key,
    and the admin's private key (it leaves the controller with the module)."""
    folder = tmp_path_factory.mktemp("baseline-ssh")
    address = lab.check_output("hostname -I").split()[0]
    host_key = lab.check_output("cat /etc/ssh/ssh_host_ed25519_key.pub").split()
    (folder / "known_hosts").write_text(f"{address} {host_key[0]} {host_key[1]}\n", encoding="utf-8")
    key = folder / "key"
    key.write_text(lab.check_output("cat /root/lab-admin-key") + "\n", encoding="utf-8")
    key.chmod(0o600)
    yield {"address": address, "known": folder / "known_hosts", "key": key}
    key.unlink(missing_ok=True)


def ssh(target, user: str, *options: str, command: str = "true", key: bool = True) -> subprocess.CompletedProcess:
    argv = ["ssh", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={target['known']}", "-o", "ConnectTimeout=10",
            "-o", "IdentitiesOnly=yes", *(["-i", str(target["key"])] if key else []), *options,
            f"{user}@{target['address']}", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_admin_logs_in_with_its_key_and_sudo(ssh_target, lab_admin):
    result = ssh(ssh_target, lab_admin, command="sudo -n true && echo in")
    assert result.returncode == 0 and result.stdout.strip() == "in", result.stderr
    assert "réservé aux personnes autorisées" in result.stderr  # the banner


def test_an_ssh_command_session_gets_the_umask(ssh_target, lab_admin, expect):
    """Not only login shells: a command over SSH (Ansible's, sftp's) gets login.defs' UMASK
    through pam_umask (password_policy enables it on Debian 12, Debian 13 has it). Before, such
    sessions made files with 022, which the scanner's home-files rule then failed."""
    if not expect("system_baseline_accounts_enabled"):
        not_applicable("accounts part disabled in this inventory")
    result = ssh(ssh_target, lab_admin, command="umask")
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip(), 8) == int(str(expect("system_baseline_umask")), 8), result.stdout


def test_passwords_root_and_other_groups_are_refused(lab, ssh_target, lab_admin):
    offered = ssh(ssh_target, lab_admin, "-v", "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password")
    assert offered.returncode != 0
    assert "Authentications that can continue: publickey\n" in offered.stderr + "\n", \
        "the server offers more than public keys"
    # root and an account outside the admin groups, each with the admin's own (valid) key
    pub = lab.check_output("cat /root/lab-admin-key.pub")
    lab.check_output("id lab-outsider >/dev/null 2>&1 || useradd -m -s /bin/bash lab-outsider")
    for user, home in (("root", "/root"), ("lab-outsider", "/home/lab-outsider")):
        lab.check_output(f"install -d -m 700 -o {user} {home}/.ssh && printf '%s\\n' {shlex.quote(pub)} > {home}/.ssh/authorized_keys "
                         f"&& chown {user} {home}/.ssh/authorized_keys && chmod 600 {home}/.ssh/authorized_keys")
    try:
        for user in ("root", "lab-outsider"):
            refused = ssh(ssh_target, user)
            assert refused.returncode == 255 and "Permission denied" in refused.stderr, (user, refused.stderr)
    finally:
        lab.run("rm -f /root/.ssh/authorized_keys")
        # The account goes, home and all (its skeleton files are 0644: left behind, they fail
        # the ANSSI scanner's home-files rule later in this suite). userdel refuses while a
        # process of the account's still runs (sshd closing a refused session): tried again.
        deadline, refusal = time.monotonic() + 30, ""
        while lab.run("id lab-outsider").rc == 0 and time.monotonic() < deadline:
            gone = lab.run("userdel -r lab-outsider")
            if gone.rc != 0:
                refusal = gone.stderr
                time.sleep(1)
        lab.run("rm -rf /home/lab-outsider")
        assert lab.run("id lab-outsider").rc != 0 and not lab.file("/home/lab-outsider").exists, \
            f"lab-outsider could not be removed: {refusal}"


@pytest.mark.parametrize("option", ["KexAlgorithms=diffie-hellman-group14-sha1", "Ciphers=aes128-cbc",
                                    "MACs=hmac-sha1", "KexAlgorithms=diffie-hellman-group14-sha256"])
def test_weak_algorithms_are_refused(ssh_target, lab_admin, option):
    # A MAC is negotiated only with a cipher that has none of its own (not chacha20 or GCM).
    cipher = ["-o", "Ciphers=aes256-ctr"] if option.startswith("MACs") else []
    result = ssh(ssh_target, lab_admin, "-o", option, *cipher)
    assert result.returncode == 255, result.stderr
    assert "no matching" in result.stderr or "Unable to negotiate" in result.stderr, result.stderr


# ----------------------------------------------------------------------------- lab: firewall from other machines
def probe(source, address: str, port: int) -> bool:
    """Whether ``source`` opens a TCP connection to address:port within 3 s (a drop times out)."""
    script = (f"import socket\ns = socket.socket(socket.AF_INET6 if ':' in {address!r} else socket.AF_INET)\n"
              f"s.settimeout(3)\ntry:\n    s.connect(({address!r}, {port}))\n    print('open')\n"
              "except OSError as e:\n    print('closed', e)\n")
    return source.check_output("python3 -c %s", script).startswith("open")


@pytest.fixture(scope="module")
def listeners(lab):
    """Listeners on a declared port (NUT's 3493), an inventory rule's (9999) and an undeclared one."""
    ports = (3493, 9999, 8081)
    for port in ports:
        lab.run(f"systemctl stop lab-listen-{port} 2>/dev/null; "
                f"systemd-run --unit=lab-listen-{port} python3 -m http.server --bind :: {port}")
    for port in ports:
        for _ in range(30):
            if lab.socket(f"tcp://:::{port}").is_listening or lab.socket(f"tcp://0.0.0.0:{port}").is_listening:
                break
            time.sleep(0.5)
    yield ports
    for port in ports:
        lab.run(f"systemctl stop lab-listen-{port}")


def test_declared_ports_answer_only_their_sources(lab, inventory, listeners):
    if not firewall_usable(lab):
        not_applicable("this host may not manage its packet filter")
    address = lab.check_output("hostname -I").split()[0]
    sink = connect(inventory, inventory.group("lab_mailsink")[0])
    others = [connect(inventory, n) for n in inventory.group(AUDITED_GROUP) if n != lab.inventory_name]
    ups_server = lab.inventory_name in inventory.group("ups_server")
    assert probe(sink, address, 9999), "an inventory rule (labprobe, from the mail sink) does not answer"
    assert probe(sink, address, 3493) == ups_server, "NUT's port: open to the UPS clients of a UPS server only"
    assert not probe(sink, address, 8081), "an undeclared port answers"
    assert not probe(sink, address, 22), "SSH answers a machine outside system_baseline_firewall_ssh_sources"
    for other in others:
        assert not probe(other, address, 9999), f"labprobe answers {other.inventory_name}, not a source"
        assert not probe(other, address, 3493), f"NUT's port answers {other.inventory_name}, not a UPS client"
    # The local listener itself is fine: the drop is the firewall's.
    assert probe(lab, "127.0.0.1", 8081)


def test_unknown_traffic_is_counted_and_logged(lab, inventory, listeners):
    if not firewall_usable(lab):
        not_applicable("this host may not manage its packet filter")
    address = lab.check_output("hostname -I").split()[0]
    sink = connect(inventory, inventory.group("lab_mailsink")[0])

    def dropped() -> int:
        rules = lab.check_output(f"nft list chain inet {TABLE} input")
        return int(re.search(r"counter packets (\d+) bytes \d+ drop", rules)[1])

    before = dropped()
    assert not probe(sink, address, 8081)
    assert dropped() > before, "the drop rule did not see the probe"
    rule = lab.check_output(f"nft list chain inet {TABLE} input")
    # nft omits the default burst (5) when it lists the rule
    assert re.search(r'limit rate \d+/minute (burst 5 packets )?log prefix "cabinet-firewall drop: "', rule), rule


# ----------------------------------------------------------------------------- lab: the checks' services
def hold_timer(lab, request, unit: str, wait: float) -> None:
    """Stop ``unit``.timer for the test (started again after it), and let a run the timer had
    started end first: it would read the state before the test resets it and save it after."""
    lab.check_output(f"systemctl stop {unit}.timer")
    request.addfinalizer(lambda: lab.run(f"systemctl start {unit}.timer"))
    deadline = time.monotonic() + wait
    while lab.check_output(f"systemctl show -P ActiveState {unit}.service") not in ("inactive", "failed"):
        assert time.monotonic() < deadline, f"the timer's own run of {unit} did not end"
        time.sleep(0.5)


def run_service(lab, unit: str, ended, wait: float = 20) -> str:
    """One run of ``unit``.service and what that run logged, once ``ended(text)`` finds it all
    there: journald writes the run's lines a moment after it ends.

    The run's lines are the unit's (``_SYSTEMD_UNIT``) after a journal cursor taken before the
    start, not those of its ``_SYSTEMD_INVOCATION_ID``: journald reads the invocation ID from the
    unit's cgroup when it handles a line, and a short oneshot's cgroup can be gone by then (CI of
    session 16 read nothing in 20 s; a loop of 20 runs here left one without it). The unit's name
    it also has from the stdout stream's header, which PID 1 writes. The unit is matched here,
    not by journalctl: systemd 252's ``--after-cursor`` with a match skips the first matching
    line. The callers hold the unit's timer, so no other run of the unit comes between."""
    cursor = lab.check_output("journalctl -n 0 --show-cursor --no-pager")
    found = re.search(r"-- cursor: (\S+)", cursor)
    assert found, cursor
    started = lab.run(f"systemctl start {unit}.service")
    assert started.rc == 0, started.stderr
    deadline = time.monotonic() + wait
    while True:
        lines = []
        for entry in lab.check_output(f"journalctl --after-cursor={shlex.quote(found.group(1))} "
                                      "-o json --output-fields=_SYSTEMD_UNIT,MESSAGE --no-pager").splitlines():
            fields = json.loads(entry)
            if fields.get("_SYSTEMD_UNIT") == f"{unit}.service":
                message = fields.get("MESSAGE") or ""
                # journald gives a message that is not valid UTF-8 as a list of bytes
                lines.append(bytes(message).decode(errors="replace") if isinstance(message, list) else message)
        said = "\n".join(lines)
        if ended(said) or time.monotonic() > deadline:
            return said
        time.sleep(0.5)


def test_an_unsynchronised_clock_alerts_the_msp_once(lab, mailsink, expect, request):
    """The check reads the kernel's answer (the lab's containers share this machine's kernel).
    Unsynchronised (with the lab's alert_after_minutes 0): one warning naming the servers, and
    none from the next check within realert_hours. Synchronised: no alert."""
    if not expect("system_baseline_time_enabled"):
        not_applicable("time part disabled in this inventory")
    assert expect("system_baseline_time_alert_after_minutes") == 0, "the lab alerts at the first check"
    mail_host = lab.check_output("postconf -h myhostname")
    # The timer's own runs stay out of the way (its first one comes 5 minutes after boot, about
    # when verify runs: a session-9 run met it, the test's start joining a run that had alerted).
    hold_timer(lab, request, "cabinet-time-check", 60)
    lab.check_output("rm -f /var/lib/cabinet/time/state.json")
    before = len(mailsink.alerts(mail_host, ROLE, "Clock not synchronised"))

    def check() -> str:
        return run_service(lab, "cabinet-time-check", lambda said: "cabinet-time-check: done" in said)

    said = check()
    assert "clock synchronised" in said or "clock NOT synchronised" in said, said
    if "clock NOT synchronised" in said:
        assert "ALERT [warning] Clock not synchronised" in said, said
        alert = mailsink.wait_alert(mail_host, ROLE, "Clock not synchronised", before=before)
        assert alert["X-Cabinet-Severity"] == "warning"
        assert all(server in alert["body"] for server in expect("system_baseline_time_servers")), alert["body"]
        again = check()
        assert "clock NOT synchronised" in again and "ALERT" not in again, again
    else:
        assert "ALERT" not in said, said
        not_applicable("this machine's kernel clock is synchronised, so the lab's is: the alert path is "
                       "covered by tests/unit/test_cabinet_time.py only")


# ----------------------------------------------------------------------------- lab: log forwarding
def test_logs_reach_the_log_host_and_none_is_lost_while_it_is_away(lab, mailsink, expect, request):
    """A line logged on the host reaches the MSP's log host (the lab's sink, over TLS, RFC 5424
    lines octet-counted). The hosts' tests run side by side and share the sink, so each host
    proves one fault. Debian 12: the log host stopped, lines logged meanwhile, and rsyslog
    restarted in between, arrive once it is back (the queue is on disk), except the one line
    rsyslog was trying to send when it stopped (measured: rsyslog drops its in-flight line at
    shutdown while the action is suspended; README "Limits"). Debian 13: a log host whose
    certificate does not carry the expected name receives nothing."""
    if not expect("system_baseline_logging_enabled") or not expect("system_baseline_log_forwarding_enabled"):
        not_applicable("log forwarding is off in this inventory")
    marker = f"cabinet-lab-{lab.inventory_name}-{time.time_ns()}"
    fqdn = lab.check_output("hostname")

    def received(text: str, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in mailsink.host.run("cat /var/log/logsink/received.log").stdout.splitlines()
                     if text in line]
            if found:
                return found[-1]
            if time.monotonic() > deadline:
                return None
            time.sleep(1)

    lab.check_output(f"logger -t cabinet-lab {marker}-1")
    line = received(f"{marker}-1", 120)
    assert line, "a line logged on the host never reached the log host"
    # RFC 5424: version 1, a full timestamp with its zone, the host's name.
    assert re.search(r" <\d+>1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d) " + re.escape(fqdn) + " ", line), line
    if lab.system_info.release.split(".")[0] == "12":
        request.addfinalizer(lambda: mailsink.host.run("systemctl start logsink"))
        mailsink.host.check_output("systemctl stop logsink")
        lab.check_output(f"logger -t cabinet-lab {marker}-2")  # the line in flight (it stays in the action)
        time.sleep(3)
        lab.check_output(f"logger -t cabinet-lab {marker}-3")  # a line queued behind it
        time.sleep(1)
        lab.check_output("systemctl restart rsyslog")  # what is queued must survive it: the queue is on disk
        lab.check_output(f"logger -t cabinet-lab {marker}-4")
        time.sleep(3)
        assert not received(f"{marker}-3", 0), "the log host received a line while stopped"
        mailsink.host.check_output("systemctl start logsink")
        assert received(f"{marker}-3", 120) and received(f"{marker}-4", 30), \
            "lines queued while the log host was away were lost across a restart of rsyslog"
        # marker-2, in flight when rsyslog stopped, is not asserted either way: README "Limits".
    else:
        restored: list[bool] = []
        request.addfinalizer(lambda: restored or converge(lab, request, "--tags", "system_baseline_logging"))
        wrong = converge(lab, request, "--tags", "system_baseline_logging", "-e", "system_baseline_log_peer_name=loghost.invalid")
        assert wrong.returncode == 0, wrong.stdout[-3000:]
        lab.check_output(f"logger -t cabinet-lab {marker}-in-flight")  # held by the failing action
        time.sleep(3)
        lab.check_output(f"logger -t cabinet-lab {marker}-5")  # queued behind it
        assert not received(f"{marker}-5", 20) and not received(f"{marker}-in-flight", 0), \
            "rsyslog sent to a log host whose certificate has another name"
        back = converge(lab, request, "--tags", "system_baseline_logging")
        assert back.returncode == 0, back.stdout[-3000:]
        restored.append(True)
        # The line waited in the queue: the right log host gets it.
        assert received(f"{marker}-5", 120), "the line queued while the log host was refused was lost"


# ----------------------------------------------------------------------------- lab: packages and services
def build_package(lab, name: str, depends: str = "") -> None:
    """Install a package of the lab's own named ``name`` (a stand-in: the archive's would do
    the same), depending on ``depends``."""
    control = f"Package: {name}\nVersion: 99.lab\nArchitecture: all\nMaintainer: tests <t@cabinet.invalid>\n"
    control += (f"Depends: {depends}\n" if depends else "") + "Description: lab stand-in\n"
    script = f"""set -e
b=$(mktemp -d); mkdir -p $b/DEBIAN $b/usr/share/doc/{name}
printf '{control}' > $b/DEBIAN/control; echo lab > $b/usr/share/doc/{name}/lab
dpkg-deb --root-owner-group --build $b /root/{name}.deb >/dev/null; rm -rf $b
dpkg --install /root/{name}.deb >/dev/null; rm -f /root/{name}.deb"""
    lab.check_output(f"bash -c {shlex.quote(script)}")


def test_unneeded_packages_purged_services_masked_and_a_removal_that_takes_others_refused(lab, expect, request):
    """A listed package (tftp-hpa) is purged, and a listed service (cups-browsed, as its package
    installs it: a unit under /usr/lib, running) is stopped and masked, a start refused. Then
    tftp-hpa again, with a package that depends on it: the run stops before any change, naming
    that package, and both stay."""
    if not expect("system_baseline_packages_enabled"):
        not_applicable("packages part disabled in this inventory")
    assert "tftp-hpa" in expect("system_baseline_packages_absent")
    assert "cups-browsed.service" in expect("system_baseline_services_masked")
    unit = "/usr/lib/systemd/system/cups-browsed.service"
    request.addfinalizer(lambda: lab.run("dpkg --purge cabinet-lab-needs-tftp tftp-hpa"))
    request.addfinalizer(lambda: lab.run(f"systemctl unmask cups-browsed.service; systemctl stop cups-browsed.service; "
                                         f"rm -f {unit}; systemctl daemon-reload"))
    build_package(lab, "tftp-hpa")
    lab.check_output(f"printf '[Service]\\nExecStart=/bin/sleep infinity\\n' > {unit} && systemctl daemon-reload "
                     "&& systemctl start cups-browsed.service")
    done = converge(lab, request, "--tags", "system_baseline_packages")
    assert done.returncode == 0, done.stdout[-3000:]
    assert not installed(lab, "tftp-hpa")
    assert lab.run("systemctl is-enabled cups-browsed.service").stdout.strip() == "masked"
    assert lab.run("systemctl is-active cups-browsed.service").stdout.strip() != "active"
    assert lab.run("systemctl start cups-browsed.service").rc != 0

    build_package(lab, "tftp-hpa")
    build_package(lab, "cabinet-lab-needs-tftp", depends="tftp-hpa")
    refused = converge(lab, request, "--tags", "system_baseline_packages")
    assert refused.returncode != 0
    assert "purging tftp-hpa would also remove or install cabinet-lab-needs-tftp" in refused.stdout, refused.stdout[-3000:]
    assert installed(lab, "tftp-hpa") and installed(lab, "cabinet-lab-needs-tftp")


# ----------------------------------------------------------------------------- lab: runs as the MSP's admin
def converge(lab, request, *extra: str, login: list[str] | None = None) -> subprocess.CompletedProcess:
    """The role on this host. A fault test names the part it exercises (--tags, as an MSP
    does): the validation always runs, the other parts are not run again for nothing."""
    return run_playbook("system_baseline.yml", lab, request, *extra, login=login)


def files_state(lab) -> dict[str, str]:
    return {path: lab.run(f"sha256sum {path} 2>/dev/null").stdout.split(" ")[0]
            for path in (DROPIN, "/etc/nftables.conf", "/etc/sysctl.d/90-cabinet-baseline.conf",
                         "/etc/sudoers.d/00-cabinet-baseline", "/etc/pam.d/su")}


def table_rules(lab) -> str:
    """Our loaded table without its counters (they move with traffic)."""
    return re.sub(r"counter packets \d+ bytes \d+ ", "", lab.run(f"nft list table inet {TABLE}").stdout)


def test_session_survives_a_ruleset_change(lab, lab_admin, admin_login, request):
    """The run comes over SSH as the admin, changes the firewall, proves a new session."""
    extra = json.dumps({"system_baseline_firewall_extra_rules": [
        {"name": "labprobe", "port": 9999, "proto": "tcp", "from": ["lab_mailsink"]},
        {"name": "labsecond", "port": 9998, "proto": "tcp", "from": ["lab_mailsink"]}]})
    try:
        changed = converge(lab, request, "--tags", "system_baseline_firewall", "-e", extra, login=admin_login)
        assert changed.returncode == 0, changed.stdout[-3000:]
        assert "tcp dport 9998 accept" in table_rules(lab)
        assert "Open a new SSH session from the controller and sudo -n true (firewall)" in changed.stdout
        assert admin_gets_in(lab, lab_admin) == []
    finally:
        back = converge(lab, request, "--tags", "system_baseline_firewall", login=admin_login)
        assert back.returncode == 0, back.stdout[-3000:]
    assert "9998" not in table_rules(lab)


def ssh_answer(source, address: str) -> str:
    """What ``source`` gets from address:22 within 3 s: "banner", "refused" (a connection
    refused, reset or closed without a banner: a ban or a penalty) or "timeout" (a drop)."""
    script = (f"import socket\ns = socket.socket()\ns.settimeout(3)\ntry:\n    s.connect(({address!r}, 22))\n"
              "    print('banner' if s.recv(64).startswith(b'SSH-') else 'refused')\n"
              "except socket.timeout:\n    print('timeout')\nexcept OSError:\n    print('refused')\n")
    return source.check_output("python3 -c %s", script)


def ssh_banner(source, address: str) -> bool:
    return ssh_answer(source, address) == "banner"


def banned(lab) -> list[str]:
    """fail2ban's banned addresses in the sshd jail (Debian 12)."""
    status = lab.check_output("fail2ban-client status sshd")
    line = next((l for l in status.splitlines() if "Banned IP list:" in l), "")
    return line.split("Banned IP list:", 1)[1].split() if line else []


def local_banner(address: str) -> bool:
    """Whether this machine (the controller, on the MSP's network in the lab) gets the banner."""
    import socket  # noqa: PLC0415 - only here

    try:
        with socket.create_connection((address, 22), timeout=3) as connection:
            return connection.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def test_a_source_that_keeps_failing_is_shut_out_not_the_msps(lab, inventory, expect, lab_admin, request):
    """A machine SSH is open to sends garbage instead of logging in, again and again (a
    scanner): it is shut out (fail2ban on Debian 12, OpenSSH's penalties on 13), while the MSP's
    network, exempt, still gets in."""
    if not expect("system_baseline_ssh_ban_enabled"):
        not_applicable("bans turned off in this inventory")
    if not firewall_usable(lab):
        not_applicable("this host may not manage its packet filter")
    address = lab.check_output("hostname -I").split()[0]
    sink = connect(inventory, inventory.group("lab_mailsink")[0])
    sink_address = sink.check_output("hostname -I").split()[0]
    msp = [s for s in expect("system_baseline_firewall_ssh_sources") if s != "any"]
    assert msp, "the lab names the MSP's network"
    # SSH opened to the mail sink by a rule of the practice's own (as the off-site server's is to
    # the practices): the SSH sources are the MSP's networks, which are exempt.
    extra = json.dumps({"system_baseline_firewall_extra_rules": [
        *expect("system_baseline_firewall_extra_rules"), {"name": "sshprobe", "port": 22, "proto": "tcp", "from": ["lab_mailsink"]}],
        "system_baseline_ssh_ban_after_failures": 3})
    debian12 = int(lab.system_info.release.split(".")[0]) < 13
    try:
        changed = converge(lab, request, "--tags", "system_baseline_ssh,system_baseline_firewall", "-e", extra)
        assert changed.returncode == 0, changed.stdout[-3000:]
        assert ssh_banner(sink, address), "SSH is not open to the mail sink for the test"
        hammer = ("import socket\nfor _ in range(25):\n    s = socket.socket(); s.settimeout(3)\n    try:\n"
                  f"        s.connect(({address!r}, 22)); s.recv(64); s.sendall(b'garbage\\r\\n'); s.recv(64)\n"
                  "    except OSError:\n        pass\n    s.close()\n")
        # The controller, on the MSP's (exempt) network, first; then the mail sink.
        exec(hammer, {})  # noqa: S102 - the same script, from here
        sink.check_output("python3 -c %s", hammer)
        deadline = time.monotonic() + 30
        while (answer := ssh_answer(sink, address)) == "banner":
            assert time.monotonic() < deadline, "the mail sink still gets sshd's banner after 25 bad connections"
            time.sleep(1)
        if debian12:
            assert sink_address in banned(lab), "shut out, but not by fail2ban"
        else:
            assert answer == "refused", f"the mail sink's connection {answer}: a drop, not OpenSSH's penalty"
            assert "penalty" in lab.check_output("journalctl -u ssh --since '-2min' --no-pager -o cat"), \
                "sshd logged no penalty"
        # Both sources were seen before the ban (fail2ban reads the journal in order): the
        # controller's 25 were counted and ignored.
        assert local_banner(address), "the MSP's network (exempt) was shut out too"
        if debian12:
            assert not set(banned(lab)) & set(lab.check_output("hostname -I").split() + msp), banned(lab)
        assert admin_gets_in(lab, lab_admin) == []
    finally:
        lab.run("fail2ban-client unban --all" if debian12 else "systemctl restart ssh")
        back = converge(lab, request, "--tags", "system_baseline_ssh,system_baseline_firewall")
        assert back.returncode == 0, back.stdout[-3000:]


def test_a_wrong_ruleset_is_refused_before_loading(lab, mailsink, request):
    """A ruleset nft -c refuses (injected through the role's internal table name) is never
    loaded: the table in force and the file stay, and the MSP is alerted."""
    if not firewall_usable(lab):
        not_applicable("this host may not manage its packet filter")
    mail_host = lab.check_output("postconf -h myhostname")
    before_alerts = len(mailsink.alerts(mail_host, ROLE, "Firewall rolled back"))
    before, rules = files_state(lab), table_rules(lab)
    bad = converge(lab, request, "--tags", "system_baseline_firewall",
                   "-e", json.dumps({"__system_baseline_nft_table": "cabinet filter",
                                     "system_baseline_firewall_log_per_minute": 11}))
    assert bad.returncode != 0
    assert "The new firewall of" in bad.stdout and "The previous settings are back" in bad.stdout, bad.stdout[-3000:]
    assert files_state(lab) == before
    assert table_rules(lab) == rules
    alert = mailsink.wait_alert(mail_host, ROLE, "Firewall rolled back", before=before_alerts)
    assert alert["X-Cabinet-Severity"] == "critical"


def test_a_setting_sshd_refuses_is_rolled_back(lab, lab_admin, admin_login, mailsink, request):
    """An sshd keyword sshd -t refuses (system_baseline_ssh_extra_settings): the previous
    settings come back before any reload, the MSP is alerted, the admin still gets in."""
    mail_host = lab.check_output("postconf -h myhostname")
    before_alerts = len(mailsink.alerts(mail_host, ROLE, "SSH settings rolled back"))
    before = lab.file(DROPIN).content_string
    bad = converge(lab, request, "--tags", "system_baseline_ssh",
                   "-e", json.dumps({"system_baseline_ssh_extra_settings": {"LabBogusKeyword": "yes"}}),
                   login=admin_login)
    assert bad.returncode != 0
    assert "The new SSH settings of" in bad.stdout, bad.stdout[-3000:]
    assert lab.file(DROPIN).content_string == before
    assert lab.run("sshd -t").rc == 0
    mailsink.wait_alert(mail_host, ROLE, "SSH settings rolled back", before=before_alerts)
    assert admin_gets_in(lab, lab_admin) == []


def test_a_lockout_the_checks_cannot_see_is_rolled_back_at_once(lab, lab_admin, admin_login, mailsink, request):
    """Settings sshd accepts but that refuse the admin (DenyUsers): the new SSH session from
    the controller fails, and the run, still holding its own connection, rolls back at once."""
    mail_host = lab.check_output("postconf -h myhostname")
    before_alerts = len(mailsink.alerts(mail_host, ROLE, "SSH settings rolled back"))
    before = lab.file(DROPIN).content_string
    locked = converge(lab, request, "--tags", "system_baseline_ssh",
                      "-e", json.dumps({"system_baseline_ssh_extra_settings": {"DenyUsers": lab_admin}}),
                      login=admin_login)
    assert locked.returncode != 0, "the run proved a session that DenyUsers refuses"
    assert f"A new SSH session as {lab_admin} failed" in locked.stdout, locked.stdout[-3000:]
    assert "The previous settings are back" in locked.stdout, locked.stdout[-3000:]
    assert lab.file(DROPIN).content_string == before
    mailsink.wait_alert(mail_host, ROLE, "SSH settings rolled back", before=before_alerts)
    assert admin_gets_in(lab, lab_admin) == []


def test_a_rollback_that_ran_out_during_the_proof_is_not_recorded_as_proven(lab, lab_admin, admin_login, mailsink,
                                                                             request):
    """The timer runs out while the run is still writing, reloading or proving (here after
    1 s, through the role's internal value; a slow host does it with the real ones): the
    rollback puts the previous settings back, and the run must say so and fail, not record the
    settings as proven while the previous ones are in force (before session 9 it ended ok).
    The extra keyword has a digit in its name, which the validation refused before session 9."""
    mail_host = lab.check_output("postconf -h myhostname")
    before_alerts = len(mailsink.alerts(mail_host, ROLE, "SSH settings rolled back"))
    before = lab.file(DROPIN).content_string
    proven = lab.check_output("cat /var/lib/cabinet-baseline/ssh.proven")
    late = converge(lab, request, "--tags", "system_baseline_ssh",
                    "-e", json.dumps({"system_baseline_ssh_extra_settings": {"X11UseLocalhost": "yes"},
                                                    "__system_baseline_revert_after": 1}), login=admin_login)
    assert late.returncode != 0, "the run recorded settings as proven after their rollback had run"
    assert "The rollback timer ran out (1 s) before the run had proven the new SSH settings" in late.stdout, \
        late.stdout[-3000:]
    assert lab.file(DROPIN).content_string == before
    assert lab.check_output("cat /var/lib/cabinet-baseline/ssh.proven") == proven
    assert lab.run("test -e /var/lib/cabinet-baseline/ssh.pending").rc != 0
    assert lab.run("systemctl is-active cabinet-baseline-revert-ssh.timer").stdout.strip() != "active"
    # Two alerts: the timer's own, then the rescue's (it puts the proven copy back once more).
    mailsink.wait_alert(mail_host, ROLE, "SSH settings rolled back", before=before_alerts + 1)
    bodies = [m["body"] for m in mailsink.alerts(mail_host, ROLE, "SSH settings rolled back")[before_alerts:]]
    assert any("no confirmation before the timer ran out" in b for b in bodies), bodies
    assert admin_gets_in(lab, lab_admin) == []
    # The rollbacks' lock: no local user may hold it (flock needs only a descriptor).
    lock = lab.file("/var/lib/cabinet-baseline/revert.lock")
    assert lock.exists and lock.user == "root" and lock.mode == 0o600
    held = lab.run("setpriv --reuid=nobody --regid=nogroup --clear-groups flock -n /var/lib/cabinet-baseline/revert.lock true")
    assert held.rc != 0 and "Permission denied" in held.stderr, f"an unprivileged user could take the lock: {held.stderr}"


def test_a_marker_left_by_an_interrupted_run_is_proven_again_and_cleared(lab, request):
    """A run that died between writing its "pending" marker and arming the timer leaves the
    marker alone: the next run goes through the change and the proof again and ends with it
    gone (before session 9 the marker stayed, for a false rollback alert at the next boot)."""
    lab.check_output("install -m 0600 /dev/null /var/lib/cabinet-baseline/ssh.pending")
    again = converge(lab, request, "--tags", "system_baseline_ssh")
    assert again.returncode == 0, again.stdout[-3000:]
    assert re.search(r"Arm the rollback in case the admin cannot get back in\] \*+\nchanged:", again.stdout), \
        again.stdout[-3000:]
    assert lab.run("test -e /var/lib/cabinet-baseline/ssh.pending").rc != 0
    assert lab.run("systemctl is-active cabinet-baseline-revert-ssh.timer").stdout.strip() != "active"


def without_multiplexing(login: list[str]) -> list[str]:
    """The admin's login with a new SSH connection for every task (no ControlMaster)."""
    variables = json.loads(login[1])
    options = [o for o in shlex.split(variables["ansible_ssh_args"]) if not o.startswith("Control") and o != "-o"]
    variables["ansible_ssh_args"] = " ".join(["-o ControlMaster=no", "-o ControlPath=none"] + [f"-o {o}" for o in options])
    return ["-e", json.dumps(variables)]


def test_a_run_that_loses_its_host_is_rolled_back_by_the_timer(lab, lab_admin, admin_login, ssh_target, mailsink,
                                                               request, expect):
    """The same settings, for a run that opens a new SSH connection for every task (Ansible's
    own strategy, no multiplexing): once sshd refuses the admin, the run cannot even roll back
    (the host is unreachable), and the timer armed before the reload puts the settings back."""
    mail_host = lab.check_output("postconf -h myhostname")
    before_alerts = len(mailsink.alerts(mail_host, ROLE, "SSH settings rolled back"))
    before = lab.file(DROPIN).content_string
    started = time.monotonic()
    # Only the SSH part (and the validation, which always runs): a new connection a task is slow.
    locked = run_playbook("system_baseline.yml", lab, request, "--tags", "system_baseline_ssh",
                          "-e", json.dumps({"system_baseline_ssh_extra_settings": {"DenyUsers": lab_admin}}),
                          login=without_multiplexing(admin_login), own_strategy=True)
    assert locked.returncode != 0
    assert "UNREACHABLE" in locked.stdout, locked.stdout[-3000:]
    assert f"DenyUsers {lab_admin}" in lab.file(DROPIN).content_string, "the settings were rolled back by the run itself"
    mailsink.wait_alert(mail_host, ROLE, "SSH settings rolled back", before=before_alerts,
                        timeout=expect("system_baseline_ssh_revert_seconds") + 90)
    assert time.monotonic() - started >= expect("system_baseline_ssh_revert_seconds") - 5
    assert lab.file(DROPIN).content_string == before
    assert lab.run("systemctl is-active cabinet-baseline-revert-ssh.timer").stdout.strip() != "active"
    assert ssh(ssh_target, lab_admin, command="sudo -n true").returncode == 0
    assert admin_gets_in(lab, lab_admin) == []


# ----------------------------------------------------------------------------- lab: bad input
@pytest.mark.parametrize("extra, variable", [
    ({"system_baseline_ssh_allow_groups": ["lab-no-such-group"]}, "system_baseline_ssh_allow_groups"),
    ({"system_baseline_ssh_allow_groups": ["nogroup"]}, "system_baseline_ssh_allow_groups"),
    ({"system_baseline_firewall_extra_rules": [{"name": "bad", "port": 70000, "proto": "tcp", "from": "any"}]},
     "port expected as a number from 1 to 65535"),
    ({"system_baseline_firewall_extra_rules": [{"name": "bad", "port": 80, "proto": "icmp", "from": "any"}]},
     "proto expected as tcp or udp"),
    ({"system_baseline_ssh_kex_algorithms": ["curve25519-sha256", "lab-unknown-kex@example"]},
     "system_baseline_ssh_kex_algorithms"),
    ({"system_baseline_ssh_extra_settings": {"PermitRootLogin": "yes"}}, "system_baseline_ssh_extra_settings"),
    ({"system_baseline_firewall_ssh_sources": ["192.0.2.0/24"]}, "system_baseline_firewall_ssh_sources"),
    # the tests' listener on 8081 (fixture listeners), which the lab's inventory lists as closed
    ({"system_baseline_firewall_closed_ports": []}, "8081/tcp"),
])
def test_bad_input_stops_before_any_change(lab, lab_admin, admin_login, listeners, request, extra, variable):
    """Each stops in validation, naming what was wrong, and nothing changes. The runs come as
    the admin over SSH, so the account and client checks see a real SSH session."""
    before, rules = files_state(lab), table_rules(lab)
    run = converge(lab, request, "-e", json.dumps(extra), login=admin_login)
    assert run.returncode != 0
    assert variable in run.stdout and "Nothing was changed" in run.stdout, run.stdout[-3000:]
    assert files_state(lab) == before
    assert table_rules(lab) == rules


# ----------------------------------------------------------------------------- lab: integrity
# These come after the runs above, which install no package: the lab's last package operation
# (the packages test's) is then out of the check's 120-s window, and
# outside_package_operations() need not sleep for it. (Before session 18 they came after the
# audit, SSH, firewall and clock checks, a couple of minutes after the converge's packages, and
# that sleep could last up to two minutes a host.)
@pytest.fixture(scope="module")
def integrity(lab, expect, request):
    """The integrity check, run by hand: the timer's own runs stopped, no run of the toolkit in
    progress (a run another test killed would explain everything for six hours), and the host
    taken as it is. Returns a function that runs the check's service and says what it printed."""
    if not expect("system_baseline_integrity_enabled"):
        not_applicable("integrity part disabled in this inventory")
    hold_timer(lab, request, "cabinet-integrity-check", 300)
    lab.check_output("rm -rf /var/lib/cabinet/integrity/runs")
    accepted = lab.run("cabinet-integrity accept")
    assert accepted.rc == 0, accepted.stderr

    def check() -> dict:
        """One run of the service: what it printed last, its log, and the explained changes."""
        lab.check_output("rm -f /var/lib/cabinet/integrity/last-report.json")
        said = run_service(lab, "cabinet-integrity-check",
                           lambda said: any(line.startswith("{") for line in said.splitlines()))
        printed = [line for line in said.splitlines() if line.startswith("{")]
        assert printed, said
        report = lab.run("cat /var/lib/cabinet/integrity/last-report.json")
        explained = json.loads(report.stdout)["explained"] if report.rc == 0 else []
        return json.loads(printed[-1]) | {"log": said, "explained": explained}

    return check


LAB_PACKAGE = "cabinet-lab-integrity"


def outside_package_operations(lab) -> None:
    """Wait until the last package operation (the converge's, another test's) is out of the
    window the check gives it (cabinet-integrity's WINDOW_AFTER, 120 s): a change made now is
    no package's."""
    last = lab.run("tail -n 1 /var/log/dpkg.log").stdout[:19]
    if not last:
        return
    ended = lab.check_output(f"date -d '{last}' +%s")
    wait = int(ended) + 125 - int(lab.check_output("date +%s"))
    if wait > 0:
        time.sleep(wait)


def build_lab_package(lab, version: str) -> str:
    """A package with a program, a data file and a conffile, version ``version``: its .deb."""
    script = f"""set -e
b=$(mktemp -d); mkdir -p $b/DEBIAN $b/usr/bin $b/usr/share/{LAB_PACKAGE} $b/etc
printf '#!/bin/sh\necho {version}\n' > $b/usr/bin/{LAB_PACKAGE}; chmod 755 $b/usr/bin/{LAB_PACKAGE}
echo 'data {version}' > $b/usr/share/{LAB_PACKAGE}/data
echo 'setting = {version}' > $b/etc/{LAB_PACKAGE}.conf
echo /etc/{LAB_PACKAGE}.conf > $b/DEBIAN/conffiles
printf 'Package: {LAB_PACKAGE}\nVersion: {version}\nArchitecture: all\nMaintainer: tests <t@cabinet.invalid>\nDescription: integrity test\n' > $b/DEBIAN/control
dpkg-deb --root-owner-group --build $b /root/{LAB_PACKAGE}_{version}_all.deb >/dev/null; rm -rf $b
echo /root/{LAB_PACKAGE}_{version}_all.deb"""
    return lab.check_output(f"bash -c {shlex.quote(script)}")


def test_a_change_outside_package_updates_reaches_the_msp_once(lab, integrity, mailsink, request):
    """A file added and one changed by hand: one warning naming both, the database kept (so
    the next check still sees them), no second alert the next day; accepted, they are gone."""
    mail_host = lab.check_output("postconf -h myhostname")
    request.addfinalizer(lambda: lab.run("rm -f /etc/profile.d/lab-integrity-probe* /usr/local/bin/lab-integrity-probe; "
                                         "cabinet-integrity accept"))
    before = len(mailsink.alerts(mail_host, ROLE, "Files changed outside package updates"))
    outside_package_operations(lab)
    lab.check_output("echo '# lab' > /etc/profile.d/lab-integrity-probe && echo 'exit 0' > /usr/local/bin/lab-integrity-probe")
    found = integrity()
    assert "added /etc/profile.d/lab-integrity-probe" in found["unexplained"], found["explained"]
    assert "added /usr/local/bin/lab-integrity-probe" in found["unexplained"], found["explained"]
    assert found["database"] == "kept"
    alert = mailsink.wait_alert(mail_host, ROLE, "Files changed outside package updates", before=before)
    assert alert["X-Cabinet-Severity"] == "warning"
    assert "added /etc/profile.d/lab-integrity-probe" in alert["body"], alert["body"]
    again = integrity()
    assert again["unexplained"] == found["unexplained"] and "ALERT" not in again["log"], again["log"]
    # The MSP accepts what the alert named, by its id: not once something else has changed.
    assert found["alert_id"] in alert["body"]
    lab.check_output("echo '# lab, later' > /etc/profile.d/lab-integrity-probe-2")
    refused = lab.run(f"cabinet-integrity accept {found['alert_id']}")
    assert refused.rc == 5 and "nothing was accepted" in refused.stderr, refused.stdout + refused.stderr
    lab.check_output("rm /etc/profile.d/lab-integrity-probe-2")
    accepted = lab.run(f"cabinet-integrity accept {found['alert_id']}")
    assert accepted.rc == 0, accepted.stdout + accepted.stderr
    assert integrity()["unexplained"] == []
    assert len(mailsink.alerts(mail_host, ROLE, "Files changed outside package updates")) == before + 1


def test_a_package_update_is_explained_but_not_a_file_tampered_with_during_it(lab, integrity, mailsink, request):
    """An upgrade (program, data, conffile replaced) and a purge move the database forward
    without an alert; a file of the package changed within the upgrade's window is still
    reported, as its content is not what dpkg installed."""
    request.addfinalizer(lambda: lab.run(f"dpkg --purge {LAB_PACKAGE}; rm -f /root/{LAB_PACKAGE}_*.deb; "
                                         "cabinet-integrity accept"))
    first, second = build_lab_package(lab, "1.0"), build_lab_package(lab, "2.0")
    lab.check_output(f"dpkg -i {first} >/dev/null && cabinet-integrity accept >/dev/null")
    lab.check_output(f"dpkg -i {second} >/dev/null && echo 'data tampered' > /usr/share/{LAB_PACKAGE}/data")
    found = integrity()
    assert found["unexplained"] == [f"changed /usr/share/{LAB_PACKAGE}/data (not the content its package installed)"], found
    assert f"changed /usr/bin/{LAB_PACKAGE} (a package operation)" in found["explained"], found
    assert f"changed /etc/{LAB_PACKAGE}.conf (a package operation)" in found["explained"], found
    lab.check_output(f"dpkg -i {second} >/dev/null")  # reinstalled: the package's content again
    restored = integrity()
    assert restored["unexplained"] == [] and restored["database"] == "updated", restored
    lab.check_output(f"dpkg --purge {LAB_PACKAGE} >/dev/null")
    purged = integrity()
    assert purged["unexplained"] == [] and purged["database"] == "updated", purged


def test_a_missing_database_is_rebuilt_and_alerted(lab, integrity, mailsink):
    mail_host = lab.check_output("postconf -h myhostname")
    before = len(mailsink.alerts(mail_host, ROLE, "File integrity database missing"))
    lab.check_output("rm /var/lib/aide/aide.db")
    assert integrity()["database"] == "built"
    assert lab.file("/var/lib/aide/aide.db").is_file
    alert = mailsink.wait_alert(mail_host, ROLE, "File integrity database missing", before=before)
    assert alert["X-Cabinet-Severity"] == "critical"


def test_a_run_s_changes_are_explained(lab, integrity, request):
    """A run of the baseline that writes a file: the next check explains it (the run's window,
    from playbooks/validate.yml to playbooks/seal.yml) and moves the database forward. (The
    file is removed first, out of any window, so that the run must write it again; the removal
    and the new file are one change to AIDE, made by the run.)"""
    lab.check_output("rm /etc/cabinet/integrity.json")
    changed = converge(lab, request, "--tags", "system_baseline_integrity")
    assert changed.returncode == 0, changed.stdout[-3000:]
    assert lab.file("/etc/cabinet/integrity.json").is_file
    found = integrity()
    assert found["unexplained"] == [] and found["database"] == "updated", found
    assert "changed /etc/cabinet/integrity.json (a cabinet-hardening run)" in found["explained"], found["explained"]


def test_a_package_file_changed_by_hand_reaches_the_msp(lab, expect, mailsink, request):
    """A program of a package changed outside dpkg: the weekly verification names it and its
    package in a warning, once; reinstalled, an info alert says the files match again."""
    if not expect("system_baseline_integrity_enabled"):
        not_applicable("integrity part disabled in this inventory")
    mail_host = lab.check_output("postconf -h myhostname")
    hold_timer(lab, request, "cabinet-packages-verify", 120)
    lab.check_output("rm -f /var/lib/cabinet/packages-verify/state.json")
    program = lab.check_output("readlink -f /usr/bin/which")  # debianutils' (an alternative)
    request.addfinalizer(lambda: lab.run("apt-get install -y -q --reinstall debianutils"))
    lab.check_output(f"cp -p {program} /root/which.saved && echo '# changed' >> {program}")
    before = len(mailsink.alerts(mail_host, ROLE, "Package files differ"))

    def verify() -> str:
        return run_service(lab, "cabinet-packages-verify", lambda s: "cabinet-packages-verify: done" in s, wait=120)

    said = verify()
    assert "ALERT [warning] Package files differ from their packages" in said, said
    alert = mailsink.wait_alert(mail_host, ROLE, "Package files differ", before=before)
    assert f"changed {program} (debianutils)" in alert["body"], alert["body"]
    again = verify()
    assert "ALERT" not in again, again
    lab.check_output(f"cp -p /root/which.saved {program} && rm -f /root/which.saved")
    back = verify()
    assert "ALERT [info] Package files match their packages again" in back, back


# ----------------------------------------------------------------------------- lab: inactive accounts
def shadow_expire(lab, name: str) -> str:
    return lab.check_output(f"getent shadow {name}").split(":")[7]


def test_an_account_nobody_used_for_the_days_is_locked_and_the_msp_told(lab, expect, mailsink, integrity, request):
    """Four people's accounts the check has watched (its state says so) for one day more than
    the setting, passwords set long ago: one opened a session since (kept), one is exempt
    (kept), one never logged in (locked), and one a local user made look used by writing the
    sshd session line into the journal himself (locked: only root's lines count). One alert
    names the two; the lock's change of /etc/shadow is explained to the integrity check as the
    toolkit's; the next check says nothing more; an admin's unlock holds."""
    if not expect("system_baseline_accounts_enabled") or not expect("system_baseline_inactive_enabled"):
        not_applicable("inactive-account check disabled in this inventory")
    days = expect("system_baseline_inactive_days")
    exempt = expect("system_baseline_inactive_exempt")
    assert "cab-keep" in exempt, "the lab inventory exempts cab-keep"
    names = ["cab-dormant", "cab-recent", "cab-forged", "cab-keep"]
    mail_host = lab.check_output("postconf -h myhostname")
    hold_timer(lab, request, "cabinet-accounts-check", 120)
    for name in names:
        request.addfinalizer(lambda name=name: lab.run(f"userdel --remove {name}"))
        lab.check_output(f"useradd --create-home --shell /bin/bash {name} && chage --lastday 2020-01-01 {name}")
    now = int(lab.check_output("date +%s"))
    state = {"first_seen": {n: now - (days + 1) * 86400 for n in names}, "last_run": now - 5}
    lab.check_output("install -d -m 0700 /var/lib/cabinet/accounts && cat > /var/lib/cabinet/accounts/state.json <<'EOF'\n"
                     + json.dumps(state) + "\nEOF")
    uid = lab.check_output("id -u cab-forged")
    # A session PAM opens as root (runuser -l goes through pam_unix's session), and the forgery.
    lab.check_output("runuser -l cab-recent -c true")
    forged = f"pam_unix(sshd:session): session opened for user cab-forged(uid={uid}) by (uid=0)"
    lab.check_output(f"runuser -u nobody -- logger -t sshd {shlex.quote(forged)}")
    time.sleep(1)  # journald has the lines before the check reads them
    before = len(mailsink.alerts(mail_host, ROLE, "without use"))
    # The accounts made above are the test's own changes: taken, so that what follows is the lock's.
    assert lab.run("cabinet-integrity accept").rc == 0

    said = run_service(lab, "cabinet-accounts-check", lambda s: "cabinet-accounts-check: done" in s)
    assert "ALERT [warning] Accounts locked after" in said, said
    assert shadow_expire(lab, "cab-dormant") == "1" and shadow_expire(lab, "cab-forged") == "1"
    assert shadow_expire(lab, "cab-recent") == "" and shadow_expire(lab, "cab-keep") == ""
    # Locked means every way in: PAM's account check refuses the expired account, even to root's su.
    refused = lab.run("su --shell /bin/sh --command true cab-dormant")
    assert refused.rc != 0 and "expired" in (refused.stderr + refused.stdout).lower(), refused
    alert = mailsink.wait_alert(mail_host, ROLE, "without use", before=before)
    assert "cab-dormant" in alert["body"] and "cab-forged" in alert["body"], alert["body"]
    assert "cab-recent" not in alert["body"] and "cab-keep" not in alert["body"], alert["body"]
    found = integrity()
    assert "changed /etc/shadow (a cabinet-hardening run)" in found["explained"], found
    assert not any("/etc/shadow" in line for line in found["unexplained"]), found["unexplained"]

    again = run_service(lab, "cabinet-accounts-check", lambda s: "cabinet-accounts-check: done" in s)
    assert "ALERT" not in again, again
    lab.check_output("usermod --expiredate '' cab-dormant")
    unlocked = run_service(lab, "cabinet-accounts-check", lambda s: "cabinet-accounts-check: done" in s)
    assert "cab-dormant: unlocked by an administrator" in unlocked and "ALERT" not in unlocked, unlocked
    assert shadow_expire(lab, "cab-dormant") == ""
    assert len(mailsink.alerts(mail_host, ROLE, "without use")) == before + 1


# ----------------------------------------------------------------------------- lab: the ANSSI scanner
def oscap(lab, profile: str, tailoring: bool) -> dict[str, list[str]]:
    """Rule ids by result for one profile, evaluated on the lab host, read from the XCCDF
    results file (oscap's terminal output is meant for people)."""
    run = lab.run(anssi_scan.eval_command(profile, tailoring))
    # oscap: 0 all pass, 2 some rule failed; anything else is an error of the tool
    assert run.rc in (0, 2), run.stderr
    results = anssi_scan.rule_results(lab.check_output(f"cat {anssi_scan.REMOTE_RESULTS}"))
    assert len(results.get("pass", [])) > 20, f"{profile}: the scanner saw almost nothing: {results}"
    return results


@pytest.fixture(scope="module")
def scanner(lab, request):
    """The host as the role leaves it: a whole run first. The lab's fault tests before this
    came in as the admin over SSH, and their runs (one part each, --tags) do not sweep the
    people's home files: sudo's .sudo_as_admin_successful and Ansible's ~/.ansible, made with
    the 022 umask of a non-login SSH session, would fail the home-files rule until the next
    whole run closes them, as it does on a client's host."""
    if lab.system_info.release.split(".")[0] != "12":
        not_applicable("ComplianceAsCode's ANSSI content targets Debian 12 (ssg-debian12-ds.xml)")
    whole = run_playbook("system_baseline.yml", lab, request)
    assert whole.returncode == 0, whole.stdout[-3000:]
    install = lab.run("DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends openscap-scanner")
    assert install.rc == 0, install.stderr
    ds = anssi_scan.ssg_content()
    assert ds.is_file(), f"{ds} is missing: run `make setup` (scripts/setup-host.sh fetches it)"
    for local, remote in ((ds, anssi_scan.REMOTE_DS), (TAILORING, anssi_scan.REMOTE_TAILORING)):
        subprocess.run(["podman", "cp", str(local), f"{lab.inventory_name}:{remote}"], check=True, timeout=120)
    yield lab
    lab.run(f"rm -f {anssi_scan.REMOTE_DS} {anssi_scan.REMOTE_TAILORING} {anssi_scan.REMOTE_RESULTS}")


def tailored_out() -> set[str]:
    text = TAILORING.read_text(encoding="utf-8")
    return set(re.findall(r'content_rule_([a-z0-9_]+)" selected="false"', text))


@pytest.mark.parametrize("profile", ["anssi_bp28_minimal", "anssi_bp28_intermediary"])
def test_anssi_profile_passes_with_the_written_tailoring(scanner, profile):
    """Zero failing rule among those that apply; the counts go to the report."""
    results = oscap(scanner, profile, tailoring=True)
    print(f"{profile} (tailored): {anssi_scan.counts(results)}")
    assert not results.get("fail"), results.get("fail")
    assert not results.get("error"), results.get("error")


@pytest.mark.parametrize("profile", ["anssi_bp28_minimal", "anssi_bp28_intermediary"])
def test_stock_profile_fails_only_what_the_tailoring_names(scanner, profile):
    """The stock profile, untailored: every failure is a rule the tailoring turns off (or the
    password length it sets to the CNIL's), so the tailoring hides nothing else."""
    results = oscap(scanner, profile, tailoring=False)
    print(f"{profile} (stock): {anssi_scan.counts(results)}")
    allowed = tailored_out() | {"accounts_password_pam_minlen"}
    assert set(results.get("fail", [])) <= allowed, set(results.get("fail", [])) - allowed
