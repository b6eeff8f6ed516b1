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


# ----------------------------------------------------------------------------- apply, prove, restore
@pytest.fixture()
def pam(tmp_path, monkeypatch):
    """/etc/pam.d, /var/lib/pam and the role's copies, in a temporary folder."""
    etc, state, copies = tmp_path / "pam.d", tmp_path / "var-lib-pam", tmp_path / "copies"
    for folder in (etc, state, copies):
        folder.mkdir()
    for name in pc.STACKS:
        (copies / name).write_text(f"before {name}\n")
        (etc / name).write_text(f"before {name}\n")
    for name in pc.STATE + ("seen",):
        (copies / f"var-lib-pam-{name}").write_text(f"before {name}\n")
        (state / name).write_text(f"before {name}\n")
    monkeypatch.setattr(pc, "PAM_DIR", str(etc))
    monkeypatch.setattr(pc, "PAM_STATE_DIR", str(state))
    return etc, state, copies


class Change(Tools):
    """pam-auth-update rewrites the stacks and its state; after it, the admin's sudo is refused."""

    def __init__(self, pam, breaks_admin: bool) -> None:
        super().__init__()
        self.pam, self.breaks_admin, self.applied = pam, breaks_admin, False

    def __call__(self, argv, stdin=""):
        etc, state, _ = self.pam
        if argv[0] == "pam-auth-update":
            for name in pc.STACKS:
                (etc / name).write_text(f"after {name}\n")
            for name in pc.STATE + ("seen",):
                (state / name).write_text(f"after {name}\n")
            self.applied = True
            self.calls.append(argv)
            return subprocess.CompletedProcess(argv, 0, "", "")
        if self.breaks_admin and self.applied and "acct_mgmt" in argv and "msp" in argv:
            self.calls.append(argv)
            return subprocess.CompletedProcess(argv, 1, "", "Permission denied")
        return super().__call__(argv, stdin)


def test_a_change_that_refuses_the_admin_is_undone_in_the_same_process(monkeypatch, pam, capsys):
    """The case Ansible's own strategy could not rescue: sudo per task is refused once the change
    is made. Here the stacks and pam-auth-update's record are back before the command exits;
    `seen` is left as pam-auth-update wrote it (a rolled-back profile stays seen and off)."""
    etc, state, copies = pam
    tools = Change(pam, breaks_admin=True)
    status = run_check(monkeypatch, tools, "--admin", "msp", "--restore-from", str(copies),
                       "--apply", "pam-auth-update", "--package", "--enable", "cabinet-faillock")
    assert status == 1
    assert tools.calls[0] == ["pam-auth-update", "--package", "--enable", "cabinet-faillock"]
    for name in pc.STACKS:
        assert (etc / name).read_text() == f"before {name}\n"
    for name in pc.STATE:
        assert (state / name).read_text() == f"before {name}\n"
    assert (state / "seen").read_text() == "after seen\n"
    err = capsys.readouterr().err
    assert "msp: the sshd account stack refuses it" in err and "the previous stacks are back" in err
    assert deleted(tools)


def test_a_good_change_is_kept(monkeypatch, pam):
    etc, _state, copies = pam
    tools = Change(pam, breaks_admin=False)
    assert run_check(monkeypatch, tools, "--admin", "msp", "--restore-from", str(copies),
                     "--apply", "pam-auth-update", "--package") == 0
    assert (etc / "common-auth").read_text() == "after common-auth\n"


def test_a_failed_pam_auth_update_restores_without_a_proof(monkeypatch, pam, capsys):
    etc, _state, copies = pam
    (etc / "common-auth").write_text("half written\n")
    tools = Tools({"pam-auth-update": 1})
    assert run_check(monkeypatch, tools, "--restore-from", str(copies), "--apply", "pam-auth-update", "--package") == 1
    assert (etc / "common-auth").read_text() == "before common-auth\n"
    assert not [c for c in tools.calls if c[0] == "useradd"]
    assert "pam-auth-update exited 1" in capsys.readouterr().err
