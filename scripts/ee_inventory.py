#!/usr/bin/env python3
"""The private data folder of make ee-test: the project and an SSH inventory of the demo practice,
laid out as AWX lays out a job for ansible-runner.

    scripts/ee_inventory.py build/ee/run

<run>/project/ is the repository as a clone has it (no .git, venv, build or reports), and
<run>/inventory/ (where AWX and ansible-runner put a job's inventory) the demo practice reached as a client is: over SSH, by its
machines' names on the demo's network, as msp-admin with its key (made by the lab's
prepare.yml, lab_admin_account) and become through sudo, each host key known beforehand (read
from inside each container, never trusted on first use). The demo's group_vars come along.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SKIP = {".git", ".venv", "build", "reports", "__pycache__", ".pytest_cache"}


def copy_project(dest: Path) -> None:
    """The repository's files as git knows them (tracked, or new and not ignored), as AWX's
    project update would check them out: no local secret (a vault password file, an awx.yml)
    and no client inventory but the demo's."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
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


def main(run: Path) -> int:
    if run.exists():
        shutil.rmtree(run)
    copy_project(run / "project")
    demo = yaml.safe_load((ROOT / "inventories" / "demo" / "hosts.yml").read_text(encoding="utf-8"))
    inventory = run / "inventory"
    keys = inventory / "keys"
    keys.mkdir(parents=True)
    shutil.copytree(ROOT / "inventories" / "demo" / "group_vars", inventory / "group_vars")
    shutil.copytree(ROOT / "inventories" / "demo" / "files", inventory / "files")
    # The demo finds the lab's mail sink certificate from its inventory's place in the repository;
    # here the inventory is outside the project, which is beside it.
    main = inventory / "group_vars" / "all" / "main.yml"
    text = main.read_text(encoding="utf-8")
    assert "inventory_dir ~ '/../../molecule/" in text, "the demo's certificate lookup changed: update ee_inventory.py"
    main.write_text(text.replace("inventory_dir ~ '/../../molecule/", "'/runner/project/molecule/"), encoding="utf-8")
    inside = "/runner/inventory"
    account = demo["all"]["children"]["cabinet_managed"]["vars"]["lab_admin_account"]

    hosts: dict[str, dict] = {}

    def walk(group: dict) -> None:
        for name, variables in (group.get("hosts") or {}).items():
            hosts.setdefault(name, {}).update(variables or {})
        for child in (group.get("children") or {}).values():
            walk(child or {})
    walk(demo["all"])
    known = []
    practice = [h for h, v in hosts.items() if "lab_image" in v and h not in demo["all"]["children"]["lab_mailsink"]["hosts"]]
    for host in practice:
        podman("cp", f"{host}:/root/lab-admin-key", str(keys / host))
        (keys / host).chmod(0o600)
        kind, key = podman("exec", host, "cat", "/etc/ssh/ssh_host_ed25519_key.pub").split()[:2]
        known.append(f"{host} {kind} {key}")
    (inventory / "known_hosts").write_text("\n".join(known) + "\n", encoding="utf-8")

    # The demo's groups as they are, with the connection of a client instead of podman's.
    ssh = {"ansible_connection": "ssh", "ansible_user": account,
           "ansible_ssh_common_args": f"-o UserKnownHostsFile={inside}/known_hosts -o StrictHostKeyChecking=yes"}
    demo["all"]["vars"] = {k: v for k, v in demo["all"]["vars"].items() if k not in ("ansible_connection", "ansible_user")}
    demo["all"]["vars"].update(ssh)

    def retarget(group: dict) -> None:
        for name in list((group.get("hosts") or {})):
            if name in practice:
                group["hosts"][name] = {**(group["hosts"][name] or {}), "ansible_host": name,
                                        "ansible_ssh_private_key_file": f"{inside}/keys/{name}"}
        for child in (group.get("children") or {}).values():
            retarget(child or {})
    retarget(demo["all"])
    (inventory / "hosts.yml").write_text("---\n# Made by scripts/ee_inventory.py for make ee-test.\n"
                                         + yaml.safe_dump(demo, sort_keys=False, allow_unicode=True), encoding="utf-8")
    env = run / "env"
    env.mkdir()
    (env / "envvars").write_text(json.dumps({"ANSIBLE_CONFIG": "/runner/project/ansible.cfg", "ANSIBLE_NOCOLOR": "1",
                                             "ANSIBLE_FORCE_COLOR": "0"}), encoding="utf-8")
    print(f"==> {run}: the project and the demo's inventory ({', '.join(practice)} over SSH as {account})")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
