"""make demo's closing guide (scripts/tour.py), without a lab: it names only make targets that
exist, each step once; and no step acts on a machine that is not a lab's. The steps themselves
run on Molecule's labs (tests/demo/test_tour.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOUR = ROOT / "scripts" / "tour.py"


def guide() -> str:
    return subprocess.run([sys.executable, str(TOUR), "guide"], capture_output=True, text=True, check=True).stdout


def guide_commands() -> list[str]:
    return [line.strip() for line in guide().splitlines() if line.strip().startswith("make ")]


def test_the_guide_names_each_step_once_and_make_knows_them():
    commands = guide_commands()
    assert commands == ["make demo-mail", "make demo-power-cut", "make demo-power-back", "make demo-virus",
                        "make demo-restore"], commands
    for command in commands:
        target = command.split()[1]
        done = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        assert f"scripts/tour.py {target.removeprefix('demo-')} --inventory" in done.stdout, done.stdout


def test_the_tour_refuses_a_machine_that_is_not_a_lab_s(tmp_path):
    (tmp_path / "hosts.yml").write_text(
        "all:\n  children:\n    cabinet_managed:\n      children:\n        ups_server:\n          hosts:\n"
        "            cabinet-client-pc: {ansible_host: 192.0.2.1, ups_monitoring_driver: dummy-ups}\n"
        "        backup_clients:\n          hosts:\n            cabinet-client-pc:\n",
        encoding="utf-8")
    for step in ("power-cut", "power-back", "virus", "restore"):
        done = subprocess.run([sys.executable, str(TOUR), step, "--inventory", str(tmp_path / "hosts.yml")],
                              cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode != 0 and "not a lab machine" in done.stderr, done.stdout + done.stderr


def test_a_machine_the_inventory_calls_a_lab_is_still_asked(tmp_path):
    """An inventory copied from the demo's, or mislabelled, says cabinet_lab: true of a machine
    that is not one of the rig's podman containers (here, this controller, reached locally):
    the step that would plant a virus is refused by the machine's own answer."""
    (tmp_path / "hosts.yml").write_text(
        "all:\n  children:\n    cabinet_managed:\n      hosts:\n"
        f"        cabinet-client-pc: {{ansible_connection: local, cabinet_lab: true, ansible_python_interpreter: {sys.executable},"
        " lab_files: [{path: /var/lib/clamav/cabinet-test.ndb, content: x}]}\n"
        "    lab_mailsink:\n      hosts:\n        sink: {ansible_connection: local}\n",
        encoding="utf-8")
    done = subprocess.run([sys.executable, str(TOUR), "virus", "--inventory", str(tmp_path / "hosts.yml")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0 and "not one of the rig's podman containers" in done.stderr, done.stdout + done.stderr
    assert "Planting" not in done.stdout
