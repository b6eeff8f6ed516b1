"""make demo's progress lines (scripts/callback_plugins/cabinet_progress.py), from a real
ansible-playbook run on localhost: a line as each play and each role on each host starts and
ends, the running count of host-tasks, a "still on" line while a task is quiet, the summary,
and nothing at all when CABINET_PROGRESS_FD is not set (Ansible's own output unchanged)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ansible_env

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("progress")
    for role, tasks in {
        "first": """
            - name: First | a task that changes
              ansible.builtin.command: "true"
            - name: First | a task that reads
              ansible.builtin.command: "true"
              changed_when: false
            - name: First | a skipped task
              ansible.builtin.debug: {msg: never}
              when: false
            - name: First | notify
              ansible.builtin.command: "true"
              notify: First handler
            """,
        "second": """
            - name: Second | a quiet task
              ansible.builtin.wait_for: {timeout: 4}
            """,
    }.items():
        (base / "roles" / role / "tasks").mkdir(parents=True)
        (base / "roles" / role / "tasks" / "main.yml").write_text("---\n" + textwrap.dedent(tasks), encoding="utf-8")
    (base / "roles" / "first" / "handlers").mkdir()
    (base / "roles" / "first" / "handlers" / "main.yml").write_text(
        "---\n- name: First handler\n  ansible.builtin.command: \"true\"\n", encoding="utf-8")
    (base / "play.yml").write_text(textwrap.dedent("""\
        ---
        - name: One play of two roles
          hosts: local
          gather_facts: false
          roles: [first, second]
        - name: A play with nothing to run
          hosts: local
          gather_facts: false
          tasks:
            - name: Skipped
              ansible.builtin.debug: {msg: never}
              when: false
        """), encoding="utf-8")
    (base / "hosts.yml").write_text(
        "all:\n  hosts:\n    local:\n      ansible_connection: local\n      ansible_python_interpreter: "
        f"{sys.executable}\n", encoding="utf-8")
    return base


def run(project: Path, progress: bool) -> tuple[subprocess.CompletedProcess, str]:
    read, write = os.pipe()
    env = ansible_env(ANSIBLE_CALLBACK_PLUGINS=str(ROOT / "scripts" / "callback_plugins"),
                      ANSIBLE_CALLBACKS_ENABLED="cabinet_progress", ANSIBLE_ROLES_PATH=str(project / "roles"),
                      CABINET_PROGRESS_QUIET="2")
    if progress:
        env["CABINET_PROGRESS_FD"] = str(write)
    else:
        env.pop("CABINET_PROGRESS_FD", None)
    try:
        done = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(project / "hosts.yml"), str(project / "play.yml")],
                              env=env, cwd=project, capture_output=True, text=True, timeout=300, pass_fds=(write,),
                              check=False)
    finally:
        os.close(write)
    with os.fdopen(read, encoding="utf-8") as pipe:
        return done, pipe.read()


@pytest.fixture(scope="module")
def progress(project) -> tuple[subprocess.CompletedProcess, list[str]]:
    done, text = run(project, progress=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done, text.splitlines()


def body(line: str) -> str:
    return re.sub(r"^\[\s*\d+s\s+\d+\] ", "", line)


def test_each_play_and_role_on_each_host_starts_and_ends(progress):
    _, lines = progress
    bodies = [body(line) for line in lines]
    assert bodies[0] == "play.yml: starting"
    assert bodies[1] == "play 1/2 One play of two roles: 1 host"
    assert re.fullmatch(r"  first +starts on local", bodies[2])
    assert re.fullmatch(r"  first +done   on local: 3 tasks, 2 changed \(\d+ s\)", bodies[3]), bodies
    assert re.fullmatch(r"  second +starts on local", bodies[4])
    assert any(re.fullmatch(r"  second +done   on local: 1 task \(\d+ s\)", b) for b in bodies), bodies
    assert any(re.fullmatch(r"  first handlers +done   on local: 1 task, 1 changed \(\d+ s\)", b) for b in bodies), bodies
    assert "play 2/2 A play with nothing to run: 1 host" in bodies
    assert any(re.fullmatch(r"  \(play\) +done   on local: nothing to run \(\d+ s\)", b) for b in bodies), bodies


def test_a_quiet_task_is_seen_moving(progress):
    _, lines = progress
    assert any(re.fullmatch(r'  \.\.\. still on "Second \| a quiet task" \(\d+ s\)', body(b)) for b in lines), lines


def test_the_count_runs_and_the_summary_adds_up(progress):
    _, lines = progress
    counts = [int(re.match(r"^\[\s*\d+s\s+(\d+)\]", line).group(1)) for line in lines]
    assert counts == sorted(counts)
    # first: 3 run (2 changed) + 1 skipped; second: 1; handler: 1 (changed); the second play: 1 skipped.
    assert re.fullmatch(r"play\.yml done in \d+ s: 5 host-tasks, 3 changed, 0 failed, 0 unreachable", body(lines[-1])), lines


def test_without_its_descriptor_it_writes_nothing_and_ansibles_output_is_unchanged(project, progress):
    done, text = run(project, progress=False)
    assert done.returncode == 0 and text == ""
    with_progress, _ = progress
    assert "PLAY RECAP" in done.stdout and "PLAY RECAP" in with_progress.stdout
    assert "starts on" not in with_progress.stdout + with_progress.stderr
