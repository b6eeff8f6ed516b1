"""The incident register (cabinet_common, cabinet-alert --incident, cabinet-incident): alerts that
may mean a breach are recorded before they are mailed, appended and never rewritten, in a
root-only file that a planted link or a second name cannot redirect."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import cabinet_common as cc
from conftest import load_script
from test_cabinet_alert import mail_rig

ROOT = Path(__file__).resolve().parents[2]
SBIN = ROOT / "roles" / "alerting" / "files" / "usr" / "local" / "sbin"


@pytest.fixture(autouse=True)
def clear_append_only(tmp_path):
    """Where the kernel lets root set it (here, not in a container), the register gets the
    append-only flag: take it off afterwards, or pytest cannot remove its temporary files."""
    yield
    import array
    import fcntl
    for path in tmp_path.rglob(cc.INCIDENT_REGISTER):
        if path.is_symlink() or not path.is_file():
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            flags = array.array("l", [0])
            fcntl.ioctl(fd, cc.FS_IOC_GETFLAGS, flags, True)
            flags[0] &= ~cc.FS_APPEND_FL
            fcntl.ioctl(fd, cc.FS_IOC_SETFLAGS, flags, True)
        except OSError:
            pass
        finally:
            os.close(fd)


def lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / cc.INCIDENT_REGISTER).read_text(encoding="utf-8").splitlines()]


def test_open_then_close_appends_and_never_rewrites(tmp_path):
    folder = tmp_path / "incidents"
    first = cc.record_incident("virus", "antivirus", "critical", "Virus found", "EICAR in /srv/x", "h1",
                               directory=folder, now="2026-12-07T10:00:00Z")
    cc.record_incident("integrity", "system_baseline", "warning", "Files changed", "/etc/passwd", "h1",
                       directory=folder, now="2026-12-07T11:00:00Z")
    before = (folder / cc.INCIDENT_REGISTER).read_bytes()
    cc.close_incident(first["id"], "Notifié à la CNIL le 8/12", directory=folder, now="2026-12-08T09:00:00Z")
    after = (folder / cc.INCIDENT_REGISTER).read_bytes()
    assert after.startswith(before) and len(lines(folder)) == 3
    fd = os.open(folder / cc.INCIDENT_REGISTER, os.O_RDONLY)
    try:
        flagged = cc.append_only(fd)
    finally:
        os.close(fd)
    if flagged:  # where the kernel allows it (not in a container)
        with pytest.raises(PermissionError):
            open(folder / cc.INCIDENT_REGISTER, "w", encoding="utf-8").close()  # even root cannot truncate it
    found = {i["id"]: i for i in cc.incidents(folder)}
    assert found[first["id"]]["status"] == "closed" and found[first["id"]]["note"] == "Notifié à la CNIL le 8/12"
    assert [i["status"] for i in found.values()] == ["closed", "open"]
    assert os.stat(folder).st_mode & 0o777 == 0o700
    assert os.stat(folder / cc.INCIDENT_REGISTER).st_mode & 0o777 == 0o600
    with pytest.raises(KeyError):
        cc.close_incident(first["id"], "twice", directory=folder)  # only an open one closes
    with pytest.raises(ValueError):
        cc.record_incident("coffee", "x", "info", "t", "d", "h", directory=folder)


def test_reading_creates_nothing_and_a_bad_line_is_shown_not_dropped(tmp_path):
    folder = tmp_path / "incidents"
    assert cc.incidents(folder) == [] and not folder.exists()
    cc.record_incident("virus", "antivirus", "critical", "t", "d", "h", directory=folder)
    with open(folder / cc.INCIDENT_REGISTER, "a", encoding="utf-8") as handle:
        handle.write("not json\n")
    statuses = [i["status"] for i in cc.incidents(folder)]
    assert statuses == ["open", "unreadable"]


def test_a_link_planted_for_the_register_is_refused(tmp_path):
    folder = tmp_path / "incidents"
    folder.mkdir(mode=0o700)
    victim = tmp_path / "shadow"
    victim.write_text("root:x\n", encoding="utf-8")
    (folder / cc.INCIDENT_REGISTER).symlink_to(victim)
    with pytest.raises(OSError):
        cc.record_incident("virus", "antivirus", "critical", "t", "d", "h", directory=folder)
    assert victim.read_text(encoding="utf-8") == "root:x\n"
    (folder / cc.INCIDENT_REGISTER).unlink()
    os.link(victim, folder / cc.INCIDENT_REGISTER)  # a second name of another file
    with pytest.raises(cc.UnsafePath):
        cc.record_incident("virus", "antivirus", "critical", "t", "d", "h", directory=folder)
    assert victim.read_text(encoding="utf-8") == "root:x\n"


def test_a_folder_others_can_write_is_refused(tmp_path):
    folder = tmp_path / "incidents"
    folder.mkdir()
    folder.chmod(0o777)
    with pytest.raises(cc.UnsafePath):
        cc.record_incident("virus", "antivirus", "critical", "t", "d", "h", directory=folder)


def test_alert_passes_the_incident_kind_and_refuses_an_unknown_one(monkeypatch):
    calls = []

    class Done:
        returncode = 0

    monkeypatch.setattr(cc.subprocess, "run", lambda argv, **kw: calls.append(argv) or Done())
    assert cc.alert("antivirus", "critical", "Virus found", "x", incident="virus") is True
    assert "--incident=virus" in calls[0] and calls[0][-1] == "-"
    with pytest.raises(ValueError):
        cc.alert("antivirus", "critical", "Virus found", "x", incident="nope")


def alert_rig(monkeypatch, tmp_path, sendmail_rc: int = 0):
    """test_cabinet_alert's mail rig, with the register in tmp_path."""
    alert, mail = mail_rig(monkeypatch, tmp_path, sendmail_rc)
    folder = tmp_path / "incidents"
    real = cc.record_incident
    monkeypatch.setattr(alert, "record_incident", lambda *a, **kw: real(*a, directory=folder, **kw))
    return alert, mail, folder


def test_cabinet_alert_records_before_it_mails_even_when_the_mail_fails(monkeypatch, tmp_path):
    alert, mail, folder = alert_rig(monkeypatch, tmp_path, sendmail_rc=75)
    assert alert.main(["-p", "antivirus", "-s", "critical", "--incident", "virus", "-t", "Virus quarantined",
                       "EICAR", "in", "/srv/cabinet/x"]) == 1  # mail not queued
    entry = lines(folder)[0]
    assert entry["kind"] == "virus" and entry["host"] == "h.example" and entry["title"] == "Virus quarantined"
    assert "EICAR in /srv/cabinet/x" in entry["details"]
    assert f"Incident {entry['id']} recorded" in mail.read_text(encoding="utf-8")


def test_cabinet_alert_says_so_when_the_register_cannot_be_written(monkeypatch, tmp_path):
    alert, mail, folder = alert_rig(monkeypatch, tmp_path)
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)  # unsafe: refused
    assert alert.main(["-p", "backup", "-s", "critical", "--incident", "offsite_tampered", "-t", "Archives gone"]) == 1
    assert "THE INCIDENT COULD NOT BE RECORDED" in mail.read_text(encoding="utf-8")  # the alert still left


def test_cabinet_incident_lists_with_the_72_hour_deadline_and_closes(monkeypatch, tmp_path, capsys):
    folder = tmp_path / "incidents"
    entry = cc.record_incident("virus", "antivirus", "critical", "Virus", "d", "h", directory=folder,
                               now="2026-12-07T10:00:00Z")
    tool = load_script(SBIN / "cabinet-incident")
    monkeypatch.setattr(tool.cc, "INCIDENT_DIR", str(folder))
    assert tool.main(["list", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown[0]["deadline"] == "2026-12-10T10:00:00Z" and shown[0]["status"] == "open"
    assert tool.main(["close", entry["id"], "--note", "Pas de risque : fichier de test"]) == 0
    capsys.readouterr()
    assert tool.main(["list", "--open", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert tool.main(["close", "nope", "--note", "x"]) == 1


def test_one_event_is_one_incident_however_often_it_is_alerted(tmp_path):
    """An alert retried because its mail failed, or recalled, names the same event: the register
    keeps the first incident (and its time), even once it is closed."""
    folder = tmp_path / "incidents"
    first = cc.record_incident("virus", "antivirus", "critical", "Virus quarantined", "d", "h", key="quarantined-a",
                               detected="2026-12-07T09:00:00Z", directory=folder, now="2026-12-07T10:00:00Z")
    assert first["detected"] == "2026-12-07T09:00:00Z", "the clock starts at the detection, not at the alert"
    again = cc.record_incident("virus", "antivirus", "critical", "Virus quarantined", "d", "h", key="quarantined-a",
                               directory=folder, now="2026-12-07T11:00:00Z")
    assert again["id"] == first["id"] and len(lines(folder)) == 1
    cc.close_incident(first["id"], "faux positif", directory=folder)
    cc.record_incident("virus", "antivirus", "critical", "t", "d", "h", key="quarantined-a", directory=folder)
    assert [i["status"] for i in cc.incidents(folder)] == ["closed"]
    cc.record_incident("virus", "antivirus", "critical", "t", "d", "h", key="quarantined-b", directory=folder)
    assert len(cc.incidents(folder)) == 2


def test_a_line_cut_short_does_not_swallow_the_next_and_can_be_closed(tmp_path):
    folder = tmp_path / "incidents"
    cc.record_incident("virus", "antivirus", "critical", "t", "d", "h", directory=folder)
    with open(folder / cc.INCIDENT_REGISTER, "a", encoding="utf-8") as handle:
        handle.write('{"event": "open", "id": "cut')  # a crash or a full disk in the middle of a line
    after = cc.record_incident("integrity", "system_baseline", "warning", "Files changed", "d", "h", directory=folder)
    found = {i["id"]: i for i in cc.incidents(folder)}
    assert found[after["id"]]["status"] == "open", "the incident after the cut line was lost"
    assert found["line-2"]["status"] == "unreadable"
    cc.close_incident("line-2", "ligne coupée par une coupure de courant", directory=folder)
    assert {i["id"]: i for i in cc.incidents(folder)}["line-2"]["status"] == "closed"


def test_cabinet_alert_knows_the_register_s_kinds_without_importing_the_helpers(monkeypatch, tmp_path):
    alert, mail, folder = alert_rig(monkeypatch, tmp_path)
    assert set(alert.INCIDENT_KINDS) == set(cc.INCIDENT_KINDS)
    with pytest.raises(SystemExit) as stop:
        alert.main(["-p", "antivirus", "-s", "critical", "--incident", "virus", "--incident-detected", "hier",
                    "-t", "Virus"])
    assert stop.value.code == 2


def test_a_file_name_with_a_unicode_line_break_cannot_split_the_register(tmp_path):
    """U+2028, U+2029 and U+0085 end a line for str.splitlines(): a virus's file name holding one
    must not turn the incident into two unreadable lines."""
    folder = tmp_path / "incidents"
    name = "/srv/cabinet/a\u2028b\u0085c\u2029.pdf"
    for _ in range(2):
        cc.record_incident("virus", "antivirus", "critical", f"Virus quarantined in {name}", name, "h",
                           key=f"quarantined-{name}", directory=folder)
    found = cc.incidents(folder)
    assert [(i["status"], i["title"]) for i in found] == [("open", f"Virus quarantined in {name}")]


def test_a_long_key_is_recorded_once(tmp_path):
    folder = tmp_path / "incidents"
    for _ in range(3):
        cc.record_incident("virus", "antivirus", "critical", "t", "d", "h", key="k" * 500, directory=folder)
    assert len(lines(folder)) == 1
