"""cabinet_common: the helpers every root-run cabinet-* command shares (role alerting)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import Clock

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "roles" / "alerting" / "files" / "usr" / "local" / "lib" / "cabinet"))

import cabinet_common as cc  # noqa: E402


def test_state_realerts_only_after_the_period(tmp_path):
    clock = Clock()
    state = cc.State(tmp_path / "s.json", realert_seconds=3600, clock=clock)
    assert state.due("disk-full")
    state.mark("disk-full")
    clock.now += 3599
    assert not state.due("disk-full")
    clock.now += 1
    assert state.due("disk-full")
    assert not state.due("disk-full", every_seconds=7200)


def test_state_clear_says_whether_the_condition_just_ended(tmp_path):
    state = cc.State(tmp_path / "s.json", realert_seconds=3600, clock=Clock())
    assert state.clear("x") is False
    state.mark("x")
    assert state.clear("x") is True
    assert state.due("x")


def test_a_clock_set_back_does_not_silence_an_alert_for_ever(tmp_path):
    clock = Clock()
    state = cc.State(tmp_path / "s.json", realert_seconds=3600, clock=clock)
    state.mark("x")
    clock.now -= 10 * 86400  # the host's clock was ahead when the alert was marked
    assert state.due("x")


def test_state_survives_a_round_trip_and_is_root_only(tmp_path):
    path = tmp_path / "sub" / "s.json"
    state = cc.State(path, realert_seconds=60, clock=Clock())
    state.mark("a")
    state.data["free"] = {"k": 1}
    state.save()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = cc.State(path, realert_seconds=60, clock=Clock())
    assert again.data["free"] == {"k": 1} and "a" in again.alerted


@pytest.mark.parametrize("content", ["not json", "[1, 2]", '{"alerted": "x"}'])
def test_a_damaged_state_file_starts_afresh(tmp_path, content):
    path = tmp_path / "s.json"
    path.write_text(content, encoding="utf-8")
    state = cc.State(path, realert_seconds=60)
    assert state.alerted == {}
    assert state.due("anything")


def test_atomic_write_replaces_a_planted_symlink_never_its_target(tmp_path):
    target = tmp_path / "precious"
    target.write_text("keep me", encoding="utf-8")
    path = tmp_path / "state.json"
    path.symlink_to(target)
    cc.write_json_atomic(path, {"a": 1})
    assert target.read_text(encoding="utf-8") == "keep me"
    assert not path.is_symlink() and json.loads(path.read_text(encoding="utf-8")) == {"a": 1}


def test_atomic_write_does_not_follow_a_symlink_planted_at_its_temporary_name(tmp_path):
    target = tmp_path / "precious"
    target.write_text("keep me", encoding="utf-8")
    path = tmp_path / "state.json"
    (tmp_path / f".state.json.{os.getpid()}.tmp").symlink_to(target)
    with pytest.raises(FileExistsError):
        cc.write_json_atomic(path, {"a": 1})
    assert target.read_text(encoding="utf-8") == "keep me"


def test_lock_refuses_to_follow_a_symlink(tmp_path):
    target = tmp_path / "precious"
    target.write_text("keep me", encoding="utf-8")
    lock = tmp_path / "x.lock"
    lock.symlink_to(target)
    with pytest.raises(OSError):
        cc.take_lock(lock, wait_seconds=0)
    assert target.read_text(encoding="utf-8") == "keep me"


def test_lock_is_exclusive_and_waits_up_to_its_limit(tmp_path):
    lock = tmp_path / "x.lock"
    held = cc.take_lock(lock, wait_seconds=0)
    assert held is not None
    other = subprocess.run([sys.executable, "-c", (
        f"import sys; sys.path.insert(0, {str(Path(cc.__file__).parent)!r}); import cabinet_common as cc; "
        f"sys.exit(0 if cc.take_lock({str(lock)!r}, wait_seconds=1) is None else 1)")], check=False)
    assert other.returncode == 0, "a second process got the lock while it was held"
    released = threading.Timer(0.5, held.close)
    released.start()
    started = time.monotonic()
    again = cc.take_lock(lock, wait_seconds=10)
    assert again is not None and time.monotonic() - started < 5
    again.close()


def test_alert_passes_title_and_details_without_a_shell(tmp_path):
    record = tmp_path / "record.json"
    fake = tmp_path / "fake-alert"
    fake.write_text("#!/bin/sh\n"
                    f"{sys.executable} -c 'import json,sys; json.dump({{\"argv\": sys.argv[1:], "
                    f"\"stdin\": sys.stdin.read()}}, open(\"{record}\", \"w\"))' \"$@\"\n", encoding="utf-8")
    fake.chmod(0o755)
    title = "Virus in $(touch /tmp/pwned) `id`;\nsecond line"
    assert cc.alert("antivirus", "critical", title, "details\n", command=str(fake), footer="Host: h")
    seen = json.loads(record.read_text(encoding="utf-8"))
    assert seen["argv"] == ["--practice=antivirus", "--severity=critical",
                            "--title=Virus in $(touch /tmp/pwned) `id`; second line", "-"]
    assert seen["stdin"] == "details\n\nHost: h\n"
    # A title that looks like an option stays a title; bytes that are not UTF-8 do not lose it.
    assert cc.alert("antivirus", "critical", "--severity", "caf\udce9.pdf", command=str(fake), footer="")
    seen = json.loads(record.read_text(encoding="utf-8"))
    assert seen["argv"][2] == "--title=--severity" and "caf\\udce9.pdf" in seen["stdin"]


def test_alert_reports_a_failure_and_refuses_a_bad_severity(tmp_path):
    assert cc.alert("backup", "warning", "t", "d", command=str(tmp_path / "missing")) is False
    with pytest.raises(ValueError, match="severity"):
        cc.alert("backup", "urgent", "t", "d", command="/bin/true")


def test_sha256_by_path_and_by_descriptor(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert cc.sha256(path) == expected
    fd = os.open(path, os.O_RDONLY)
    try:
        os.read(fd, 1)
        assert cc.sha256(None, fd=fd) == expected
    finally:
        os.close(fd)


def test_tail_keeps_the_last_lines():
    assert cc.tail("a\nb\nc\n", 2) == "b\nc"
    assert cc.tail(None) == ""


@pytest.mark.parametrize("value", ["x", None, float("nan"), float("inf"), True, [1]])
def test_a_damaged_alert_time_neither_crashes_nor_silences(tmp_path, value):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"alerted": {"k": value}}, allow_nan=True), encoding="utf-8")
    state = cc.State(path, realert_seconds=3600, clock=Clock())
    assert state.due("k")


def test_state_and_locks_refuse_a_folder_other_users_can_write(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(cc.UnsafePath):
        cc.take_lock(shared / "x.lock", wait_seconds=0)
    with pytest.raises(cc.UnsafePath):
        cc.State(shared / "s.json", realert_seconds=60).save()
    assert list(shared.iterdir()) == []


def test_state_refuses_a_symlink_where_its_folder_should_be(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (tmp_path / "state").symlink_to(elsewhere)
    with pytest.raises(cc.UnsafePath):
        cc.State(tmp_path / "state" / "s.json", realert_seconds=60).save()
    assert list(elsewhere.iterdir()) == []


def test_private_dir_creates_missing_folders_root_only(tmp_path):
    made = cc.private_dir(tmp_path / "a" / "b")
    assert stat.S_IMODE(made.stat().st_mode) == 0o700


def test_open_regular_refuses_a_fifo_without_blocking(tmp_path):
    fifo = tmp_path / "patient.pdf"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(OSError, match="not a regular file"):
        cc.open_regular_nofollow(str(fifo))
    assert time.monotonic() - started < 5


def test_open_regular_refuses_a_folder_swapped_for_a_symlink(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "zero").write_bytes(b"not yours")
    (tmp_path / "d").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        cc.open_regular_nofollow(str(tmp_path / "d" / "zero"))
    (tmp_path / "f").symlink_to(tmp_path / "elsewhere" / "zero")
    with pytest.raises(OSError):
        cc.open_regular_nofollow(str(tmp_path / "f"))


def test_open_regular_refuses_a_device():
    with pytest.raises(OSError, match="not a regular file"):
        cc.open_regular_nofollow("/dev/null")


def test_open_regular_reads_a_plain_file(tmp_path):
    path = tmp_path / "a" / "b.txt"
    path.parent.mkdir()
    path.write_bytes(b"abc")
    fd = cc.open_regular_nofollow(str(path))
    try:
        assert cc.sha256(None, fd=fd) == cc.sha256(path)
    finally:
        os.close(fd)


def test_sha256_stops_at_max_bytes(tmp_path):
    path = tmp_path / "growing"
    path.write_bytes(b"abcdef")
    (tmp_path / "abc").write_bytes(b"abc")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert cc.sha256(None, fd=fd, max_bytes=3) == cc.sha256(tmp_path / "abc")
        assert cc.sha256(None, fd=fd) == cc.sha256(path)
    finally:
        os.close(fd)
