"""cabinet-accounts-check (role system_baseline, BP-028 R30): which people's accounts get locked,
from which signs of use, and what a local user cannot make it believe."""

from __future__ import annotations

import json
import pwd
import struct
from pathlib import Path

import pytest
from conftest import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "roles" / "system_baseline" / "files" / "usr" / "local" / "sbin" / "cabinet-accounts-check"
DAY = 86400.0
NOW = 2_000_000_000.0


@pytest.fixture(scope="module")
def check():
    return load_script(SCRIPT)


def entry(name: str, uid: int, shell: str = "/bin/bash") -> pwd.struct_passwd:
    return pwd.struct_passwd((name, "x", uid, uid, "", f"/home/{name}", shell))


def journal_line(message: str, when: float, uid: str = "0", cursor: str = "c", transport: str = "syslog") -> str:
    return json.dumps({"MESSAGE": message, "_UID": uid, "_TRANSPORT": transport,
                       "__REALTIME_TIMESTAMP": str(int(when * 1e6)), "__CURSOR": cursor})


def test_people_are_login_accounts_between_1000_and_59999(check):
    entries = [entry("root", 0), entry("daemon", 1, "/usr/sbin/nologin"), entry("alice", 1000),
               entry("svc", 1001, "/usr/sbin/nologin"), entry("nobody", 65534), entry("bob", 59999, "/bin/sh"),
               entry("nouser", 2000, "/bin/false"), entry("high", 60000)]
    assert check.people(entries) == ["alice", "bob"]


def test_sessions_count_only_from_root_processes_and_people_services(check):
    lines = [
        journal_line("pam_unix(sshd:session): session opened for user alice(uid=1000) by (uid=0)", NOW - 10),
        # A user writes the same words with logger(1): journald records the user's own _UID.
        journal_line("pam_unix(sshd:session): session opened for user bob(uid=1001) by (uid=0)", NOW - 5, uid="1002"),
        journal_line("pam_unix(cron:session): session opened for user carol(uid=1003) by (uid=0)", NOW - 4),
        journal_line("pam_unix(systemd-user:session): session opened for user dave(uid=1004) by (uid=0)", NOW - 3),
        journal_line("pam_unix(login:session): session opened for user erin(uid=1005) by LOGIN(uid=0)", NOW - 2),
        journal_line("pam_unix(sshd:session): session closed for user frank", NOW - 1),
        journal_line("something: pam_unix(sshd:session): session opened for user gina(uid=1006)", NOW - 1),
        # A root service that prints a line a user chose (its standard output): not syslog.
        journal_line("pam_unix(sshd:session): session opened for user hank(uid=1007)", NOW - 1, transport="stdout"),
        # Capitals: an account name Debian's useradd and GNOME accept.
        journal_line("pam_unix(gdm-password:session): session opened for user Marie(uid=1008)", NOW - 1),
        "not json", json.dumps(["a list"]),
        journal_line("pam_unix(gdm-password:session): session opened for user alice(uid=1000)", NOW - 1, cursor="last"),
    ]
    sessions, cursor, first = check.parse_sessions(lines)
    assert sessions == {"alice": NOW - 1, "erin": NOW - 2, "Marie": NOW - 1}
    assert cursor == "last"
    assert first == NOW - 10


def shadow(changed_days_ago: float | None = None, expire_day: int | None = None) -> dict:
    return {"changed": None if changed_days_ago is None else NOW - changed_days_ago * DAY, "expire_day": expire_day}


def test_nobody_is_locked_before_the_check_itself_watched_the_days(check):
    state: dict = {}
    # A password changed years ago, no session: first sight now, nothing locked.
    assert check.decide(NOW, ["alice"], {"alice": shadow(2000)}, {}, state, 90, set()) == ([], [])
    assert state["first_seen"]["alice"] == NOW
    assert check.decide(NOW + 89 * DAY, ["alice"], {"alice": shadow(2000)}, {}, state, 90, set()) == ([], [])
    assert check.decide(NOW + 90 * DAY, ["alice"], {"alice": shadow(2000)}, {}, state, 90, set()) == (["alice"], [])


def test_the_latest_sign_of_use_counts(check):
    state = {"first_seen": {"a": NOW - 400 * DAY, "b": NOW - 400 * DAY, "c": NOW - 400 * DAY, "d": NOW - 400 * DAY}}
    signs = {"a": [NOW - 10 * DAY], "b": [NOW - 100 * DAY, NOW - 95 * DAY]}
    shadows = {"a": shadow(), "b": shadow(), "c": shadow(30), "d": shadow(200)}
    to_lock, _ = check.decide(NOW, ["a", "b", "c", "d"], shadows, signs, state, 90, set())
    assert to_lock == ["b", "d"]
    assert state["last_active"]["b"] == NOW - 95 * DAY
    # A sign kept from an earlier check still counts when no new one comes.
    to_lock, _ = check.decide(NOW + 1, ["a"], {"a": shadow()}, {}, state, 90, set())
    assert to_lock == []


def test_exempt_and_already_expired_accounts_are_left_alone(check):
    state = {"first_seen": {"admin": NOW - 400 * DAY, "gone": NOW - 400 * DAY}}
    today = int(NOW // DAY)
    to_lock, unlocked = check.decide(NOW, ["admin", "gone"], {"admin": shadow(), "gone": shadow(expire_day=today - 3)},
                                     {}, state, 90, {"admin"})
    assert (to_lock, unlocked) == ([], [])


def test_an_unlock_by_the_admin_gives_the_days_again(check):
    today = int(NOW // DAY)
    state = {"first_seen": {"alice": NOW - 400 * DAY}, "last_active": {"alice": NOW - 300 * DAY},
             "locked": {"alice": NOW - 10 * DAY}}
    # Still expired: ours, nothing to do.
    assert check.decide(NOW, ["alice"], {"alice": shadow(expire_day=1)}, {}, state, 90, set()) == ([], [])
    # The admin cleared the expiry: seen as an unlock, a sign of use today.
    assert check.decide(NOW, ["alice"], {"alice": shadow()}, {}, state, 90, set()) == ([], ["alice"])
    assert "alice" not in state["locked"]
    assert state["last_active"]["alice"] == NOW
    assert check.decide(NOW + 89 * DAY, ["alice"], {"alice": shadow()}, {}, state, 90, set()) == ([], [])
    assert check.decide(NOW + 90 * DAY, ["alice"], {"alice": shadow(expire_day=today + 1000)}, {}, state, 90, set()) \
        == (["alice"], [])


def test_damaged_or_future_state_never_makes_an_account_look_older(check):
    state = {"first_seen": {"a": "yesterday", "b": NOW + 50 * DAY, "c": True}, "last_active": {"a": float("nan")},
             "locked": []}
    assert check.decide(NOW, ["a", "b", "c"], {}, {"a": [float("inf")]}, state, 1, set()) == ([], [])
    assert state["first_seen"] == {"a": NOW, "b": NOW, "c": NOW}


def test_accounts_gone_from_the_system_are_forgotten(check):
    state = {"first_seen": {"a": NOW, "old": NOW}, "last_active": {"old": NOW}, "locked": {"old": NOW}}
    check.decide(NOW, ["a"], {}, {}, state, 90, set())
    assert "old" not in state["first_seen"] and "old" not in state["last_active"] and "old" not in state["locked"]


def test_shadow_fields(check, tmp_path):
    path = tmp_path / "shadow"
    path.write_text("root:$y$x:19000:0:99999:7:::\nalice:!:20000:0:99999:7::1:\nbob:*:::::::\nbad line\n")
    found = check.read_shadow(str(path))
    assert found["root"] == {"changed": 19000 * DAY, "expire_day": None}
    assert found["alice"] == {"changed": 20000 * DAY, "expire_day": 1}
    assert found["bob"] == {"changed": None, "expire_day": None}
    assert "bad line" not in found


def test_lastlog_records_are_read_at_the_uid_offset(check, tmp_path, monkeypatch):
    record = struct.Struct("=i32s256s")
    data = bytearray(record.size * 1002)
    record.pack_into(data, record.size * 1001, int(NOW - 5 * DAY), b"pts/0", b"10.0.0.1")
    (tmp_path / "lastlog").write_bytes(bytes(data))
    monkeypatch.setattr(check, "LASTLOG", str(tmp_path / "lastlog"))
    monkeypatch.setattr(check, "LASTLOG2", str(tmp_path / "absent.db"))
    assert check.lastlog_times({"alice": 1000, "bob": 1001, "far": 5000}) == {"bob": NOW - 5 * DAY}


class FakeRun:
    def __init__(self, results):
        self.results = list(results)
        self.calls = []

    def __call__(self, argv, **_):
        self.calls.append(argv)
        code, out, err = self.results.pop(0)
        return type("Done", (), {"returncode": code, "stdout": out, "stderr": err})()


def test_a_journal_error_is_never_read_as_no_session(check, monkeypatch):
    # A lost cursor: journalctl says so on stderr and exits 1; the previous check's time is used.
    run = FakeRun([(1, "", "Failed to seek to cursor: Invalid argument"),
                   (0, journal_line("pam_unix(sshd:session): session opened for user alice(uid=1000)", NOW, cursor="n"), "")])
    monkeypatch.setattr(check.subprocess, "run", run)
    assert check.journal_sessions("old", NOW - DAY) == ({"alice": NOW}, "n")
    assert any(a.startswith("--after-cursor=old") for a in run.calls[0])
    assert f"--since=@{int(NOW - DAY) - 60}" in run.calls[1]
    # Both fail: an error, not "nobody logged in".
    monkeypatch.setattr(check.subprocess, "run", FakeRun([(1, "", "bad cursor"), (1, "", "No journal files")]))
    with pytest.raises(RuntimeError):
        check.journal_sessions("old", NOW - DAY)
    # Nothing matched: 1, silent.
    monkeypatch.setattr(check.subprocess, "run", FakeRun([(1, "", "")]))
    assert check.journal_sessions("old", NOW - DAY) == ({}, "old")


def test_time_the_check_did_not_watch_is_not_counted(check):
    """A workstation off at weekends or for months, or a clock that jumped: the check missed
    the sessions, so those days do not count (the dates move forward by them)."""
    assert not check.not_watched(None, NOW)
    assert not check.not_watched(NOW - DAY, NOW)
    assert check.not_watched(NOW - 3 * DAY, NOW)
    assert check.not_watched(NOW + 60, NOW), "a clock set back"
    state = {"first_seen": {"a": NOW - 10 * DAY, "b": "bad"}, "last_active": {"a": NOW - 5 * DAY}}
    check.pause(state, 3 * DAY)
    assert state == {"first_seen": {"a": NOW - 7 * DAY, "b": "bad"}, "last_active": {"a": NOW - 2 * DAY}}


def test_a_workstation_off_at_weekends_still_locks_after_90_watched_days(check):
    """Checks on weekdays only (the machine off from Friday evening to Monday): an account
    nobody uses is locked after 90 days the check watched, and one used every Monday never."""
    state: dict = {}
    last_run = None
    locked_on = None
    for n in range(400):
        now = NOW + n * DAY
        if (n % 7) in (5, 6):
            continue  # the weekend: off
        if check.not_watched(last_run, now):
            check.pause(state, now - last_run - DAY)
        signs = {"used": [now]} if n % 7 == 0 else {}
        to_lock, _ = check.decide(now, ["idle", "used"], {"idle": shadow(3000), "used": shadow(3000)}, signs,
                                  state, 90, set())
        last_run = now
        if to_lock:
            assert to_lock == ["idle"], to_lock
            locked_on = n
            break
    assert locked_on is not None, "never locked: the weekends reset the count"
    # 90 checks, five a week: about 126 calendar days.
    assert 120 <= locked_on <= 132, locked_on


def test_every_account_at_once_is_never_locked(check):
    assert check.mass_lock(["a", "b"], ["a", "b"])
    assert check.mass_lock(["a", "b", "c"], ["a", "b"])
    assert not check.mass_lock(["a"], ["a"]), "one account alone (a one-person practice) is locked"
    assert not check.mass_lock(["a", "b"], ["a", "b", "c"])


def test_only_open_sessions_are_use_now_and_jobs_are_named_not_use(check, tmp_path, monkeypatch):
    """A screen-locked session (logind: active or online) is use now; a closing one (a process
    left behind) is not. A crontab or lingering services, which any user can make, are no use:
    those accounts are found, to be named to the MSP instead of locked."""
    states = {"alice": "active\n", "bob": "online\n", "carol": "closing\n"}
    monkeypatch.setattr(check.subprocess, "run", lambda argv, **_: type(
        "Done", (), {"returncode": 0 if argv[-1] in states else 1, "stdout": states.get(argv[-1], ""), "stderr": ""})())
    assert check.in_session_now(["alice", "bob", "carol", "dave"]) == {"alice", "bob"}
    spool, linger = tmp_path / "crontabs", tmp_path / "linger"
    spool.mkdir()
    linger.mkdir()
    (spool / "dave").write_text("0 2 * * * dump\n")
    (linger / "erin").write_text("")
    assert check.running_jobs(["dave", "erin", "frank"], spool=str(spool), linger=str(linger)) == {"dave", "erin"}


def test_the_locks_run_in_an_integrity_window_where_there_is_one(check, monkeypatch, tmp_path):
    """begin gives the token seal is called with; no integrity check installed, or a begin that
    fails or prints something else, gives no window (the locks still happen, and the integrity
    check then reports /etc/shadow: loud, not hidden)."""
    calls = []
    tool = tmp_path / "cabinet-integrity"
    monkeypatch.setattr(check, "INTEGRITY", str(tool))
    assert check.integrity_window("begin") is None, "no integrity check installed"
    tool.write_text("")

    def run(out: str, code: int = 0):
        def fake(argv, **_):
            calls.append(argv)
            return type("Done", (), {"returncode": code, "stdout": out, "stderr": ""})()
        return fake

    monkeypatch.setattr(check.subprocess, "run", run('{"run": "1234"}\n'))
    assert check.integrity_window("begin") == "1234"
    check.integrity_window("seal", "1234")
    assert calls == [[str(tool), "begin"], [str(tool), "seal", "1234"]]
    monkeypatch.setattr(check.subprocess, "run", run("not json"))
    assert check.integrity_window("begin") is None
    monkeypatch.setattr(check.subprocess, "run", run("", code=1))
    assert check.integrity_window("begin") is None
