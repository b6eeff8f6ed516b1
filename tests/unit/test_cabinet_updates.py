"""cabinet-updates (role auto_updates): the logic that decides, without containers.

apt-cache policy parsing and origin matching (the security source check), the pending-reboot
grace period (machines that are off at night), re-alert timing, and the role's choice of
recording rather than running the reboot (only the test rig's podman containers record).
"""

from __future__ import annotations

import email.utils
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from conftest import Clock, ansible_env, load_script

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "auto_updates"
SCRIPT = ROLE / "files" / "usr" / "local" / "sbin" / "cabinet-updates"
sys.path.insert(0, str(ROOT / "roles" / "alerting" / "files" / "usr" / "local" / "lib" / "cabinet"))

HOUR = 3600
DAY = 86400


cu = load_script(SCRIPT)
ROLE_VARS = yaml.safe_load((ROLE / "vars" / "main.yml").read_text(encoding="utf-8"))
ROLE_DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text(encoding="utf-8"))
SECURITY_ORIGIN = ROLE_VARS["__auto_updates_security_origin"]

BOOKWORM_POLICY = textwrap.dedent("""\
    Package files:
     100 /var/lib/dpkg/status
         release a=now
     500 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
         release v=12,o=Debian,a=oldstable-security,n=bookworm-security,l=Debian-Security,c=main,b=amd64
         origin deb.debian.org
     500 http://deb.debian.org/debian bookworm-updates/main amd64 Packages
         release v=12-updates,o=Debian,a=oldstable-updates,n=bookworm-updates,l=Debian,c=main,b=amd64
         origin deb.debian.org
     500 http://deb.debian.org/debian bookworm/main amd64 Packages
         release v=12.15,o=Debian,a=oldstable,n=bookworm,l=Debian,c=main,b=amd64
         origin deb.debian.org
    Pinned packages:
    """)
# The same host without its security source.
NO_SECURITY_POLICY = "\n".join(line for i, line in enumerate(BOOKWORM_POLICY.splitlines()) if not 3 <= i <= 5) + "\n"
# The lab's repository as apt-cache policy shows a flat file: repository with an empty component.
LAB_POLICY = textwrap.dedent("""\
    Package files:
     100 /var/lib/dpkg/status
         release a=now
     500 file:/srv/cabinet-test-repo/debian-security ./ Packages
         release o=Debian,a=trixie-security,n=trixie-security,l=Debian-Security,c=
     500 file:/srv/cabinet-test-repo/trusted ./ Packages
         release o=CabinetTest,a=cabinet-test,n=cabinet-test,l=CabinetTest,c=
    Pinned packages:
         cabinet-test-pkg -> 2.0 with priority 990
    """)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture()
def alerts(monkeypatch):
    """Alerts raised through cabinet_common.alert, recorded instead of sent."""
    sent: list[dict] = []

    def fake_alert(practice, severity, title, details, **kwargs):
        sent.append({"practice": practice, "severity": severity, "title": title, "details": details})
        return True

    monkeypatch.setattr(cu.cc, "alert", fake_alert)
    return sent


@pytest.fixture(autouse=True)
def no_apt_lists(tmp_path, monkeypatch):
    """The controller's own /var/lib/apt/lists must never decide a test."""
    lists = tmp_path / "apt-lists"
    lists.mkdir()
    monkeypatch.setattr(cu, "APT_LISTS", lists)
    return lists


@pytest.fixture()
def conf(tmp_path):
    return {
        "alert_command": "/bin/false",
        "state_dir": str(tmp_path),
        "release": "12",
        "releases": {"12": {"codename": "bookworm", "security_end": "2026-06-10", "lts_end": "2028-06-30"}},
        "reboot_enabled": True,
        "reboot_time": "03:30",
        "reboot_command": "/bin/systemctl reboot",
        "reboot_action": "run",
        "reboot_alert_after_hours": 24,
        "security_origin": SECURITY_ORIGIN,
        "pending_security_max_days": 2,
        "lists_max_age_hours": 48,
        "eol_warning_days": 180,
        "realert_hours": 24,
    }


# ----------------------------------------------------------------------------- apt policy
def test_policy_is_parsed_into_package_files():
    files = cu.parse_policy(BOOKWORM_POLICY)
    assert [f["priority"] for f in files] == [100, 500, 500, 500]
    security = files[1]
    assert security["location"] == "http://deb.debian.org/debian-security bookworm-security/main amd64 Packages"
    assert security["release"] == {"v": "12", "o": "Debian", "a": "oldstable-security", "n": "bookworm-security",
                                   "l": "Debian-Security", "c": "main", "b": "amd64"}
    assert security["site"] == "deb.debian.org"


def test_policy_stops_at_pinned_packages_and_keeps_empty_values():
    files = cu.parse_policy(LAB_POLICY)
    assert len(files) == 3, "a pinned package's line was taken for a package file"
    assert files[1]["release"]["c"] == ""
    assert files[1]["site"] == ""


def test_release_fields_keep_a_comma_inside_a_value():
    assert cu.parse_release_fields("o=MSP,l=MSP, tools,c=main") == {"o": "MSP", "l": "MSP, tools", "c": "main"}


def test_the_roles_security_origin_matches_debians_security_archive():
    security = cu.parse_policy(BOOKWORM_POLICY)[1]
    assert cu.origin_matches(SECURITY_ORIGIN, security, "bookworm")
    # Another release's security archive, the updates archive, the release itself: no.
    assert not cu.origin_matches(SECURITY_ORIGIN, security, "trixie")
    for other in cu.parse_policy(BOOKWORM_POLICY)[2:]:
        assert not cu.origin_matches(SECURITY_ORIGIN, other, "bookworm"), other["location"]


def test_the_roles_security_origin_matches_the_lab_repository():
    """The integration test's repository (Origin Debian, Label Debian-Security, <codename>-security)."""
    assert [f["location"] for f in cu.security_sources(LAB_POLICY, SECURITY_ORIGIN, "trixie")] == \
        ["file:/srv/cabinet-test-repo/debian-security ./ Packages"]


@pytest.mark.parametrize(("pattern", "matches"), [
    ("o=Debian,n=bookworm-security", True),
    ("origin=Debian,label=Debian-Security,archive=*-security", True),
    ("origin=Debian,suite=oldstable-security,component=main,site=deb.debian.org", True),
    ("origin=${distro_id},codename=${distro_codename}-security", True),
    ("origin=Debian,site=security.debian.org", False),
    ("origin=Ubuntu", False),
    ("", False),
])
def test_origin_patterns_follow_unattended_upgrades_rules(pattern, matches):
    assert cu.origin_matches(pattern, cu.parse_policy(BOOKWORM_POLICY)[1], "bookworm") is matches


def test_escaped_comma_in_a_pattern_value():
    package_file = {"release": {"o": "MSP", "l": "MSP, tools"}, "site": ""}
    assert cu.origin_matches("origin=MSP,label=MSP\\, tools", package_file, "bookworm")


def test_unknown_pattern_key_is_an_error():
    with pytest.raises(ValueError, match="flavour"):
        cu.origin_matches("origin=Debian,flavour=x", cu.parse_policy(BOOKWORM_POLICY)[1], "bookworm")


def test_a_security_source_pinned_away_does_not_count():
    pinned = BOOKWORM_POLICY.replace(" 500 http://deb.debian.org/debian-security", " -1 http://deb.debian.org/debian-security")
    assert cu.security_sources(pinned, SECURITY_ORIGIN, "bookworm") == []


def test_missing_security_source_alerts_once_per_period_and_again_after_its_return(conf, alerts):
    clock = Clock(1_800_000_000.0)
    state = cu.open_state(conf, clock=clock)
    cu.check_security_source(conf, state, NO_SECURITY_POLICY, "bookworm")
    assert len(alerts) == 1 and alerts[0]["severity"] == "critical"
    assert "bookworm-security" in alerts[0]["title"]
    assert "origin=Debian,codename=bookworm-security,label=Debian-Security" in alerts[0]["details"]

    clock.now += 23 * HOUR
    cu.check_security_source(conf, state, NO_SECURITY_POLICY, "bookworm")
    assert len(alerts) == 1, "a persisting condition was alerted again within realert_hours"
    clock.now += 2 * HOUR
    cu.check_security_source(conf, state, NO_SECURITY_POLICY, "bookworm")
    assert len(alerts) == 2, "a persisting condition was not alerted again after realert_hours"

    cu.check_security_source(conf, state, BOOKWORM_POLICY, "bookworm")
    assert len(alerts) == 2
    cu.check_security_source(conf, state, NO_SECURITY_POLICY, "bookworm")
    assert len(alerts) == 3, "a source lost again after its return was not alerted at once"


def test_the_check_reads_apt_policy_in_the_c_locale(monkeypatch):
    seen = {}

    def fake_run(argv, **kwargs):
        seen["argv"], seen["env"] = argv, kwargs["env"]
        return subprocess.CompletedProcess(argv, 0, BOOKWORM_POLICY, "")

    monkeypatch.setattr(cu.subprocess, "run", fake_run)
    assert cu.apt_policy() == BOOKWORM_POLICY
    assert seen["argv"] == ["apt-cache", "policy"] and seen["env"]["LC_ALL"] == "C"


# ----------------------------------------------------------------------------- pending reboot
@pytest.fixture()
def reboot_files(tmp_path, monkeypatch):
    required, pkgs, boot = tmp_path / "reboot-required", tmp_path / "reboot-required.pkgs", tmp_path / "boot_id"
    monkeypatch.setattr(cu, "REBOOT_REQUIRED", required)
    monkeypatch.setattr(cu, "REBOOT_PKGS", pkgs)
    monkeypatch.setattr(cu, "BOOT_ID", boot)

    class Files:
        def require(self, at: float, boot_id: str = "boot-1") -> None:
            required.write_text("*** System restart required ***\n")
            pkgs.write_text("linux-image-amd64\n")
            os.utime(required, (at, at))
            boot.write_text(boot_id + "\n")

        def reboot(self, boot_id: str) -> None:
            required.unlink(missing_ok=True)
            pkgs.unlink(missing_ok=True)
            boot.write_text(boot_id + "\n")

    return Files()


def test_reboot_alert_due_only_past_the_grace_period():
    assert not cu.reboot_alert_due(since=0, now=23.9 * HOUR, alert_after_hours=24)
    assert cu.reboot_alert_due(since=0, now=24 * HOUR, alert_after_hours=24)
    assert cu.reboot_alert_due(since=0, now=0, alert_after_hours=0)


def test_pending_since_keeps_the_first_sight_in_a_boot_and_resets_at_the_next(conf):
    state = cu.open_state(conf)
    assert cu.reboot_pending_since(state, "boot-1", 1000.0) == 1000.0
    # Another update rewrote /run/reboot-required: still pending since the first one.
    assert cu.reboot_pending_since(state, "boot-1", 5000.0) == 1000.0
    # A new boot: whatever was recorded belongs to the previous one.
    assert cu.reboot_pending_since(state, "boot-2", 9000.0) == 9000.0


def test_fresh_pending_reboot_is_not_alerted_and_an_old_one_is(conf, alerts, reboot_files):
    now = time.time()
    state = cu.open_state(conf)
    reboot_files.require(at=now - 2 * HOUR)
    cu.check_reboot(conf, state, now=now)
    assert alerts == [], "a reboot pending for 2 h was alerted (grace period 24 h)"
    cu.check_reboot(conf, state, now=now + 21.5 * HOUR)
    assert alerts == [], "a reboot pending for 23.5 h was alerted (grace period 24 h)"
    cu.check_reboot(conf, state, now=now + 24 * HOUR)
    assert len(alerts) == 1
    assert alerts[0]["title"] == "Reboot required to finish security updates"
    assert "linux-image-amd64" in alerts[0]["details"] and "03:30" in alerts[0]["details"]
    assert "26 h without a reboot" in alerts[0]["details"]


def test_workstation_off_at_night_never_alerts(conf, alerts, reboot_files):
    """Off at night: it upgrades at its morning boot, its user shuts it down in the evening."""
    day0 = 1_800_000_000.0
    state = cu.open_state(conf)
    for day in range(10):
        boot = day0 + day * DAY + 8 * HOUR
        reboot_files.reboot(f"boot-{day}")
        cu.check_reboot(conf, state, now=boot + 60)            # the morning check caught up at boot
        reboot_files.require(at=boot + 10 * 60, boot_id=f"boot-{day}")  # the upgrade caught up at boot
        cu.check_reboot(conf, state, now=boot + 11 * 60)       # cabinet-updates upgrade checks too
        cu.check_reboot(conf, state, now=boot + 10 * HOUR)     # a check run by hand at the end of the day
    assert alerts == [], f"a workstation shut down every evening raised reboot alerts: {alerts}"


def test_host_left_on_with_reboots_disabled_alerts_then_realerts_daily(conf, alerts, reboot_files):
    conf["reboot_enabled"] = False
    state = cu.open_state(conf)
    start = 1_800_000_000.0
    reboot_files.require(at=start)
    for day in range(1, 4):
        state.clock = Clock(start + day * DAY + 60)
        cu.check_reboot(conf, state, now=start + day * DAY + 60)
    assert len(alerts) == 3
    assert "disabled" in alerts[0]["details"]


def test_a_reboot_clears_the_pending_record(conf, alerts, reboot_files):
    state = cu.open_state(conf)
    reboot_files.require(at=time.time() - 30 * HOUR)
    cu.check_reboot(conf, state)
    assert len(alerts) == 1 and "reboot-required" in state.alerted
    reboot_files.reboot("boot-2")
    cu.check_reboot(conf, state)
    assert "reboot-required" not in state.alerted and "reboot_pending" not in state.data


def test_zero_grace_alerts_at_the_first_check(conf, alerts, reboot_files):
    conf["reboot_alert_after_hours"] = 0
    state = cu.open_state(conf)
    reboot_files.require(at=time.time())
    cu.check_reboot(conf, state)
    assert len(alerts) == 1


# ----------------------------------------------------------------------------- re-alert timing
def test_raise_alert_repeats_after_the_period_and_every_hours_overrides_it(conf, alerts):
    clock = Clock(1_800_000_000.0)
    state = cu.open_state(conf, clock=clock)
    assert cu.raise_alert(conf, state, "k", "warning", "t", "d")
    assert not cu.raise_alert(conf, state, "k", "warning", "t", "d")
    clock.now += 24 * HOUR
    assert cu.raise_alert(conf, state, "k", "warning", "t", "d")
    assert cu.raise_alert(conf, state, "eol", "warning", "t", "d", every_hours=168)
    clock.now += 100 * HOUR
    assert not cu.raise_alert(conf, state, "eol", "warning", "t", "d", every_hours=168)
    clock.now += 68 * HOUR
    assert cu.raise_alert(conf, state, "eol", "warning", "t", "d", every_hours=168)
    assert [a["practice"] for a in alerts] == ["auto_updates"] * 4


def test_state_survives_a_save_and_is_root_only(conf, alerts):
    state = cu.open_state(conf)
    cu.raise_alert(conf, state, "k", "warning", "t", "d")
    state.data["pending_security"] = {"openssl 3.0.16": 1.0}
    state.save()
    path = Path(conf["state_dir"]) / "auto_updates-state.json"
    assert path.stat().st_mode & 0o777 == 0o600
    again = cu.open_state(conf)
    assert "k" in again.alerted and again.data["pending_security"] == {"openssl 3.0.16": 1.0}


def test_release_notices_follow_the_table(conf, alerts):
    import datetime as dt

    state = cu.open_state(conf)
    cu.check_release(conf, state, today=dt.date(2025, 6, 1))
    assert alerts == []
    cu.check_release(conf, state, today=dt.date(2026, 1, 1))
    assert "leaves regular security support" in alerts[-1]["title"]
    state.alerted.clear()
    cu.check_release(conf, state, today=dt.date(2027, 1, 1))
    assert "long-term support only" in alerts[-1]["title"]
    state.alerted.clear()
    cu.check_release(conf, state, today=dt.date(2029, 1, 1))
    assert alerts[-1]["severity"] == "critical"


def test_one_broken_check_does_not_hide_the_others(conf, alerts, monkeypatch):
    ran = []

    def broken(conf, state):
        raise RuntimeError("apt-cache exploded")

    def fine(conf, state):
        ran.append("fine")

    monkeypatch.setattr(cu, "CHECKS", (broken, fine))
    assert cu.cmd_check(conf) == 0
    assert ran == ["fine"]
    assert alerts[0]["title"] == "Update health check broken failed"


def test_the_daily_check_includes_the_security_source():
    assert "check_security_source" in [check.__name__ for check in cu.CHECKS]


# ----------------------------------------------------------------------------- the role's decisions
PLAYBOOK = """\
- name: Render the role's settings for given facts
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Load the role's defaults and internals
      ansible.builtin.include_vars:
        file: "{{ item }}"
      loop: ["{{ role }}/defaults/main.yml", "{{ role }}/vars/main.yml"]
    - name: Render the settings of cabinet-updates and the unattended-upgrades file
      ansible.builtin.template:
        src: "{{ role }}/templates/{{ item.src }}"
        dest: "{{ out }}/{{ item.dest }}"
        mode: "0600"
      loop:
        - {src: etc/cabinet/auto_updates.json.j2, dest: auto_updates.json}
        - {src: etc/apt/apt.conf.d/52cabinet-unattended-upgrades.j2, dest: apt.conf}
"""


def render_role(tmp_path: Path, virtualization_type: str, virtualization_role: str = "guest") -> tuple[dict, str]:
    playbook = tmp_path / "render.yml"
    playbook.write_text(PLAYBOOK, encoding="utf-8")
    facts = {"virtualization_type": virtualization_type, "virtualization_role": virtualization_role,
             "distribution_major_version": "12"}
    extra = json.dumps({"role": str(ROLE), "out": str(tmp_path), "ansible_facts": facts})
    ansible = Path(sys.executable).parent / "ansible-playbook"
    done = subprocess.run([str(ansible), str(playbook), "-e", extra], capture_output=True, text=True,
                          cwd=ROOT, check=False, env=ansible_env())
    assert done.returncode == 0, done.stdout + done.stderr
    return (json.loads((tmp_path / "auto_updates.json").read_text(encoding="utf-8")),
            (tmp_path / "apt.conf").read_text(encoding="utf-8"))


@pytest.mark.parametrize(("virtualization_type", "virtualization_role", "action"), [
    ("podman", "guest", "record"),          # the test rig's containers
    ("lxc", "guest", "run"),                # Proxmox LXC guests reboot
    ("systemd-nspawn", "guest", "run"),
    ("kvm", "guest", "run"),
    ("kvm", "host", "run"),
    ("", "", "run"),                        # bare metal
])
def test_only_the_rigs_containers_record_the_reboot(tmp_path, virtualization_type, virtualization_role, action):
    settings, _ = render_role(tmp_path, virtualization_type, virtualization_role)
    assert settings["reboot_action"] == action


def test_the_check_uses_the_origin_unattended_upgrades_installs_from(tmp_path):
    settings, apt_conf = render_role(tmp_path, "kvm")
    assert settings["security_origin"] == SECURITY_ORIGIN
    assert f'"{settings["security_origin"]}";' in apt_conf
    assert settings["reboot_alert_after_hours"] == ROLE_DEFAULTS["auto_updates_reboot_alert_after_hours"]


# ----------------------------------------------------------------------------- a source no longer refreshed
NOW = 1_796_000_000.0  # 2026-11-30


def release_text(date: float, valid_days: float | None) -> str:
    fmt = lambda t: email.utils.formatdate(t, usegmt=True)  # noqa: E731
    lines = ["-----BEGIN PGP SIGNED MESSAGE-----", "Hash: SHA512", "", "Origin: Debian", "Label: Debian-Security",
             f"Date: {fmt(date)}"]
    if valid_days is not None:
        lines.append(f"Valid-Until: {fmt(date + valid_days * DAY)}")
    return "\n".join(lines) + "\n"


def test_apt_list_names_follow_urito_filename(tmp_path):
    assert cu.uri_to_list_name("http://deb.debian.org/debian-security/dists/bookworm-security/") == \
        "deb.debian.org_debian-security_dists_bookworm-security_"
    assert cu.uri_to_list_name("file:/srv/cabinet-test-repo/debian-security/./") == "_srv_cabinet-test-repo_debian-security_._"
    assert cu.uri_to_list_name("https://user:pw@mirror.example:8080/my_repo/") == "mirror.example:8080_my%5frepo_"
    (tmp_path / "deb.debian.org_debian-security_dists_bookworm-security_InRelease").write_text("x")
    found = cu.release_file("http://deb.debian.org/debian-security bookworm-security/main amd64 Packages", tmp_path)
    assert found and found.name.endswith("_InRelease")
    (tmp_path / "_srv_repo_._Release").write_text("x")
    assert cu.release_file("file:/srv/repo ./ Packages", tmp_path).name == "_srv_repo_._Release"
    assert cu.release_file("/var/lib/dpkg/status", tmp_path) is None


@pytest.mark.parametrize(("age_days", "valid_days", "stale"), [
    (1, 7, False), (8, 7, True),            # Debian's security archive: Valid-Until decides
    (6, None, False), (8, None, True),      # no Valid-Until: 7 days after its Date
])
def test_release_staleness(age_days, valid_days, stale):
    assert bool(cu.release_is_stale(release_text(NOW - age_days * DAY, valid_days), NOW)) is stale


def test_a_security_source_no_longer_refreshed_alerts(conf, alerts, no_apt_lists):
    """The security mirror blocked while the others answer: apt keeps its old lists and still
    lists the source. Its expired Release must raise the alert; a fresh one clears it."""
    state = cu.open_state(conf, clock=Clock(NOW))
    release = no_apt_lists / "deb.debian.org_debian-security_dists_bookworm-security_InRelease"
    release.write_text(release_text(NOW - 9 * DAY, 7))
    cu.check_security_source(conf, state, BOOKWORM_POLICY, "bookworm", now=NOW)
    assert [a["title"] for a in alerts] == ["No security updates: the security source is no longer refreshed"]
    assert "expired" in alerts[0]["details"]
    release.write_text(release_text(NOW - 1 * DAY, 7))
    cu.check_security_source(conf, state, BOOKWORM_POLICY, "bookworm", now=NOW)
    assert "security-source-stale" not in state.alerted
    assert len(alerts) == 1


def test_a_source_whose_release_cannot_be_found_is_not_judged(conf, alerts):
    state = cu.open_state(conf, clock=Clock(NOW))
    cu.check_security_source(conf, state, BOOKWORM_POLICY, "bookworm", now=NOW)
    assert alerts == []
