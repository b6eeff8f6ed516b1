"""The test rig's own promises, checked with real runs: the verify rig
(tests/integration/conftest.py) and the Makefile's Ansible strategy.

A scenario's CABINET_VERIFY_WORKERS runs the suite with pytest-xdist (--dist loadgroup): each
host's tests must stay in one worker, or two workers change one host at once (session 8: two
runs of system_baseline on one host, each meeting the other's rollback timer)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SUITE = '''
import os
from pathlib import Path
import pytest

AUDITED_GROUP = "cabinet_managed"


@pytest.mark.parametrize("step", range(8))
def test_step(host, step, request):
    group = request.node.get_closest_marker("xdist_group")
    with open(Path(__file__).parent / "workers.log", "a", encoding="utf-8") as log:
        log.write(f"{host.inventory_name} {os.environ.get('PYTEST_XDIST_WORKER', '-')} {step} {Path(__file__).stem} "
                  f"{group.kwargs.get('name') if group else '-'}\\n")
'''


# A suite whose last checks drive a browser (a fixture of that name, as the website suite's).
BROWSER_SUITE = SUITE + '''

@pytest.fixture(scope="module")
def browser():
    yield "a browser"


@pytest.mark.parametrize("step", range(8, 12))
def test_browser_step(host, step, request, browser):
    test_step(host, step, request)
'''


def run_rig(tmp_path: Path, inventory: str, suites: dict[str, str], *options: str) -> None:
    """Run ``suites`` (file name -> source) with the integration suites' own conftest (a link: it
    finds the repository from its real path) against ``inventory`` (INI), under pytest-xdist's
    loadgroup; it must pass."""
    (tmp_path / "hosts.ini").write_text(inventory, encoding="utf-8")
    for name, source in suites.items():
        (tmp_path / name).write_text(source, encoding="utf-8")
    (tmp_path / "conftest.py").symlink_to(ROOT / "tests" / "integration" / "conftest.py")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--dist", "loadgroup", *options,
         f"--ansible-inventory={tmp_path / 'hosts.ini'}", *(str(tmp_path / name) for name in suites)],
        cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


def test_each_hosts_tests_run_in_one_worker_in_order(tmp_path):
    run_rig(tmp_path, "[cabinet_managed]\n" + "".join(f"lab-{n} ansible_connection=local\n" for n in ("one", "two", "three")),
            {"test_rig_suite.py": SUITE}, "-n", "2")
    workers: dict[str, set[str]] = defaultdict(set)
    steps: dict[str, list[int]] = defaultdict(list)
    for line in (tmp_path / "workers.log").read_text(encoding="utf-8").splitlines():
        host, worker, step, _, group = line.split()
        assert group == host, line  # without --split-suites: a group per host, whatever the host
        workers[host].add(worker)
        steps[host].append(int(step))
    assert set(workers) == {"lab-one", "lab-two", "lab-three"}
    assert all(w != {"-"} for w in workers.values()), "pytest-xdist did not run the suite"
    assert {h: len(w) for h, w in workers.items()} == {h: 1 for h in workers}, dict(workers)
    assert all(s == list(range(8)) for s in steps.values()), dict(steps)


def test_split_suites_keeps_a_lab_host_whole_and_each_suite_of_another_host_in_one_worker(tmp_path):
    """make demo's --split-suites: a host whose checks cannot change it audits its suites side
    by side, each suite's checks in one worker and in order, and a suite's browser checks in a
    group of their own; a lab host (cabinet_lab: true, whose checks may change it) keeps all its
    checks in one worker."""
    run_rig(tmp_path, "[cabinet_managed]\nlab-one ansible_connection=local cabinet_lab=true\n"
            "ws-two ansible_connection=local\nws-three ansible_connection=local\n",
            {"test_suite_a.py": SUITE, "test_suite_b.py": BROWSER_SUITE}, "-n", "3", "--split-suites")
    workers: dict[tuple[str, str], set[str]] = defaultdict(set)
    steps: dict[tuple[str, str], list[int]] = defaultdict(list)
    groups = set()
    for line in (tmp_path / "workers.log").read_text(encoding="utf-8").splitlines():
        host, worker, step, suite, group = line.split()
        part = f"{suite}::browser" if int(step) >= 8 else suite
        groups.add(group)
        workers[host, part].add(worker)
        steps[host, part].append(int(step))
    assert len(workers) == 9 and all(w != {"-"} for w in workers.values()), dict(workers)
    assert all(len(w) == 1 for w in workers.values()), dict(workers)
    assert all(s == list(range(8)) for (_, part), s in steps.items() if "browser" not in part), dict(steps)
    assert all(s == list(range(8, 12)) for (_, part), s in steps.items() if "browser" in part), dict(steps)
    lab_workers = {frozenset(w) for (host, _), w in workers.items() if host == "lab-one"}
    assert len(lab_workers) == 1, dict(workers)
    assert groups == {"lab-one", "ws-two::test_suite_a", "ws-two::test_suite_b", "ws-two::test_suite_b::browser",
                      "ws-three::test_suite_a", "ws-three::test_suite_b", "ws-three::test_suite_b::browser"}, groups


def task_output(strategy: str, plugins: str, command: str) -> str:
    """The last line a local shell task prints under ``strategy``."""
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_STRATEGY": strategy, "ANSIBLE_STRATEGY_PLUGINS": plugins}
    run = subprocess.run([str(Path(sys.executable).parent / "ansible"), "localhost", "-c", "local", "-e",
                          "ansible_become=false", "-m", "ansible.builtin.shell", "-a", command],
                         env=env, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout.strip().splitlines()[-1]


CPUS = "grep Cpus_allowed_list /proc/self/status | cut -f2"


def test_the_makefiles_mitogen_strategy_leaves_every_cpu_to_the_run():
    """The Makefile's strategy (scripts/strategy_plugins/cabinet_mitogen_linear.py) is
    mitogen_linear without its CPU pinning: the task runs under mitogen, and a command it
    starts may use every CPU the controller may. mitogen_linear itself pins it to one CPU on a
    2- or 3-CPU machine (session 9: a whole test run on one CPU of two); if a mitogen release
    stops doing so, the last assertion says the wrapper can go."""
    import multiprocessing  # noqa: PLC0415
    mitogen = pytest.importorskip("ansible_mitogen")
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "ANSIBLE_STRATEGY=cabinet_mitogen_linear" in makefile
    ours = str(ROOT / "scripts" / "strategy_plugins")
    own = re.search(r"^Cpus_allowed_list:\s*(\S+)$", Path("/proc/self/status").read_text(), re.M)[1]
    assert "(mitogen:" in task_output("cabinet_mitogen_linear", ours, "ps -o args= -p $PPID"), "not run by mitogen"
    assert task_output("cabinet_mitogen_linear", ours, CPUS) == own
    # mitogen counts the machine's CPUs (multiprocessing.cpu_count), not the ones this process may use.
    if len(os.sched_getaffinity(0)) in (2, 3) and multiprocessing.cpu_count() == len(os.sched_getaffinity(0)):
        theirs = str(Path(mitogen.__file__).parent / "plugins" / "strategy")
        assert task_output("mitogen_linear", theirs, CPUS) != own, "mitogen_linear no longer pins: drop the wrapper"


SINK_SUITE = '''
import os
import time
from pathlib import Path

import pytest

AUDITED_GROUP = "cabinet_managed"


def note(what):
    with open(Path(__file__).parent / "sink.log", "a", encoding="utf-8") as log:
        log.write(f"{what} {time.monotonic():.3f} {os.environ.get('PYTEST_XDIST_WORKER', '-')}\\n")


@pytest.mark.mailsink_outage
@pytest.mark.parametrize("round", range(3))
def test_outage(host, mailsink, round):
    note("outage-start")
    time.sleep(0.6)
    note("outage-end")


@pytest.mark.parametrize("round", range(12))
def test_delivery(host, mailsink, round):
    note("delivery-start")
    time.sleep(0.2)
    note("delivery-end")


def test_stop_needs_the_mark(host, mailsink):
    with pytest.raises(AssertionError, match="marked mailsink_outage"):
        mailsink.stop()
'''


def test_a_mail_sink_outage_never_overlaps_a_check_that_waits_for_mail(tmp_path):
    """The demo's checks run side by side (--split-suites); a check that stops the lab's mail
    sink (mailsink_outage) holds it alone, and no other check may stop it."""
    run_rig(tmp_path, "[cabinet_managed]\none ansible_connection=local\ntwo ansible_connection=local\n"
            "[lab_mailsink]\nsink ansible_connection=local\n",
            {"test_sink_a.py": SINK_SUITE, "test_sink_b.py": SINK_SUITE}, "-n", "4", "--split-suites")
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    opened: dict[tuple[str, str], float] = {}
    opened_by: set[tuple[str, str]] = set()
    for line in (tmp_path / "sink.log").read_text(encoding="utf-8").splitlines():
        event, at, worker = line.split()
        kind, _, edge = event.partition("-")
        opened_by.add((kind, worker))
        if edge == "start":
            opened[kind, worker] = float(at)
        else:
            spans[kind].append((opened.pop((kind, worker)), float(at)))
    assert len(spans["outage"]) == 12 and len(spans["delivery"]) == 48, {k: len(v) for k, v in spans.items()}
    assert len({worker for _, worker in opened_by}) > 1, "the checks did not run side by side"
    for start, end in spans["outage"]:
        others = [s for s in spans["outage"] + spans["delivery"] if s != (start, end)]
        assert not [s for s in others if s[0] < end and start < s[1]], (start, end)
