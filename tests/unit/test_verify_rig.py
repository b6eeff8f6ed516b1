"""The verify rig's own promises (tests/integration/conftest.py), checked with a real pytest run.

A scenario's CABINET_VERIFY_WORKERS runs the suite with pytest-xdist (--dist loadgroup): each
host's tests must stay in one worker, or two workers change one host at once (session 8: two
runs of system_baseline on one host, each meeting the other's rollback timer)."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SUITE = '''
import os
from pathlib import Path
import pytest

AUDITED_GROUP = "cabinet_managed"


@pytest.mark.parametrize("step", range(8))
def test_step(host, step):
    with open(Path(__file__).parent / "workers.log", "a", encoding="utf-8") as log:
        log.write(f"{host.inventory_name} {os.environ.get('PYTEST_XDIST_WORKER', '-')} {step}\\n")
'''


def test_each_hosts_tests_run_in_one_worker_in_order(tmp_path):
    (tmp_path / "hosts.ini").write_text(
        "[cabinet_managed]\n" + "".join(f"lab-{n} ansible_connection=local\n" for n in ("one", "two", "three")),
        encoding="utf-8")
    (tmp_path / "test_rig_suite.py").write_text(SUITE, encoding="utf-8")
    # The suite's own conftest, as the integration suites have it (a link: it finds the
    # repository from its real path).
    (tmp_path / "conftest.py").symlink_to(ROOT / "tests" / "integration" / "conftest.py")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--dist",
         "loadgroup", f"--ansible-inventory={tmp_path / 'hosts.ini'}", str(tmp_path / "test_rig_suite.py")],
        cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    workers: dict[str, set[str]] = defaultdict(set)
    steps: dict[str, list[int]] = defaultdict(list)
    for line in (tmp_path / "workers.log").read_text(encoding="utf-8").splitlines():
        host, worker, step = line.split()
        workers[host].add(worker)
        steps[host].append(int(step))
    assert set(workers) == {"lab-one", "lab-two", "lab-three"}
    assert all(w != {"-"} for w in workers.values()), "pytest-xdist did not run the suite"
    assert {h: len(w) for h, w in workers.items()} == {h: 1 for h in workers}, dict(workers)
    assert all(s == list(range(8)) for s in steps.values()), dict(steps)
