#!/usr/bin/env python3
"""The private data folder of make ee-test: the project and an SSH inventory of the demo practice,
laid out as AWX lays out a job for ansible-runner.

    scripts/ee_inventory.py build/ee/run

<run>/project/ is the repository as a clone has it (no .git, venv, build or reports), and
<run>/project/inventories/demo-ee/ the demo practice reached as a client is: over SSH, by its
machines' names on the demo's network, as msp-admin with its key (made by the lab's
prepare.yml, lab_admin_account) and become through sudo, each host key known beforehand (read
from inside each container, never trusted on first use). The demo's group_vars come along.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SKIP = {".git", ".venv", "build", "reports", "__pycache__", ".pytest_cache"}


def copy_project(dest: Path) -> None:
    def keep(info: tarfile.TarInfo):
        parts = Path(info.name).parts
        return None if any(p in SKIP for p in parts) else info

    dest.mkdir(parents=True)
    archive = dest.parent / "project.tar"
    with tarfile.open(archive, "w") as tar:
        for entry in sorted(ROOT.iterdir()):
            if entry.name not in SKIP:
                tar.add(entry, arcname=entry.name, filter=keep)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="tar")
    archive.unlink()


def podman(*args: str) -> str:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=True).stdout


def main(run: Path) -> int:
    if run.exists():
        shutil.rmtree(run)
    copy_project(run / "project")
    demo = yaml.safe_load((ROOT / "inventories" / "demo" / "hosts.yml").read_text(encoding="utf-8"))
    inventory = run / "project" / "inventories" / "demo-ee"
    keys = inventory / "keys"
    keys.mkdir(parents=True)
    shutil.copytree(ROOT / "inventories" / "demo" / "group_vars", inventory / "group_vars")
    shutil.copytree(ROOT / "inventories" / "demo" / "files", inventory / "files")
    inside = "/runner/project/inventories/demo-ee"
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
    print(f"==> {run}: the project and inventories/demo-ee ({', '.join(practice)} over SSH as {account})")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
