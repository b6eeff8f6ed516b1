"""cabinet-login-watch: a burst of failed logins alerts once and opens one incident; a user's
forged journal lines neither make nor hide a burst; one attempt counts once."""

from __future__ import annotations

from pathlib import Path

import pytest

import cabinet_common as cc
from conftest import Clock, load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "roles" / "password_policy" / "files" / "usr" / "local" / "sbin" / "cabinet-login-watch"
watch = load_script(SCRIPT)
CONFIG = {"failures": 5, "window_minutes": 60, "realert_hours": 24}


def pam(pid: int, user: str = "dupont", service: str = "sshd", uid: str = "0", exe: str = "/usr/sbin/sshd",
        caps: str = "1ffffffffff") -> dict:
    return {"MESSAGE": f"pam_unix({service}:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= "
                       f"rhost=203.0.113.9  user={user}", "_PID": str(pid), "_UID": uid, "_EXE": exe,
            "_CAP_EFFECTIVE": caps, "SYSLOG_IDENTIFIER": service if service != "sshd" else "sshd", "_BOOT_ID": "b"}


def sshd(pid: int, text: str, identifier: str = "sshd-session") -> dict:
    return {"MESSAGE": text, "_PID": str(pid), "_UID": "0", "_EXE": "/usr/lib/openssh/sshd-session",
            "SYSLOG_IDENTIFIER": identifier, "_BOOT_ID": "b"}


def test_one_attempt_written_twice_counts_once():
    entries = [pam(10), {**sshd(10, "Failed password for dupont from 203.0.113.9 port 5022 ssh2", "sshd"),
                         "_EXE": "/usr/sbin/sshd"}]
    found = watch.failures(entries)
    assert len(found) == 1 and found[0]["user"] == "dupont" and found[0]["rhost"] == "203.0.113.9"


def test_key_only_ssh_failures_count_without_pam():
    entries = [sshd(20 + i, f"Invalid user admin{i} from 198.51.100.7 port 4{i}") for i in range(3)]
    entries.append(sshd(30, "Failed publickey for root from 198.51.100.7 port 22 ssh2: ED25519 SHA256:x"))
    found = watch.failures(entries)
    assert len(found) == 4 and {f["rhost"] for f in found} == {"198.51.100.7"}


def test_lines_a_user_writes_do_not_count_but_su_and_sudo_do():
    forged = [pam(40 + i, uid="1000", exe="/usr/bin/logger") for i in range(10)]
    su = pam(50, service="su", uid="1000", exe="/usr/bin/su")
    sudo = pam(51, service="sudo", uid="1000", exe="/usr/bin/sudo")
    found = watch.failures([*forged, su, sudo])
    assert sorted(f["service"] for f in found) == ["su", "sudo"]


def test_a_preloaded_su_without_its_privileges_forges_nothing():
    """setpriv --no-new-privs env LD_PRELOAD=evil.so /usr/bin/su: _EXE is su's, but it runs as
    the user with no capability, and can write lines that look like sshd's or PAM's."""
    preloaded = [pam(60 + i, uid="1000", exe="/usr/bin/su", caps="0") for i in range(25)]
    as_sshd = [{**sshd(90 + i, "Failed password for root from 192.0.2.10 port 22 ssh2"), "_UID": "1000",
                "_EXE": "/usr/bin/su", "_CAP_EFFECTIVE": "0"} for i in range(25)]
    assert watch.failures([*preloaded, *as_sshd]) == []


def test_the_address_is_sshd_s_not_one_hidden_in_the_user_name():
    found = watch.failures([sshd(70, "Invalid user x from 192.0.2.1 port 1 from 198.51.100.7 port 40022")])
    assert [(f["user"], f["rhost"]) for f in found] == [("x from 192.0.2.1 port 1", "198.51.100.7")]


def test_an_invalid_user_s_attempt_counts_once():
    found = watch.failures([sshd(80, "Invalid user admin from 198.51.100.7 port 40022"),
                            sshd(80, "Failed password for invalid user admin from 198.51.100.7 port 40022 ssh2")])
    assert len(found) == 1


def test_a_burst_alerts_once_with_one_incident_then_reminds_then_ends(tmp_path, monkeypatch):
    clock = Clock()
    state_path = tmp_path / "state.json"
    alerts = []
    monkeypatch.setattr(watch, "alert", lambda practice, severity, title, details, **kw: alerts.append(
        (severity, title, kw.get("incident"), kw.get("incident_key"))) or True)
    monkeypatch.setattr(watch, "CONFIG", str(tmp_path / "config.json"))
    monkeypatch.setattr(watch, "STATE", str(state_path))
    (tmp_path / "config.json").write_text('{"failures": 5, "window_minutes": 60, "realert_hours": 24}', encoding="utf-8")
    journal = {"entries": [pam(100 + i) for i in range(6)]}
    monkeypatch.setattr(watch, "read_journal", lambda minutes: journal["entries"])
    monkeypatch.setattr(watch, "State", lambda path, realert_seconds: cc.State(path, realert_seconds, clock=clock))

    assert watch.main() == 3
    first_key = alerts[0][3]
    assert alerts == [("warning", "6 failed logins in 60 min", "failed_logins", first_key)] and first_key
    clock.now += 900
    assert watch.main() == 0 and len(alerts) == 1, "the same burst alerted again within the day"
    clock.now += 86400
    assert watch.main() == 3 and alerts[-1][3] == first_key, "a reminder named another incident"
    journal["entries"] = [pam(200)]
    assert watch.main() == 0  # under the threshold: the burst is over
    clock.now += 900
    journal["entries"] = [pam(300 + i) for i in range(5)]
    assert watch.main() == 3 and alerts[-1][3] != first_key, "a new burst is a new incident"


def test_a_burst_whose_mail_failed_is_told_again_without_a_second_incident(tmp_path, monkeypatch):
    clock = Clock()
    (tmp_path / "config.json").write_text('{"failures": 5, "window_minutes": 60, "realert_hours": 24}', encoding="utf-8")
    monkeypatch.setattr(watch, "CONFIG", str(tmp_path / "config.json"))
    monkeypatch.setattr(watch, "STATE", str(tmp_path / "state.json"))
    monkeypatch.setattr(watch, "read_journal", lambda minutes: [pam(100 + i) for i in range(5)])
    monkeypatch.setattr(watch, "State", lambda path, realert_seconds: cc.State(path, realert_seconds, clock=clock))
    sent = []
    monkeypatch.setattr(watch, "alert", lambda *a, **kw: sent.append(kw.get("incident_key")) and False)  # not queued
    assert watch.main() == 3
    clock.now += 900
    assert watch.main() == 3
    assert len(sent) == 2 and sent[0] == sent[1], "the retry named another incident: the register would hold two"


@pytest.mark.parametrize("count,expected", [(4, "quiet"), (5, "burst")])
def test_the_threshold_is_inclusive(tmp_path, count, expected):
    state = cc.State(tmp_path / "s.json", 86400, clock=Clock())
    assert watch.decide([{}] * count, CONFIG, state) == expected
