"""cabinet-time-check (role system_baseline): when an unsynchronised clock reaches the MSP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Clock, load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "roles" / "system_baseline" / "files" / "usr" / "local" / "sbin" / "cabinet-time-check"
HOUR = 3600.0


@pytest.fixture(scope="module")
def check():
    return load_script(SCRIPT)


def state(check, tmp_path, clock, realert=24 * HOUR):
    return check.State(tmp_path / "state.json", realert, clock=clock)


def test_unsynchronised_alerts_only_after_the_delay_then_once_a_period(check, tmp_path):
    clock = Clock()
    s = state(check, tmp_path, clock)
    assert check.decide(False, s, clock.now, HOUR) is None, "alerted at the first sight"
    clock.now += HOUR - 1
    assert check.decide(False, s, clock.now, HOUR) is None
    clock.now += 1
    assert check.decide(False, s, clock.now, HOUR) == ("warning", "Clock not synchronised")
    clock.now += 23 * HOUR
    assert check.decide(False, s, clock.now, HOUR) is None, "alerted again within realert_hours"
    clock.now += HOUR
    assert check.decide(False, s, clock.now, HOUR) == ("warning", "Clock not synchronised")


def test_zero_delay_alerts_at_the_first_check(check, tmp_path):
    clock = Clock()
    assert check.decide(False, state(check, tmp_path, clock), clock.now, 0) == ("warning", "Clock not synchronised")


def test_back_in_sync_says_so_once_and_the_next_loss_counts_again(check, tmp_path):
    clock = Clock()
    s = state(check, tmp_path, clock)
    check.decide(False, s, clock.now, 0)
    assert check.decide(True, s, clock.now, 0) == ("info", "Clock synchronised again")
    assert check.decide(True, s, clock.now, 0) is None
    assert "unsynchronised_since" not in s.data
    clock.now += 60
    assert check.decide(False, s, clock.now, HOUR) is None, "the delay starts again at the new loss"


def test_synchronised_without_an_alert_says_nothing(check, tmp_path):
    clock = Clock()
    s = state(check, tmp_path, clock)
    check.decide(False, s, clock.now, HOUR)   # seen, not alerted yet
    assert check.decide(True, s, clock.now, HOUR) is None


@pytest.mark.parametrize("since", ["yesterday", True, None, 2_000_000.0, float("nan"), float("inf")])
def test_a_damaged_or_future_start_counts_from_now(check, tmp_path, since):
    clock = Clock()
    s = state(check, tmp_path, clock)
    s.data["unsynchronised_since"] = since
    assert check.decide(False, s, clock.now, HOUR) is None
    assert s.data["unsynchronised_since"] == clock.now


def test_the_kernels_answer_is_read_from_struct_timex(check):
    """adjtimex(2) read only, unprivileged: a maximum error in microseconds, read where the
    kernel's struct timex has it on a 64-bit Linux (linux/timex.h: 208 bytes, maxerror at 24;
    esterror, beside it, also reads 16 s on an unsynchronised clock)."""
    import ctypes  # noqa: PLC0415
    if ctypes.sizeof(ctypes.c_long) == 8:
        assert ctypes.sizeof(check._Timex) == 208
        assert check._Timex.maxerror.offset == 24 and check._Timex.status.offset == 40
    assert 0 <= check.kernel_max_error_us() <= 16_000_000


def test_an_alert_not_sent_is_tried_again_at_the_next_check(check, tmp_path, monkeypatch, capsys):
    config = tmp_path / "time.json"
    config.write_text(json.dumps({"alert_after_minutes": 0, "realert_hours": 24, "servers": ["ntp.msp.example"]}))
    monkeypatch.setattr(check, "CONFIG", str(config))
    monkeypatch.setattr(check, "STATE", str(tmp_path / "state" / "state.json"))
    monkeypatch.setattr(check, "kernel_max_error_us", lambda: 16_000_000)
    monkeypatch.setattr(check, "keepers", lambda: "systemd-timesyncd.service: active")
    sent: list[tuple[str, str, str]] = []
    monkeypatch.setattr(check, "alert", lambda practice, severity, title, details, log=None: sent.append(
        (severity, title, details)) or False)
    assert check.main([]) == check.NOT_SENT
    assert check.main([]) == check.NOT_SENT
    assert len(sent) == 2, "an alert that could not be sent was not tried again"
    assert "ntp.msp.example" in sent[0][2] and "UDP 123" in sent[0][2]
    monkeypatch.setattr(check, "alert", lambda practice, severity, title, details, log=None: sent.append(
        (severity, title, details)) or True)
    assert check.main([]) == check.ALERTED
    assert check.main([]) == 0, "alerted again at once after a sent alert"
    assert len(sent) == 3
    # Back in sync: the message that could not be sent is tried again too.
    monkeypatch.setattr(check, "kernel_max_error_us", lambda: 200_000)
    monkeypatch.setattr(check, "alert", lambda practice, severity, title, details, log=None: sent.append(
        (severity, title, details)) or False)
    assert check.main([]) == check.NOT_SENT
    monkeypatch.setattr(check, "alert", lambda practice, severity, title, details, log=None: sent.append(
        (severity, title, details)) or True)
    assert check.main([]) == check.ALERTED
    assert [t for _, t, _ in sent[3:]] == ["Clock synchronised again", "Clock synchronised again"]
    assert check.main([]) == 0
    assert "done:" in capsys.readouterr().out
    assert 1 not in (check.ALERTED, check.NOT_SENT), "1 is Python's exit code for a crash"
