"""Automatic security updates: configured as the inventory says, and proven to install.

Audit checks (any host): what unattended-upgrades may install, the schedule, the reboot
window, needrestart, fresh package lists, no security update left pending, a supported
release. Lab checks (cabinet_lab: true): signed local repositories are built on the host, a
package is upgraded by the real apt-daily-upgrade.service, a blacklisted one and one from a
foreign origin are not, a failing upgrade and a pending reboot reach the mail sink.
"""

from __future__ import annotations

import base64
import datetime as dt
import importlib.machinery
import importlib.util
import json
import shlex
import sys
import time
from pathlib import Path

import pytest

from conftest import not_applicable, role_vars, run_unit, stamp, wait_mail_queue_empty

ROLE = "auto_updates"
AUDITED_GROUP = "cabinet_managed"
HELPER = Path(__file__).parent / "files" / "cabinet-test-repo.sh"
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "roles" / "auto_updates" / "files" / "usr" / "local" / "sbin" / "cabinet-updates"
SECURITY = "origin=Debian,codename=${distro_codename}-security,label=Debian-Security"
POINT = "origin=Debian,codename=${distro_codename},label=Debian"
UPDATES = "origin=Debian,codename=${distro_codename}-updates"


def apt_list(host, key: str) -> list[str]:
    """The values of an apt list option as apt itself resolves every apt.conf.d file."""
    out = host.check_output(f"apt-config dump {key}")
    prefix = f"{key}:: "
    return [line[len(prefix):].strip('";') for line in out.splitlines() if line.startswith(prefix)]


def apt_value(host, key: str) -> str:
    return host.check_output(f"eval \"$(apt-config shell V {key})\"; printf %s \"$V\"")


def timer_calendar(host, unit: str) -> str:
    return host.check_output(f"systemctl show -p TimersCalendar --value {unit}")


def cabinet_updates():
    """The role's cabinet-updates, imported on the controller: the same parser that alerts."""
    sys.path.insert(0, str(ROOT / "roles" / "alerting" / "files" / "usr" / "local" / "lib" / "cabinet"))
    loader = importlib.machinery.SourceFileLoader("cabinet_updates", str(SCRIPT))
    spec = importlib.util.spec_from_loader("cabinet_updates", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def security_sources(host) -> list[dict]:
    """apt's package files on the host that match the security origin cabinet-updates checks."""
    settings = json.loads(host.file("/etc/cabinet/auto_updates.json").content_string)
    codename = host.check_output(". /etc/os-release && printf %s \"$VERSION_CODENAME\"")
    policy = host.check_output("LC_ALL=C apt-cache policy")
    return cabinet_updates().security_sources(policy, settings["security_origin"], codename)


def unit_log(host, unit: str) -> str:
    """What the unit's last run wrote to the journal (its invocation only)."""
    invocation = host.check_output(f"systemctl show -p InvocationID --value {unit}")
    assert invocation, f"{unit} has not run"
    return host.check_output(f"journalctl -q --no-pager -o cat _SYSTEMD_INVOCATION_ID={invocation}")


# ----------------------------------------------------------------------------- audit
def test_unattended_upgrades_installed(host):
    for package in ("unattended-upgrades", "python3-apt"):
        assert host.package(package).is_installed


def test_only_the_configured_origins_are_allowed(host, expect):
    """Debian's 50unattended-upgrades must not widen what the role configured."""
    wanted = [SECURITY]
    if expect("auto_updates_point_releases_enabled"):
        wanted.append(POINT)
    if expect("auto_updates_updates_origin_enabled"):
        wanted.append(UPDATES)
    wanted += expect("auto_updates_extra_origins")
    assert apt_list(host, "Unattended-Upgrade::Origins-Pattern") == wanted
    assert apt_list(host, "Unattended-Upgrade::Allowed-Origins") == []
    assert not any("stable" in o.split("codename=")[-1].split(",")[0] for o in wanted if "codename=" in o)


def test_blacklist_and_behaviour(host, expect):
    assert apt_list(host, "Unattended-Upgrade::Package-Blacklist") == expect("auto_updates_package_blacklist")
    assert apt_value(host, "Unattended-Upgrade::MinimalSteps") == str(expect("auto_updates_minimal_steps")).lower()
    assert apt_value(host, "Unattended-Upgrade::AutoFixInterruptedDpkg") == \
        str(expect("auto_updates_autofix_interrupted_dpkg")).lower()
    assert apt_value(host, "Unattended-Upgrade::Remove-Unused-Kernel-Packages") == \
        str(expect("auto_updates_remove_unused_kernels")).lower()
    assert apt_value(host, "APT::Periodic::Unattended-Upgrade") == "1"
    assert apt_value(host, "Unattended-Upgrade::Automatic-Reboot") == "false"


def test_edited_conffiles_do_not_hold_back_upgrades(host):
    """The toolkit edits conffiles (pwquality.conf, faillock.conf, ...). unattended-upgrades
    skips a package whose edited conffile changed unless dpkg is told what to do with it: its
    own test for that (dpkg_conffile_prompt) must say no prompt can come."""
    asks = host.run("python3 -c \"import apt_pkg, importlib.machinery, importlib.util; "
                    "loader = importlib.machinery.SourceFileLoader('uu', '/usr/bin/unattended-upgrade'); "
                    "spec = importlib.util.spec_from_loader('uu', loader); uu = importlib.util.module_from_spec(spec); "
                    "loader.exec_module(uu); apt_pkg.init_config(); print(uu.dpkg_conffile_prompt())\"")
    assert asks.rc == 0, asks.stderr
    assert asks.stdout.strip() == "False", asks.stdout


def test_downloads_and_upgrades_run_at_night(host, expect):
    for unit, time_var in (("apt-daily.timer", "auto_updates_download_time"),
                           ("apt-daily-upgrade.timer", "auto_updates_upgrade_time")):
        service = host.service(unit)
        assert service.is_enabled and service.is_running, unit
        calendar = timer_calendar(host, unit)
        assert f"OnCalendar=*-*-* {expect(time_var)}:00" in calendar, calendar
        assert "6:00" not in calendar.replace(f"{expect(time_var)}", ""), f"Debian's default time survived: {calendar}"
        delay = host.check_output(f"systemctl show -p RandomizedDelayUSec --value {unit}")
        assert delay == (f"{expect('auto_updates_random_delay_minutes')}min" if expect("auto_updates_random_delay_minutes") else "0")


def test_upgrade_runs_through_the_alerting_wrapper(host):
    exec_start = host.check_output("systemctl show -p ExecStart --value apt-daily-upgrade.service")
    assert "/usr/local/sbin/cabinet-updates" in exec_start and "upgrade" in exec_start
    assert "apt.systemd.daily" not in exec_start


def test_reboot_window(host, expect):
    timer = host.service("cabinet-reboot.timer")
    if expect("auto_updates_reboot_enabled"):
        assert timer.is_enabled and timer.is_running
        assert f"OnCalendar=*-*-* {expect('auto_updates_reboot_time')}:00" in timer_calendar(host, "cabinet-reboot.timer")
    else:
        assert not timer.is_enabled
    settings = json.loads(host.file("/etc/cabinet/auto_updates.json").content_string)
    assert settings["reboot_command"] == expect("auto_updates_reboot_command")
    assert settings["reboot_enabled"] == expect("auto_updates_reboot_enabled")


def test_reboot_window_reboots_except_in_the_test_rig(host):
    """Only the rig's podman containers record the reboot; LXC guests and real hosts run it."""
    settings = json.loads(host.file("/etc/cabinet/auto_updates.json").content_string)
    virt = host.run("systemd-detect-virt --container").stdout.strip()
    assert settings["reboot_action"] == ("record" if virt == "podman" else "run"), f"container: {virt}"


def test_security_origin_is_among_apts_sources(host):
    """Without a <codename>-security source, no security update ever arrives, silently."""
    found = security_sources(host)
    assert found, "apt has no package file from the security origin unattended-upgrades installs from"


def test_daily_health_check_is_scheduled(host, expect):
    timer = host.service("cabinet-updates-check.timer")
    assert timer.is_enabled and timer.is_running
    assert f"OnCalendar=*-*-* {expect('auto_updates_check_time')}:00" in timer_calendar(host, "cabinet-updates-check.timer")


def test_needrestart_restarts_services(host, expect):
    if not expect("auto_updates_needrestart_enabled"):
        not_applicable("needrestart disabled in this inventory")
    assert host.package("needrestart").is_installed
    conf = host.file("/etc/needrestart/conf.d/cabinet.conf").content_string
    assert f"$nrconf{{restart}} = '{expect('auto_updates_needrestart_mode')}';" in conf


def test_package_lists_refresh(host, expect):
    stamp = host.file("/var/lib/cabinet/apt-update-success")
    assert stamp.exists, "apt has never refreshed its lists since the role was applied"
    age_hours = (time.time() - stamp.mtime.timestamp()) / 3600
    assert age_hours <= expect("auto_updates_lists_max_age_hours"), f"lists last refreshed {age_hours:.0f} h ago"


def test_no_security_update_pending_too_long(host, expect, evidence):
    state_file = host.file("/var/lib/cabinet/auto_updates-state.json")
    last = host.run("zgrep -h ' upgrade ' $(ls -tr /var/log/dpkg.log* 2>/dev/null) /dev/null | tail -1")
    fields = last.stdout.split()
    evidence("Dernière mise à jour installée", f"{fields[0]} {fields[1][:5]} : {fields[3].split(':')[0]} {fields[5]}"
             if len(fields) >= 6 else "aucune dans les journaux de dpkg")
    required = host.file("/run/reboot-required")
    evidence("Redémarrage en attente", f"oui, depuis le {stamp(required.mtime.timestamp())}" if required.exists else "non")
    if not state_file.exists:
        not_applicable("the daily check has not run on this host yet: no pending update has been recorded")
    state = json.loads(state_file.content_string)
    evidence("Dernière mise à jour automatique réussie", stamp(state.get("last_upgrade_success")))
    pending = state.get("pending_security", {})
    limit = expect("auto_updates_pending_security_max_days") * 86400
    overdue = [p for p, first in pending.items() if time.time() - first > limit]
    assert overdue == [], f"security updates pending too long: {overdue}"


def test_release_still_receives_security_updates(host):
    release = host.system_info.release.split(".")[0]
    table = role_vars(ROLE)["__auto_updates_debian_releases"]
    assert release in table, f"Debian {release} is not in the role's release table"
    assert dt.date.today() <= dt.date.fromisoformat(table[release]["lts_end"]), \
        f"Debian {release} is past its end of life ({table[release]['lts_end']})"


# ----------------------------------------------------------------------------- lab
@pytest.fixture(scope="module")
def repo(lab):
    """Signed local repositories on the lab host; removed afterwards."""
    encoded = base64.b64encode(HELPER.read_bytes()).decode()
    lab.check_output(f"echo {encoded} | base64 -d > /usr/local/sbin/cabinet-test-repo && chmod 755 /usr/local/sbin/cabinet-test-repo")
    lab.run("cabinet-test-repo clean")
    init = lab.run("cabinet-test-repo init")
    assert init.rc == 0, init.stderr

    def publish(repo_name: str, package: str, version: str, failing: bool = False) -> None:
        result = lab.run(f"cabinet-test-repo publish {repo_name} {package} {version} {'failing' if failing else ''}")
        assert result.rc == 0, result.stderr

    yield publish
    lab.run("cabinet-test-repo clean && apt-get update -q")


def installed_version(host, package: str) -> str:
    return host.check_output(f"dpkg-query -W -f '${{Version}}' {package}")


def apt_update(host) -> None:
    result = host.run("apt-get update -q")
    assert result.rc == 0 and "Err:" not in result.stdout, result.stdout + result.stderr


def test_allowed_update_installs_blacklisted_and_foreign_do_not(lab, repo, mailsink):
    for repo_name, package in (("trusted", "cabinet-test-pkg"), ("trusted", "cabinet-test-held"),
                               ("untrusted", "cabinet-test-foreign")):
        repo(repo_name, package, "1.0")
    apt_update(lab)
    installed = lab.run("DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
                        "cabinet-test-pkg=1.0 cabinet-test-held=1.0 cabinet-test-foreign=1.0")
    assert installed.rc == 0, installed.stderr
    for repo_name, package in (("trusted", "cabinet-test-pkg"), ("trusted", "cabinet-test-held"),
                               ("untrusted", "cabinet-test-foreign")):
        repo(repo_name, package, "2.0")
    apt_update(lab)
    assert lab.run("apt-get -s upgrade | grep -c '^Inst cabinet-test-'").stdout.strip() == "3"

    result = run_unit(lab, "apt-daily-upgrade.service")
    log = lab.run("journalctl -q --no-pager -u apt-daily-upgrade.service -n 80 -o cat").stdout
    assert result == "success", f"the upgrade service failed ({result}):\n{log}"
    assert installed_version(lab, "cabinet-test-pkg") == "2.0", log
    assert installed_version(lab, "cabinet-test-held") == "1.0", "a blacklisted package was upgraded"
    assert installed_version(lab, "cabinet-test-foreign") == "1.0", "a package from a foreign origin was upgraded"


def test_failing_upgrade_reaches_the_msp(lab, repo, mailsink):
    hostname = lab.check_output("postconf -h myhostname")
    before = len([m for m in mailsink.messages() if "Automatic upgrade failed" in m["Subject"] and hostname in m["Subject"]])
    repo("trusted", "cabinet-test-broken", "1.0")
    apt_update(lab)
    assert lab.run("DEBIAN_FRONTEND=noninteractive apt-get install -y -q cabinet-test-broken=1.0").rc == 0
    repo("trusted", "cabinet-test-broken", "2.0", failing=True)
    apt_update(lab)

    result = run_unit(lab, "apt-daily-upgrade.service")
    assert result == "exit-code", f"the upgrade service should fail when a postinst fails, got {result}"
    deadline = time.monotonic() + 90
    found = []
    while time.monotonic() < deadline:
        found = [m for m in mailsink.messages() if "Automatic upgrade failed" in m["Subject"] and hostname in m["Subject"]]
        if len(found) > before:
            break
        time.sleep(2)
    assert len(found) == before + 1, "no alert reached the MSP for the failed upgrade"
    assert "[CRITICAL] [auto_updates]" in found[-1]["Subject"]
    assert "cabinet-test-broken" in found[-1]["body"]
    lab.run("dpkg --purge --force-all cabinet-test-broken")


SOURCES_BACKUP = "/root/cabinet-test-apt-backup"


@pytest.fixture()
def only_lab_sources(lab, repo):
    """apt with the lab's repositories only: Debian's own sources and lists are set aside, then restored."""
    lab.check_output(
        f"rm -rf {SOURCES_BACKUP} && mkdir -p {SOURCES_BACKUP}/sources.list.d && "
        f"cp -a /var/lib/apt/lists {SOURCES_BACKUP}/lists && "
        "{ [ ! -e /etc/apt/sources.list ] || mv /etc/apt/sources.list " + SOURCES_BACKUP + "/; } && "
        "find /etc/apt/sources.list.d -maxdepth 1 -type f ! -name 'cabinet-test*' "
        f"-exec mv -t {SOURCES_BACKUP}/sources.list.d {{}} +")
    try:
        yield
    finally:
        lab.run("cabinet-test-repo security-source off")
        lab.check_output(
            f"{{ [ ! -e {SOURCES_BACKUP}/sources.list ] || mv {SOURCES_BACKUP}/sources.list /etc/apt/; }} && "
            f"find {SOURCES_BACKUP}/sources.list.d -maxdepth 1 -type f -exec mv -t /etc/apt/sources.list.d {{}} + && "
            f"rm -rf /var/lib/apt/lists && mv {SOURCES_BACKUP}/lists /var/lib/apt/lists && rm -rf {SOURCES_BACKUP}")
        lab.run("rm -f /var/cache/apt/*.bin")


def test_security_source_is_checked_with_the_roles_real_origin(lab, repo, only_lab_sources, mailsink, expect):
    """A repository that says what Debian's security archive says of itself (Origin Debian,
    Label Debian-Security, Suite <codename>-security) is what unattended-upgrades installs from
    and what the daily check finds; without it, the check alerts the MSP."""
    codename = lab.check_output(". /etc/os-release && printf %s \"$VERSION_CODENAME\"")
    title = f"No security updates: {codename}-security is not among apt's sources"
    hostname = lab.check_output("postconf -h myhostname")
    before = len(mailsink.alerts(hostname, ROLE, title))

    lab.check_output("cabinet-test-repo security-source on")
    repo("debian-security", "cabinet-test-secfix", "1.0")
    apt_update(lab)
    installed = lab.run("DEBIAN_FRONTEND=noninteractive apt-get install -y -q cabinet-test-secfix=1.0")
    assert installed.rc == 0, installed.stderr
    repo("debian-security", "cabinet-test-secfix", "2.0")
    apt_update(lab)
    # unattended-upgrades itself, with the role's configuration, takes it as the security origin.
    assert run_unit(lab, "apt-daily-upgrade.service") == "success"
    assert installed_version(lab, "cabinet-test-secfix") == "2.0", \
        "unattended-upgrades did not install from a repository matching the role's security origin"
    assert [f["location"] for f in security_sources(lab)] == \
        ["file:/srv/cabinet-test-repo/debian-security ./ Packages"], "the lab's sources are not the only ones"
    lab.check_output("rm -f /var/lib/cabinet/auto_updates-state.json")
    assert run_unit(lab, "cabinet-updates-check.service") == "success"
    assert title not in unit_log(lab, "cabinet-updates-check.service"), "alerted with the security source present"

    # The host loses its security source: the next daily check alerts.
    lab.check_output("cabinet-test-repo security-source off")
    apt_update(lab)
    assert security_sources(lab) == []
    assert run_unit(lab, "cabinet-updates-check.service") == "success"
    assert f"ALERT [critical] {title}" in unit_log(lab, "cabinet-updates-check.service")
    alert = mailsink.wait_alert(hostname, ROLE, title, before, timeout=90)
    assert "[CRITICAL] [auto_updates]" in alert["Subject"]
    assert f"origin=Debian,codename={codename}-security,label=Debian-Security" in alert["body"]
    # The security source checked while present raised nothing: only this one arrived.
    wait_mail_queue_empty(lab)
    assert len(mailsink.alerts(hostname, ROLE, title)) == before + 1
    lab.run("dpkg --purge cabinet-test-secfix")


def test_security_update_pending_too_long_raises_an_alert(lab, repo, mailsink, expect):
    """A security update the blacklist holds back is alerted once it has waited past the limit."""
    repo("trusted", "cabinet-test-held", "1.0")
    apt_update(lab)
    installed = lab.run("DEBIAN_FRONTEND=noninteractive apt-get install -y -q --allow-downgrades cabinet-test-held=1.0")
    assert installed.rc == 0, installed.stderr
    repo("security", "cabinet-test-held", "3.0")
    apt_update(lab)
    days = expect("auto_updates_pending_security_max_days")
    first_seen = time.time() - (days + 1) * 86400
    state = json.dumps({"alerted": {}, "pending_security": {"cabinet-test-held 3.0": first_seen}})
    lab.check_output(f"echo {shlex.quote(state)} > /var/lib/cabinet/auto_updates-state.json")
    hostname = lab.check_output("postconf -h myhostname")
    assert run_unit(lab, "cabinet-updates-check.service") == "success"
    alerts = [m for m in mailsink.wait_for(f"pending for more than {days} days", timeout=90) if hostname in m["Subject"]]
    assert alerts, "no alert for a security update pending too long"
    assert "cabinet-test-held 3.0" in alerts[-1]["body"]
    assert installed_version(lab, "cabinet-test-held") == "1.0"


def test_pending_reboot_alerts_only_past_the_grace_and_the_window_would_reboot(lab, expect, mailsink):
    """A reboot pending since the morning (a workstation that was off at night and upgraded at
    boot) raises nothing: its evening shutdown is its reboot. Pending past the grace period, it
    raises the alert; the window's service records the reboot it would run in the rig."""
    if not expect("auto_updates_reboot_enabled"):
        not_applicable("automatic reboots disabled in this inventory")
    grace = expect("auto_updates_reboot_alert_after_hours")
    title = "Reboot required to finish security updates"
    hostname = lab.check_output("postconf -h myhostname")
    before = len(mailsink.alerts(hostname, ROLE, title))
    lab.run("rm -f /var/lib/cabinet/reboot-requested /var/lib/cabinet/auto_updates-state.json")
    lab.check_output("echo '*** System restart required ***' > /run/reboot-required && "
                     "echo cabinet-test-kernel > /run/reboot-required.pkgs")
    try:
        if grace > 0:
            assert run_unit(lab, "cabinet-updates-check.service") == "success"
            log = unit_log(lab, "cabinet-updates-check.service")
            assert f"alerted only after {grace} h" in log, log
            assert f"ALERT [warning] {title}" not in log, "a reboot pending for seconds was alerted"

        # Pending since before the grace period, in this boot: the check alerts.
        lab.check_output(f"touch -d '{grace + 2} hours ago' /run/reboot-required")
        assert run_unit(lab, "cabinet-updates-check.service") == "success"
        assert f"ALERT [warning] {title}" in unit_log(lab, "cabinet-updates-check.service")
        mailsink.wait_alert(hostname, ROLE, title, before, timeout=90)
        # Exactly one: the fresh pending reboot checked first raised none.
        wait_mail_queue_empty(lab)
        mails = mailsink.alerts(hostname, ROLE, title)
        assert len(mails) == before + 1, f"{len(mails) - before} reboot alerts, expected 1"
        # The sink's order is not the order of arrival: pick this run's alert by its content.
        mine = [m for m in mails if f"{grace + 2} h without a reboot" in m["body"]
                and "cabinet-test-kernel" in m["body"] and expect("auto_updates_reboot_time") in m["body"]]
        assert mine, "the reboot alert does not say for how long, for what, and when the window is"

        # The window's own unit, as its timer would start it. In the rig's containers it
        # records the command instead of running it; on a real host this is the reboot.
        assert run_unit(lab, "cabinet-reboot.service") == "success"
        flag = lab.file("/var/lib/cabinet/reboot-requested")
        assert flag.exists, "the reboot window did not act on the pending reboot"
        assert flag.content_string.strip().endswith(expect("auto_updates_reboot_command"))
    finally:
        lab.run("rm -f /run/reboot-required /run/reboot-required.pkgs /var/lib/cabinet/reboot-requested")


def test_stale_lists_raise_an_alert(lab, mailsink):
    hostname = lab.check_output("postconf -h myhostname")
    lab.run("rm -f /var/lib/cabinet/auto_updates-state.json")
    lab.check_output("touch -d '5 days ago' /var/lib/cabinet/apt-update-success")
    try:
        assert run_unit(lab, "cabinet-updates-check.service") == "success"
        alerts = [m for m in mailsink.wait_for("Package lists cannot be refreshed", timeout=90) if hostname in m["Subject"]]
        assert alerts, "stale package lists raised no alert"
    finally:
        apt_update(lab)
    assert (time.time() - lab.file("/var/lib/cabinet/apt-update-success").mtime.timestamp()) < 600, \
        "a successful apt-get update did not refresh the stamp"
