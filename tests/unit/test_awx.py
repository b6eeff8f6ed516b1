"""playbooks/awx.yml (the MSP's AWX as code) and playbooks/report.yml (its weekly job).

No AWX is reachable here: the playbooks must pass --syntax-check, bad variables must stop
awx.yml before any call to AWX with a message naming them, and good ones must get past the
validation to the first call (which then fails: no controller listens on the address given).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = ROOT / "playbooks" / "awx.yml"
KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
GOOD = {
    "awx_organization": "MSP Santé Conseil",
    "awx_project_scm_url": "https://git.msp.example/infra/cabinet-hardening.git",
    "awx_ee_image": "registry.msp.example/cabinet-hardening-ee:2026.12",
    "awx_ssh_private_key": KEY,
    "awx_vault_password": "Kx8!vQ3@pL6#wZ1$",
    "awx_notification_email": {"host": "smtp.msp.example", "sender": "awx@msp.example", "recipients": ["astreinte@msp.example"]},
    "awx_clients": [{"name": "cabinet-tilleuls"}, {"name": "maison-de-sante-du-port", "nightly": "02:30"}],
}


def playbook(path: Path, tmp_path: Path, variables: dict | None = None, *args: str) -> subprocess.CompletedProcess:
    extra = tmp_path / "vars.json"
    extra.write_text(json.dumps(variables or {}), encoding="utf-8")
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_LOCALHOST_WARNING": "false",
           "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
           # Nothing listens there: the first call to AWX fails at once.
           "CONTROLLER_HOST": "https://127.0.0.1:9", "CONTROLLER_OAUTH_TOKEN": "none", "CONTROLLER_VERIFY_SSL": "false"}
    env.pop("ANSIBLE_STRATEGY", None)
    return subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", str(path),
                           "-e", f"@{extra}", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.mark.parametrize("name", ["awx.yml", "report.yml"])
def test_the_playbook_passes_syntax_check(name, tmp_path):
    done = playbook(ROOT / "playbooks" / name, tmp_path, {}, "--syntax-check")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("change, fragment", [
    ({"awx_organization": ""}, "awx_organization"),
    ({"awx_project_scm_url": "git.msp.example/repo"}, "awx_project_scm_url"),
    ({"awx_ee_image": "cabinet-hardening-ee"}, "awx_ee_image"),
    ({"awx_ssh_private_key": "hunter2"}, "awx_ssh_private_key"),
    ({"awx_vault_password": "short"}, "awx_vault_password"),
    ({"awx_notification_email": {"host": "smtp.msp.example", "sender": "awx", "recipients": []}}, "awx_notification_email"),
    ({"awx_nightly_start": "25:00"}, "awx_nightly_start"),
    ({"awx_report_weekday": "lundi"}, "awx_report_weekday"),
    ({"awx_clients": []}, "awx_clients: expected one entry"),
    ({"awx_clients": [{"name": "../etc"}]}, "'../etc' is not a client folder's name"),
    ({"awx_clients": [{"name": "a"}, {"name": "a"}]}, "a name is given twice"),
    ({"awx_clients": [{"name": "a", "nightly": "1h"}]}, "nightly '1h' is not HH:MM"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_variables_stop_before_any_call_to_awx(change, fragment, tmp_path):
    done = playbook(PLAYBOOK, tmp_path, {**GOOD, **change})
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    assert fragment in output and "Nothing was changed in AWX" in output, output[-3000:]
    assert "TASK [AWX | The MSP's organisation]" not in output, "a call to AWX came after a failed validation"


def test_good_variables_get_past_the_validation_to_awx(tmp_path):
    done = playbook(PLAYBOOK, tmp_path, GOOD)
    output = done.stdout + done.stderr
    assert "TASK [AWX | The MSP's organisation]" in output, output[-3000:]
    assert done.returncode != 0   # no AWX here


def test_every_task_that_sends_a_secret_to_awx_hides_its_arguments():
    """The credentials and the mail settings travel in module arguments: no_log on each task
    that carries one (a failure would otherwise print them). Checked on the playbook itself,
    since no AWX answers here to make those tasks run."""
    import yaml

    tasks = yaml.safe_load(PLAYBOOK.read_text(encoding="utf-8"))[0]["tasks"]
    secrets = ("awx_ssh_private_key", "awx_vault_password", "awx_become_password", "awx_notification_email")
    carrying = [t for t in tasks if any(s in json.dumps({k: v for k, v in t.items() if k != "name"}) for s in secrets)
                and not t["name"].startswith("AWX | Validate")]
    assert {t["name"] for t in carrying} == {
        "AWX | The SSH credential of the MSP's admin account (become through sudo)",
        "AWX | The vault credential of the inventories' secrets",
        "AWX | Failures mailed to the MSP"}
    assert all(t.get("no_log") is True for t in carrying)


def test_inventories_are_imported_without_a_vault_credential():
    """AWX's inventory updates decrypt nothing; a vault credential there would be refused, or
    would put the secrets in clear in AWX's database. The jobs decrypt at run time."""
    import yaml

    tasks = yaml.safe_load(PLAYBOOK.read_text(encoding="utf-8"))[0]["tasks"]
    source = next(t for t in tasks if "awx.awx.inventory_source" in t)
    assert "credential" not in source["awx.awx.inventory_source"]


def test_report_playbook_refuses_a_bad_client_name_before_auditing(tmp_path):
    inventory = tmp_path / "cabinet" / "hosts.yml"
    inventory.parent.mkdir()
    inventory.write_text(json.dumps({"all": {"children": {"cabinet_managed": {"hosts": {"poste": {}}}}}}), encoding="utf-8")
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
    env.pop("ANSIBLE_STRATEGY", None)
    done = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory),
                           str(ROOT / "playbooks" / "report.yml"), "-e", "report_client=../../etc", "-e", "report_mail=false"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "report_client must be" in output and "Nothing was audited" in output, output[-2000:]
    assert "build.py" not in output.split("Validate the client", 1)[-1].split("PLAY RECAP")[0].replace("tests/report/build.py)", "")
