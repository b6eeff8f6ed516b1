#!/usr/bin/env python3
"""The demo practice reached as a client is: over SSH, as the MSP's admin account, with sudo.

    scripts/demo_inventory.py ssh build/inventories   # make demo: for this machine
    scripts/demo_inventory.py ee build/ee/run         # make ee-test: for the execution environment

inventories/demo/hosts.yml describes the lab: containers that the rig makes and reaches as root
through podman (molecule/resources/lab-up.yml), with sshd and the account msp-admin (key-based,
sudo; lab_admin_account in prepare.yml). This script writes the inventory an MSP would have for
such a practice: the same groups and variables, each practice machine reached over SSH as
msp-admin with its key and become through sudo, each host key known beforehand (read from
inside the container, never trusted on first use). The lab's mail sink stays on podman: it
stands for the MSP's relay, not a practice machine.

ssh: <out>/demo/ (a folder named demo: the compliance report names the client after it) with
hosts.yml, group_vars, files, keys/ and known_hosts; machines by their address on the demo's
network, which this machine reaches.

ee: <run>/project/ is the repository as a clone has it (no .git, venv, build or reports) and
<run>/inventory/ the inventory (where AWX and ansible-runner put a job's), machines by their
names on the demo's network, which the execution environment's container joins.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "inventories" / "demo"
NETWORK = "cabinet-demo"
SKIP = {".git", ".venv", "build", "reports", "__pycache__", ".pytest_cache"}
CERT_LOOKUP = "inventory_dir ~ '/../../molecule/"


def copy_project(dest: Path) -> None:
    """The repository's tracked files, as AWX's project update would check them out: no local
    file git does not track (a vault password file, an awx.yml with a token: neither is in
    .gitignore's list) and no client inventory but the demo's."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        parts = Path(name).parts
        if parts[0] in SKIP or (parts[0] == "inventories" and parts[1:2] != ("demo",)):
            continue
        source = ROOT / name
        if not source.is_file() or source.is_symlink():
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def podman(*args: str) -> str:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=True).stdout


def container_ip(name: str) -> str:
    data = json.loads(podman("inspect", name))[0]
    return data["NetworkSettings"]["Networks"][NETWORK]["IPAddress"]


def write_inventory(inventory: Path, address, key_dir: str, project: str) -> list[str]:
    """inventory/: hosts.yml, group_vars, files, keys, known_hosts. ``address(host)`` is how the
    controller reaches a machine; ``key_dir`` and ``project`` are the paths of the keys and of the
    repository as the controller sees them. Returns the practice machines."""
    demo = yaml.safe_load((DEMO / "hosts.yml").read_text(encoding="utf-8"))
    if inventory.exists():
        shutil.rmtree(inventory)
    keys = inventory / "keys"
    keys.mkdir(parents=True, mode=0o700)
    shutil.copytree(DEMO / "group_vars", inventory / "group_vars")
    shutil.copytree(DEMO / "files", inventory / "files")
    # The demo finds the lab's mail sink certificate from its inventory's place in the repository;
    # this inventory is elsewhere.
    main = inventory / "group_vars" / "all" / "main.yml"
    text = main.read_text(encoding="utf-8")
    assert CERT_LOOKUP in text, "the demo's certificate lookup changed: update scripts/demo_inventory.py"
    main.write_text(text.replace(CERT_LOOKUP, f"'{project}/molecule/"), encoding="utf-8")
    account = demo["all"]["children"]["cabinet_managed"]["vars"]["lab_admin_account"]

    hosts: dict[str, dict] = {}

    def walk(group: dict) -> None:
        for name, variables in (group.get("hosts") or {}).items():
            hosts.setdefault(name, {}).update(variables or {})
        for child in (group.get("children") or {}).values():
            walk(child or {})
    walk(demo["all"])
    sinks = set(demo["all"]["children"]["lab_mailsink"]["hosts"])
    practice = [h for h, v in hosts.items() if "lab_image" in v and h not in sinks]
    known = []
    for host in practice:
        podman("cp", f"{host}:/root/lab-admin-key", str(keys / host))
        (keys / host).chmod(0o600)
        kind, key = podman("exec", host, "cat", "/etc/ssh/ssh_host_ed25519_key.pub").split()[:2]
        known.append(f"{address(host)} {kind} {key}")
    (inventory / "known_hosts").write_text("\n".join(known) + "\n", encoding="utf-8")
    known_hosts = f"{key_dir.rsplit('/', 1)[0]}/known_hosts"

    # The demo's groups as they are, with the connection of a client instead of podman's:
    # become through sudo for every play (as inventories/example), and for the audit's sudo.
    demo["all"]["vars"] = {k: v for k, v in demo["all"]["vars"].items() if k not in ("ansible_connection", "ansible_user")}
    demo["all"]["vars"].update({
        "ansible_connection": "ssh", "ansible_user": account, "ansible_become": True,
        "ansible_ssh_common_args": f"-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=yes"})

    def retarget(group: dict) -> None:
        for name in list((group.get("hosts") or {})):
            if name in practice:
                group["hosts"][name] = {**(group["hosts"][name] or {}), "ansible_host": address(name),
                                        "ansible_ssh_private_key_file": f"{key_dir}/{name}"}
            elif name in sinks:
                group["hosts"][name] = {**(group["hosts"][name] or {}), "ansible_connection": "podman",
                                        "ansible_user": "root", "ansible_become": False}
        for child in (group.get("children") or {}).values():
            retarget(child or {})
    retarget(demo["all"])
    (inventory / "hosts.yml").write_text(
        "---\n# Made by scripts/demo_inventory.py from inventories/demo/hosts.yml: the demo practice over SSH\n"
        f"# as {account}, with sudo. Remade by each make demo; edit inventories/demo instead.\n"
        + yaml.safe_dump(demo, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return practice


def ssh_mode(out: Path) -> int:
    inventory = (out / "demo").resolve()
    practice = write_inventory(inventory, container_ip, f"{inventory}/keys", str(ROOT))
    print(f"==> {inventory}/hosts.yml: the demo practice ({', '.join(practice)}) over SSH as msp-admin, with sudo")
    return 0


def ee_mode(run: Path) -> int:
    if run.exists():
        shutil.rmtree(run)
    copy_project(run / "project")
    practice = write_inventory(run / "inventory", lambda host: host, "/runner/inventory/keys", "/runner/project")
    env = run / "env"
    env.mkdir()
    (env / "envvars").write_text(json.dumps({"ANSIBLE_CONFIG": "/runner/project/ansible.cfg", "ANSIBLE_NOCOLOR": "1",
                                             "ANSIBLE_FORCE_COLOR": "0"}), encoding="utf-8")
    print(f"==> {run}: the project and the demo's inventory ({', '.join(practice)} over SSH as msp-admin)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("ssh", "ee"):
        sys.exit(__doc__.split("\n\n")[1])
    sys.exit({"ssh": ssh_mode, "ee": ee_mode}[sys.argv[1]](Path(sys.argv[2])))
