"""Shared set-up of the unit tests: filter_plugins/ importable, and the root-run scripts
(files without a .py suffix) loadable as modules, with the cabinet_common they import."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "filter_plugins"))
# The commands put /usr/local/lib/cabinet first on sys.path; here the role's copy stands for it.
sys.path.insert(0, str(ROOT / "roles" / "alerting" / "files" / "usr" / "local" / "lib" / "cabinet"))


class Clock:
    """A clock the tests move by hand (the scripts' State and decisions take one)."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def load_script(path: str | Path, name: str | None = None) -> types.ModuleType:
    """Import a script such as roles/antivirus/files/usr/local/sbin/cabinet-av as a module."""
    name = name or Path(path).name.replace("-", "_")
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the script loads
    loader.exec_module(module)
    return module


def ansible_env(**extra: str) -> dict[str, str]:
    """The environment of an ansible-playbook run on the controller from a unit test: this
    repository's ansible.cfg, no colour, and Ansible's own strategy. The tests render or
    validate on localhost, where mitogen decides nothing (and its local connection once tried
    to start a child through sudo, session 6); `make unit` exports mitogen for the rest."""
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1", **extra}
    env.pop("ANSIBLE_STRATEGY", None)
    return env


def playbook_tasks(node):
    """Every task of a task file or playbook (parsed YAML), those inside blocks, rescues,
    alwayses and plays' task lists included, in file order."""
    if isinstance(node, list):
        for item in node:
            yield from playbook_tasks(item)
    elif isinstance(node, dict):
        yield node
        for key in ("block", "rescue", "always", "tasks", "pre_tasks", "post_tasks", "handlers"):
            yield from playbook_tasks(node.get(key, []))
