"""cabinet-pam-check (role password_policy): what fails the anti-lockout proof, without
containers. The PAM tools are replaced by a fake that answers per command."""

from __future__ import annotations

import pwd
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "roles" / "password_policy" / "files" / "usr" / "local" / "sbin" / "cabinet-pam-check"
pc = load_script(SCRIPT)


class Tools:
    """Records every command; ``fail`` maps a word of the command line to an exit status."""

    def __init__(self, fail: dict[str, int] | None = None, raise_on: str | None = None,
                 accept_wrong: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail or {}
        self.raise_on = raise_on
        self.accept_wrong = accept_wrong

    def __call__(self, argv: list[str], stdin: str = "") -> subprocess.CompletedProcess:
        self.calls.append(argv)
        line = " ".join(argv)
        if self.raise_on and self.raise_on in line:
            raise SystemExit(128 + signal.SIGTERM)
        for word, status in self.fail.items():
            if word in line:
                return subprocess.CompletedProcess(argv, status, "", f"{word} failed")
        if argv[:2] == ["pamtester", "login"] and argv[-1] == "authenticate" and not self.accept_wrong:
            return subprocess.CompletedProcess(argv, 1, "", "Authentication failure")
        return subprocess.CompletedProcess(argv, 0, "", "")


def run_check(monkeypatch, tools: Tools, *args: str) -> int:
    monkeypatch.setattr(pc, "run", tools)
    monkeypatch.setattr(sys, "argv", ["cabinet-pam-check", *args])
    monkeypatch.setattr(pc.os.path, "exists", lambda path: path.startswith("/etc/pam.d/"))  # sshd, sudo
    monkeypatch.setattr(pc.pwd, "getpwnam", lambda name: pwd.struct_passwd((name, "x", 1000, 1000, "", "/", "/bin/sh")))
    return pc.main()


def deleted(tools: Tools) -> bool:
    return any(c[0] == "userdel" and c[1] == pc.ACCOUNT for c in tools.calls)


def test_all_good_passes_and_removes_the_throwaway_account(monkeypatch):
    tools = Tools()
    assert run_check(monkeypatch, tools, "--admin", "msp", "--admin-sudo") == 0
    assert deleted(tools)


@pytest.mark.parametrize("fail, why", [
    ({"chpasswd": 1}, "password stack"),
    ({"authenticate acct_mgmt": 7}, "correct password was refused"),
    ({"sshd msp acct_mgmt": 1}, "sshd account stack refuses it"),
    ({"su -s /bin/sh msp": 1}, "su cannot open a session"),
    ({"sudo -n true": 1}, "sudo -n true fails"),
    ({"su -s /bin/sh msp": 124}, "su cannot open a session"),
])
def test_each_refusal_fails_the_proof(monkeypatch, capsys, fail, why):
    tools = Tools(fail)
    assert run_check(monkeypatch, tools, "--admin", "msp", "--admin-sudo") == 1
    assert why in capsys.readouterr().err
    assert deleted(tools)


def test_a_wrong_password_accepted_fails_the_proof(monkeypatch, capsys):
    tools = Tools(accept_wrong=True)
    assert run_check(monkeypatch, tools, "--admin", "msp") == 1
    assert "wrong password was accepted" in capsys.readouterr().err
    assert deleted(tools)


def test_the_admin_shell_and_profile_do_not_matter(monkeypatch):
    """su runs /bin/sh, not the account's login shell: nologin or a slow profile cannot fail
    a healthy admin."""
    tools = Tools()
    run_check(monkeypatch, tools, "--admin", "msp")
    su = [c for c in tools.calls if c[0] == "su"]
    assert su == [["su", "-s", "/bin/sh", "msp", "-c", "true"]]


def test_a_command_that_hangs_counts_as_failed_not_a_crash(monkeypatch):
    def hang(*_a, **_k):
        raise subprocess.TimeoutExpired(["su"], 60)
    monkeypatch.setattr(pc.subprocess, "run", hang)
    assert pc.run(["su", "x"]).returncode == 124


def test_stopped_midway_still_removes_the_account(monkeypatch):
    """SIGTERM or SIGHUP during the proof: the throwaway account does not stay behind."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        tools = Tools(raise_on="pamtester login")
        with pytest.raises(SystemExit):
            run_check(monkeypatch, tools)
        assert deleted(tools)
        assert signal.getsignal(signal.SIGTERM) == pc.stop
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
