"""cabinet-ups-event (role ups_monitoring): which UPS events are mailed, without containers.

An unplugged UPS makes upsmon repeat NOCOMM every 5 minutes, and every play reported a dead
driver again: repeats of a kind within the period are logged, not mailed; the end of the
condition always is, and lets the next occurrence alert at once; shutdown events are never
held back. The alert command is a fake that records its calls.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from conftest import load_script

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "ups_monitoring"
SCRIPT = ROLE / "files" / "usr" / "local" / "sbin" / "cabinet-ups-event"
sys.path.insert(0, str(ROOT / "roles" / "alerting" / "files" / "usr" / "local" / "lib" / "cabinet"))

HOUR = 3600


ev = load_script(SCRIPT)
SEVERITIES = yaml.safe_load((ROLE / "vars" / "main.yml").read_text(encoding="utf-8"))["__ups_monitoring_notifications"]
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text(encoding="utf-8"))


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def title(argv: list[str]) -> str:
    """The --title of a cabinet-alert command line, as --title=T or --title T."""
    for i, arg in enumerate(argv):
        if arg.startswith("--title="):
            return arg[len("--title="):]
        if arg == "--title":
            return argv[i + 1]
    raise AssertionError(f"no --title in {argv}")


@pytest.fixture()
def fake_alert(tmp_path):
    """An alert command that appends one JSON line per call: its arguments and standard input."""
    record = tmp_path / "alerts.jsonl"
    command = tmp_path / "fake-cabinet-alert"
    command.write_text(
        "#!/usr/bin/python3\nimport json, sys\n"
        f"with open({str(record)!r}, 'a') as f:\n"
        "    f.write(json.dumps({'argv': sys.argv[1:], 'body': sys.stdin.read()}) + '\\n')\n",
        encoding="utf-8")
    command.chmod(0o755)

    class Alerts:
        path = str(command)

        def titles(self) -> list[str]:
            if not record.exists():
                return []
            calls = [json.loads(line) for line in record.read_text(encoding="utf-8").splitlines()]
            return [title(c["argv"]) for c in calls]

        def bodies(self) -> list[str]:
            if not record.exists():
                return []
            return [json.loads(line)["body"] for line in record.read_text(encoding="utf-8").splitlines()]

    return Alerts()


@pytest.fixture()
def conf(tmp_path, fake_alert):
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    return {
        "mode": "standalone",
        "alert_command": fake_alert.path,
        "state_dir": str(state_dir),
        "realert_hours": DEFAULTS["ups_monitoring_realert_hours"],
        "severities": SEVERITIES,
        "timer_name": "cabinet-battery-shutdown",
        "battery_shutdown_minutes": 0,
        "ups_name": "ups",
        "driver": "usbhid-ups",
        "port": "auto",
    }


def event(monkeypatch, conf, kind: str, message: str) -> int:
    monkeypatch.setenv("NOTIFYTYPE", kind)
    monkeypatch.setenv("UPSNAME", "ups@localhost")
    return ev.notify(conf, message)


# ----------------------------------------------------------------------------- the decision
@pytest.fixture()
def state(tmp_path):
    clock = Clock()
    return ev.cc.State(tmp_path / "events.json", 24 * HOUR, clock=clock), clock


def test_a_repeated_kind_is_mailed_once_per_period(state):
    st, clock = state
    assert ev.should_mail(st, "NOCOMM")
    for _ in range(12 * 24 - 1):          # every 5 minutes for a day, less one
        clock.now += 300
        assert not ev.should_mail(st, "NOCOMM")
    clock.now += 300
    assert ev.should_mail(st, "NOCOMM"), "still unreachable after the period: reminded"


def test_kinds_are_limited_separately(state):
    st, _ = state
    assert ev.should_mail(st, "COMMBAD")
    assert ev.should_mail(st, "NOCOMM")
    assert ev.should_mail(st, "REPLBATT")
    assert ev.should_mail(st, "DRIVER")
    assert not any(ev.should_mail(st, kind) for kind in ("COMMBAD", "NOCOMM", "REPLBATT", "DRIVER"))


@pytest.mark.parametrize(("end", "starts"), [("COMMOK", ("COMMBAD", "NOCOMM", "DRIVER")), ("ONLINE", ("ONBATT",))])
def test_the_end_of_a_condition_is_always_mailed_and_rearms_it(state, end, starts):
    st, clock = state
    for kind in starts:
        assert ev.should_mail(st, kind)
    assert ev.should_mail(st, end)
    clock.now += 60
    assert ev.should_mail(st, end), "the end of a condition was held back"
    for kind in starts:
        assert ev.should_mail(st, kind), f"{kind} after {end} was not alerted at once"


@pytest.mark.parametrize("kind", ["LOWBATT", "FSD", "SHUTDOWN"])
def test_shutdown_events_are_never_held_back(state, kind):
    st, clock = state
    assert ev.should_mail(st, kind)
    clock.now += 60
    assert ev.should_mail(st, kind)


def test_a_clock_set_back_does_not_silence_for_ever(state):
    st, clock = state
    assert ev.should_mail(st, "NOCOMM")
    clock.now -= 48 * HOUR
    assert ev.should_mail(st, "NOCOMM")


# ----------------------------------------------------------------------------- as upsmon runs it
def test_unplugged_ups_mails_once_then_logs_repeats(monkeypatch, conf, fake_alert, capsys):
    assert event(monkeypatch, conf, "COMMBAD", "Communications with UPS ups@localhost lost") == 0
    for n in range(5):
        assert event(monkeypatch, conf, "NOCOMM", f"UPS ups@localhost is unavailable ({n})") == 0
    assert fake_alert.titles() == ["UPS communication lost (ups@localhost)", "UPS unreachable (ups@localhost)"]
    assert "(0)" in fake_alert.bodies()[1]
    assert capsys.readouterr().out.count("logged, not mailed") == 4

    assert event(monkeypatch, conf, "COMMOK", "Communications with UPS ups@localhost established") == 0
    assert event(monkeypatch, conf, "NOCOMM", "UPS ups@localhost is unavailable (again)") == 0
    assert fake_alert.titles()[2:] == ["UPS communication restored (ups@localhost)", "UPS unreachable (ups@localhost)"]
    assert "(again)" in fake_alert.bodies()[3]


def test_state_is_private_and_survives_between_runs(monkeypatch, conf, fake_alert):
    event(monkeypatch, conf, "REPLBATT", "battery worn")
    path = Path(conf["state_dir"]) / "events.json"
    assert path.stat().st_mode & 0o777 == 0o600
    assert "REPLBATT" in json.loads(path.read_text(encoding="utf-8"))["alerted"]
    event(monkeypatch, conf, "REPLBATT", "battery worn, 12 h later")
    assert fake_alert.titles() == ["UPS battery needs replacing (ups@localhost)"]


def test_a_failed_alert_is_tried_again_next_time(monkeypatch, conf, fake_alert, tmp_path):
    conf["alert_command"] = str(tmp_path / "missing-alert-command")
    assert event(monkeypatch, conf, "NOCOMM", "first") == 1
    conf["alert_command"] = fake_alert.path
    assert event(monkeypatch, conf, "NOCOMM", "second") == 0
    assert fake_alert.titles() == ["UPS unreachable (ups@localhost)"]


def test_upssched_still_sees_every_battery_event(monkeypatch, conf, fake_alert, tmp_path):
    """The early shutdown's timer must not depend on whether an alert was mailed."""
    calls = tmp_path / "upssched-calls"
    upssched = tmp_path / "upssched"
    upssched.write_text(f"#!/bin/sh\necho \"$NOTIFYTYPE\" >> {calls}\n", encoding="utf-8")
    upssched.chmod(0o755)
    monkeypatch.setattr(ev, "UPSSCHED", str(upssched))
    conf["battery_shutdown_minutes"] = 5
    event(monkeypatch, conf, "ONBATT", "on battery")
    event(monkeypatch, conf, "ONBATT", "on battery again (upsmon restarted)")
    event(monkeypatch, conf, "ONLINE", "on line")
    assert calls.read_text().split() == ["ONBATT", "ONBATT", "ONLINE"]
    assert fake_alert.titles() == ["UPS on battery: mains power lost (ups@localhost)",
                                   "UPS back on mains power (ups@localhost)"]


# ----------------------------------------------------------------------------- from the role's run
def test_driver_down_in_every_play_is_mailed_once_and_says_so(conf, fake_alert, capsys):
    assert ev.driver_down(conf, "failed") == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "alerted"
    assert ev.driver_down(conf, "failed") == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "repeat"
    assert fake_alert.titles() == ["UPS driver usbhid-ups cannot start: no clean shutdown on power loss"]
    assert "nut-driver@ups.service" in fake_alert.bodies()[0]


def test_the_role_reports_changed_only_when_an_alert_went_out():
    tasks = yaml.safe_load((ROLE / "tasks" / "service.yml").read_text(encoding="utf-8"))
    task = next(t for t in tasks if t["name"].startswith("UPS monitoring | Alert when the driver cannot reach"))
    assert task["ansible.builtin.command"]["argv"][1:] == ["--driver-down", "{{ __ups_monitoring_driver.stdout }}"]
    assert task["changed_when"] == "__ups_monitoring_driver_alert.stdout_lines[-1] | default('') == 'alerted'"


@pytest.mark.parametrize("kind", ["LOWBATT", "NOCOMM", "COMMOK"])
def test_the_state_lock_is_never_held_while_an_alert_is_sent(monkeypatch, conf, tmp_path, kind):
    """LOWBATT, FSD and SHUTDOWN come within seconds, and upsmon's end kills its children: an
    event must never wait for another one's alert to be sent (the Molecule run caught a LOWBATT
    alert lost that way)."""
    seen = tmp_path / "lock-free-during-alert"
    command = tmp_path / "alert-checking-the-lock"
    command.write_text(
        "#!/usr/bin/python3\nimport fcntl, sys\nsys.stdin.read()\n"
        f"with open({str(Path(conf['state_dir']) / 'events.lock')!r}, 'a+') as f:\n"
        "    try:\n        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB); verdict = 'free'\n"
        "    except BlockingIOError:\n        verdict = 'held'\n"
        f"open({str(seen)!r}, 'a').write(verdict + '\\n')\n", encoding="utf-8")
    command.chmod(0o755)
    conf["alert_command"] = str(command)
    assert event(monkeypatch, conf, kind, "event") == 0
    assert seen.read_text().split() == ["free"]


@pytest.mark.parametrize("breakage", ["state-is-a-folder", "folder-others-can-write"])
def test_a_broken_state_neither_loses_the_alert_nor_the_early_shutdown(monkeypatch, conf, fake_alert, tmp_path,
                                                                       breakage):
    """Fail open: the rate limit's state cannot be used (a damaged file, an unsafe folder), yet
    ONBATT is mailed and upssched still starts the early-shutdown timer."""
    state_dir = Path(conf["state_dir"])
    if breakage == "state-is-a-folder":
        (state_dir / "events.json").mkdir()
    else:
        state_dir.chmod(0o777)
    calls = tmp_path / "upssched-calls"
    upssched = tmp_path / "upssched"
    upssched.write_text(f"#!/bin/sh\necho \"$NOTIFYTYPE\" >> {calls}\n", encoding="utf-8")
    upssched.chmod(0o755)
    monkeypatch.setattr(ev, "UPSSCHED", str(upssched))
    conf["battery_shutdown_minutes"] = 5
    assert event(monkeypatch, conf, "ONBATT", "on battery") == 0
    assert calls.read_text().split() == ["ONBATT"]
    assert fake_alert.titles() == ["UPS on battery: mains power lost (ups@localhost)"]
    assert "repeats are not held back" in fake_alert.bodies()[0]
