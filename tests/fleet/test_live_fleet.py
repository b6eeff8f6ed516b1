"""make fleet against live machines: Molecule's alerting scenario (its verify runs this after the
suite and the report's live test).

    pytest tests/fleet/test_live_fleet.py --ansible-inventory=<a lab inventory>

Three client practices are made of the lab's machines, as an MSP keeps them (one inventory
folder each), and scripts/fleet.py applies playbooks/alerting.yml to all of them at once:
  - cabinet-a, one machine: applied, nothing to change;
  - cabinet-b, one machine and a workstation that is switched off (a container that does not
    exist): the machine is applied all the same, the client is reported unreachable with the
    workstation named;
  - cabinet-c, one machine with a bad address in its inventory: stopped by the validation,
    nothing changed, and the other clients complete.
cabinet-a and cabinet-c share a machine: the runner never runs them at once. The exit status
is 1 and the summary table names each result. A part (alerting.yml) is not a client's last
enforcement, so nothing is recorded; the live results, published as a full run's would be
(fleet.publish), make the fleet page show each client's. What the unit tests (tests/unit/test_fleet.py) prove with a stand-in
ansible-playbook is proven here with the real one, its callback and real connections.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FLEET = ROOT / "scripts" / "fleet.py"
SWITCHED_OFF = "cabinet-fleet-test-switched-off"   # no container has this name


@pytest.fixture(scope="module")
def lab(request):
    source = request.config.getoption("ansible_inventory", default=None)
    assert source, "give the lab's inventory: --ansible-inventory=..."
    listing = subprocess.run([str(Path(sys.executable).parent / "ansible-inventory"), "-i", source, "--list"],
                             capture_output=True, text=True, check=True, timeout=120)
    data = json.loads(listing.stdout)
    managed = data.get("cabinet_managed", {}).get("hosts", [])
    assert len(managed) >= 2, "the live fleet test needs two practice machines"
    hostvars = {h: data["_meta"]["hostvars"][h] for h in managed[:2]}
    for name, variables in hostvars.items():
        # A Molecule host (cabinet_lab: true) or a demo container (lab_image); never a client's.
        assert variables.get("cabinet_lab") is True or "lab_image" in variables, f"{name} is not a lab host"
    return hostvars


def client(folder: Path, hosts: dict) -> None:
    folder.mkdir(parents=True)
    (folder / "hosts.yml").write_text(json.dumps({"all": {"children": {"cabinet_managed": {"hosts": hosts}}}},
                                                 ensure_ascii=False, indent=1), encoding="utf-8")


@pytest.fixture(scope="module")
def fleet_run(lab, tmp_path_factory):
    base = tmp_path_factory.mktemp("fleet")
    (first, first_vars), (second, second_vars) = lab.items()
    clients = base / "clients"
    client(clients / "cabinet-a", {first: first_vars})
    client(clients / "cabinet-b", {second: second_vars,
                                   "poste-eteint": {**second_vars, "ansible_host": SWITCHED_OFF}})
    client(clients / "cabinet-c", {first: {**first_vars, "alerting_msp_address": "pas-une-adresse"}})
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
    done = subprocess.run([sys.executable, str(FLEET), str(clients), "--playbook", str(ROOT / "playbooks" / "alerting.yml"),
                           "--parallel", "3", "--out", str(base / "out"), "--reports", str(base / "reports"),
                           "--client-timeout", "1200"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800, check=False)
    (run_dir,) = list((base / "out").iterdir())
    run = json.loads((run_dir / "fleet-run.json").read_text(encoding="utf-8"))
    stats = {r["client"]: json.loads((run_dir / f"{r['client']}.stats.json").read_text(encoding="utf-8"))
             for r in run["clients"] if (run_dir / f"{r['client']}.stats.json").is_file()}
    return {"done": done, "run": run, "stats": stats, "run_dir": run_dir, "reports": base / "reports",
            "first": first, "second": second}


def results(fleet_run) -> dict:
    return {r["client"]: r for r in fleet_run["run"]["clients"]}


def test_the_fleet_fails_when_a_client_does(fleet_run):
    done = fleet_run["done"]
    assert done.returncode == 1, done.stdout + done.stderr
    assert {k: r["result"] for k, r in results(fleet_run).items()} == \
        {"cabinet-a": "ok", "cabinet-b": "unreachable", "cabinet-c": "failed"}, done.stdout


def test_a_machine_switched_off_leaves_its_practice_applied(fleet_run):
    row = results(fleet_run)["cabinet-b"]
    assert row["hosts_unreachable"] == ["poste-eteint"], row
    applied = fleet_run["stats"]["cabinet-b"]["hosts"][fleet_run["second"]]
    assert applied["failures"] == 0 and applied["unreachable"] == 0
    plays = [p["name"] for p in fleet_run["stats"]["cabinet-b"]["plays"] if p["ok"] + p["changed"] > 0]
    assert any(name.startswith("Alerting |") for name in plays), f"alerting's play did not run: {plays}"


def test_bad_input_stops_its_client_only_and_changes_nothing(fleet_run):
    log = (fleet_run["run_dir"] / "cabinet-c.log").read_text(encoding="utf-8")
    assert "alerting_msp_address" in log
    host = fleet_run["stats"]["cabinet-c"]["hosts"][fleet_run["first"]]
    assert host["failures"] == 1 and host["changed"] == 0
    assert results(fleet_run)["cabinet-a"]["changed"] == 0


def test_the_summary_and_the_fleet_page_tell_each_client(fleet_run):
    summary = fleet_run["done"].stdout.split("Fleet summary", 1)[1]
    lines = {line.split()[0]: line for line in summary.splitlines()[2:] if line.strip()}
    assert lines["cabinet-b"].split()[1] == "unreachable" and "poste-eteint" in lines["cabinet-b"]
    assert lines["cabinet-c"].split()[1] == "failed" and f"{fleet_run['first']} (failed)" in lines["cabinet-c"]
    # alerting.yml is a part of site.yml: the run is not the clients' last enforcement.
    assert not fleet_run["run"]["full"]
    assert "Not recorded as the clients' last enforcement" in fleet_run["done"].stdout
    assert not (fleet_run["reports"] / "enforcement.json").exists()
    # The live results, published the way a full run's are, make the fleet page.
    sys.path.insert(0, str(FLEET.parent))
    try:
        import fleet  # noqa: PLC0415 - scripts/ is not a package
    finally:
        sys.path.pop(0)
    fleet.publish(fleet_run["reports"], fleet_run["run"], fleet_run["run"]["clients"])
    record = json.loads((fleet_run["reports"] / "enforcement.json").read_text(encoding="utf-8"))
    assert sorted(record["clients"]) == ["cabinet-a", "cabinet-b", "cabinet-c"]
    page = (fleet_run["reports"] / "index.html").read_text(encoding="utf-8")
    assert "injoignable : poste-eteint" in page and "échec" in page and "appliquée, rien à changer" in page


def test_two_clients_sharing_a_machine_never_run_at_once(fleet_run):
    a, c = results(fleet_run)["cabinet-a"], results(fleet_run)["cabinet-c"]
    assert c["started"] >= a["finished"] or a["started"] >= c["finished"], (a, c)
    assert "never worked on by two runs at once" in fleet_run["done"].stdout
