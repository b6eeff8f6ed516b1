"""cabinet-packages-verify (role system_baseline, R76): debsums' words read exactly, and when the
MSP is told."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Clock, load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "roles" / "system_baseline" / "files" / "usr" / "local" / "sbin" / "cabinet-packages-verify"
DAY = 86400.0


@pytest.fixture(scope="module")
def verify():
    return load_script(SCRIPT)


def test_debsums_lines_are_read_and_anything_else_kept_apart(verify):
    output = ("debsums: changed file /usr/bin/which.debianutils (from debianutils package)\n"
              "debsums: missing file /usr/share/doc/x/README (from x package)\n"
              "debsums: no md5sums for foo\n\n"
              "debsums: can't check /usr/bin/tool (from tool package): not a regular file\n"
              "something else\n"
              "debsums: changed file /usr/bin/which.debianutils (from debianutils package)\n")
    found, other = verify.parse(output)
    assert found == ["can't check /usr/bin/tool (from tool package): not a regular file",
                     "changed /usr/bin/which.debianutils (debianutils)", "missing /usr/share/doc/x/README (x)"]
    assert other == ["debsums: no md5sums for foo", "something else"]


def run(code: int, out: str = "", err: str = ""):
    return lambda *a, **k: type("Done", (), {"returncode": code, "stdout": out, "stderr": err})()


def test_a_failure_of_debsums_is_never_all_match(verify, monkeypatch):
    monkeypatch.setattr(verify.subprocess, "run", run(1, err="debsums: can't open status file"))
    with pytest.raises(RuntimeError):
        verify.verify()
    # 2 without a word: not understood, a failure.
    monkeypatch.setattr(verify.subprocess, "run", run(2))
    with pytest.raises(RuntimeError):
        verify.verify()
    # 2 with words of another form than "debsums: ...": they are what differs, named.
    monkeypatch.setattr(verify.subprocess, "run", run(2, err="/var/lib/dpkg/info/tool.md5sums is empty\n"))
    assert verify.verify() == (["/var/lib/dpkg/info/tool.md5sums is empty"], [])
    monkeypatch.setattr(verify.subprocess, "run", run(0))
    assert verify.verify() == ([], [])


def test_alerted_at_once_for_a_new_list_then_every_period_and_when_it_clears(verify, tmp_path):
    clock = Clock(2_000_000_000.0)
    state = verify.State(tmp_path / "state.json", 7 * DAY, clock=clock)
    assert verify.decide([], state) is None
    one = ["changed /usr/bin/a (p)"]
    assert verify.decide(one, state) == ("warning", "Package files differ from their packages")
    clock.now += DAY
    assert verify.decide(one, state) is None, "alerted again within the period"
    two = one + ["changed /usr/bin/b (q)"]
    assert verify.decide(two, state) == ("warning", "Package files differ from their packages"), "a new list waits"
    clock.now += 7 * DAY
    assert verify.decide(two, state) == ("warning", "Package files differ from their packages")
    assert verify.decide([], state) == ("info", "Package files match their packages again")
    assert verify.decide([], state) is None
