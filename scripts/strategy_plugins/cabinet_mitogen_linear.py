"""Mitogen's linear strategy (mitogen_linear) without its CPU pinning.

Mitogen pins Ansible's processes to CPUs (ansible_mitogen/affinity.py): on a machine with 2 or
3 CPUs it keeps CPU 0 for its multiplexer and pins the top-level process, every worker and
every process they start (a local command, the pytest run of a Molecule verify, the containers
podman starts from a task) to CPU 1. On this project's 2-core machines that left one CPU idle
while a whole test run queued on the other (session 9: /proc/stat showed cpu0 idle at 98 %
while two scenarios ran). This strategy is mitogen_linear with the pinning switched off:
mitogen's own no-op policy replaces it before any process is assigned. Everything else is
mitogen's. The Makefile selects it when mitogen is installed (CABINET_MITOGEN=1).
"""

from __future__ import annotations

import ansible_mitogen.affinity

# The base Policy's methods do nothing: no process is pinned, none is unpinned.
ansible_mitogen.affinity.policy = ansible_mitogen.affinity.Policy()

import ansible_mitogen.loaders  # noqa: E402  (after the policy is replaced)
import ansible_mitogen.strategy  # noqa: E402

Base = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)


class StrategyModule(ansible_mitogen.strategy.StrategyMixin, Base):
    pass
