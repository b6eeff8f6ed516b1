"""Tasks a role runs on the controller (delegate_to: localhost) run as the MSP's own user.

Found by the demo over SSH (issue 19): an inventory that says `ansible_become: true` for all
its hosts, as inventories/example does, made mitogen ask for sudo on the controller for
website_privacy's delegated tasks, although they say `become: false`: mitogen takes the
delegated host's `ansible_become` (the implicit localhost gets the `all` group's variables)
over the keyword. Ansible's own strategy does not. A task variable beats both, so every
delegation to the controller sets `ansible_become: false` as a variable too.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import ansible_env

ROOT = Path(__file__).resolve().parents[2]
CONTROLLER = {"localhost", "127.0.0.1", "::1"}


def delegated_to_controller(items: list, inherited: dict | None = None):
    """Every task or block of a task file that runs on the controller, with its vars (a block's
    vars reach its tasks)."""
    for item in items or []:
        if not isinstance(item, dict):
            continue
        variables = {**(inherited or {}), **(item.get("vars") or {})}
        if str(item.get("delegate_to", "")).strip() in CONTROLLER or item.get("local_action"):
            yield item, variables
        for key in ("block", "rescue", "always"):
            if key in item:
                yield from delegated_to_controller(item[key], variables)


def test_every_delegation_to_the_controller_sets_ansible_become_false():
    found, wrong = 0, []
    for path in sorted((ROOT / "roles").glob("*/tasks/*.yml")):
        for item, variables in delegated_to_controller(yaml.safe_load(path.read_text(encoding="utf-8"))):
            found += 1
            if variables.get("ansible_become") is not False:
                wrong.append(f"{path.relative_to(ROOT)}: {item.get('name')}")
    assert found >= 2, "website_privacy's controller tasks were not found: update this test"
    assert wrong == [], "delegated to the controller without `vars: {ansible_become: false}`: " + "; ".join(wrong)


@pytest.fixture()
def play(tmp_path) -> Path:
    (tmp_path / "hosts.yml").write_text(textwrap.dedent(f"""\
        all:
          vars:
            ansible_become: true
            ansible_become_exe: /nonexistent/sudo
          hosts:
            managed:
              ansible_connection: local
              ansible_python_interpreter: {sys.executable}
        """), encoding="utf-8")
    (tmp_path / "play.yml").write_text(textwrap.dedent("""\
        - name: A practice's play, become on
          hosts: managed
          gather_facts: false
          become: true
          tasks:
            - name: On the controller, the keyword alone
              ansible.builtin.command: id -u
              delegate_to: localhost
              become: false
              changed_when: false
              ignore_errors: true
              register: keyword_only
            - name: On the controller, the keyword and the variable
              ansible.builtin.command: id -u
              delegate_to: localhost
              become: false
              changed_when: false
              vars:
                ansible_become: false
            - name: What the keyword alone did
              ansible.builtin.debug:
                msg: "KEYWORD-ONLY-FAILED={{ keyword_only is failed }}"
        """), encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize("strategy", ["linear", "mitogen"])
def test_the_variable_keeps_the_controller_task_off_sudo(play, strategy):
    env = ansible_env()
    if strategy == "mitogen":
        # requirements.txt pins mitogen: its absence is a broken venv, not a reason to skip.
        assert subprocess.run([sys.executable, "-c", "import ansible_mitogen"], check=False).returncode == 0
        env.update(ANSIBLE_STRATEGY_PLUGINS=str(ROOT / "scripts" / "strategy_plugins"), ANSIBLE_STRATEGY="cabinet_mitogen_linear")
    done = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(play / "hosts.yml"),
                           str(play / "play.yml")], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    # Why the variable is needed: with mitogen the keyword alone asked for sudo (absent here).
    assert f"KEYWORD-ONLY-FAILED={strategy == 'mitogen'}" in done.stdout, done.stdout
