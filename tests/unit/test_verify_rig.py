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


# A suite whose last checks drive a browser (a fixture of that name, as the website suite's:
# some take it directly, some through a fixture of their own, as the website's `visit`).
BROWSER_SUITE = SUITE + '''

@pytest.fixture(scope="module")
def browser():
    yield "a browser"


@pytest.fixture
def visit(browser):
    yield browser


@pytest.mark.parametrize("step", range(8, 10))
def test_browser_step(host, step, request, browser):
    test_step(host, step, request)


@pytest.mark.parametrize("step", range(10, 12))
def test_browser_visit_step(host, step, request, visit):
    test_step(host, step, request)
'''


def run_rig(tmp_path: Path, inventory: str, suites: dict[str, str], *options: str,
            passes: bool = True) -> subprocess.CompletedProcess:
    """Run ``suites`` (file name -> source) with the integration suites' own conftest (a link: it
    finds the repository from its real path) against ``inventory`` (INI), under pytest-xdist's
    loadgroup; it must pass (or fail, ``passes=False``)."""
    (tmp_path / "hosts.ini").write_text(inventory, encoding="utf-8")
    for name, source in suites.items():
        (tmp_path / name).write_text(source, encoding="utf-8")
    (tmp_path / "conftest.py").symlink_to(ROOT / "tests" / "integration" / "conftest.py")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--dist", "loadgroup", *options,
         f"--ansible-inventory={tmp_path / 'hosts.ini'}", *(str(tmp_path / name) for name in suites)],
        cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True, text=True, timeout=300, check=False)
    assert (run.returncode == 0) == passes, run.stdout[-3000:] + run.stderr[-3000:]
    return run


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


def test_split_suites_hands_out_the_browser_checks_first_then_the_largest_groups(tmp_path):
    """The order pytest-xdist hands the groups out in (its own order, largest first by number of
    checks, is turned off with --split-suites): the browser groups first, then the others by
    size, each group's checks in their own order."""
    run = run_rig(tmp_path, "[cabinet_managed]\nlab-one ansible_connection=local cabinet_lab=true\n"
                  "ws-two ansible_connection=local\n",
                  {"test_suite_a.py": SUITE, "test_suite_b.py": BROWSER_SUITE}, "--split-suites", "--collect-only")
    order, steps = [], []
    for line in run.stdout.splitlines():
        found = re.match(r"(?:.*/)?(test_suite_[ab])\.py::(test_\w+)\[(lab-one|ws-two)-(\d+)\]$", line.strip())
        if found:
            suite, test, host, step = found.groups()
            order.append(host if host == "lab-one" else f"{host}::{suite}" + ("::browser" if "browser" in test else ""))
            steps.append((suite, int(step)))
    assert len(order) == 40, run.stdout[-2000:]
    groups = list(dict.fromkeys(order))
    assert groups == ["ws-two::test_suite_b::browser", "lab-one", "ws-two::test_suite_a", "ws-two::test_suite_b"], groups
    assert order == sorted(order, key=groups.index), "a group's checks are not together"
    for group in groups:
        for suite in ("test_suite_a", "test_suite_b"):
            mine = [step for (name, step), owner in zip(steps, order) if owner == group and name == suite]
            assert mine == sorted(mine), (group, suite, mine)
    assert "--no-loadscope-reorder" in subprocess.run([sys.executable, "-m", "pytest", "--help"], capture_output=True,
                                                      text=True, check=False).stdout, "pytest-xdist too old (3.8 at least)"


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


# ----------------------------------------------------------------------------- the secret audit's own secrets
LEAK_SUITE = '''
import os
import tempfile

from conftest import assert_secrets_not_exposed

AUDITED_GROUP = "cabinet_managed"


def test_a_leak_found(host, inventory):
    """The leak check fails on a world-readable file that holds the secret (planted here)."""
    secret = inventory.vars(host.inventory_name)["relay_password"]
    folder = tempfile.mkdtemp(prefix="cabinet-rig-leak.")
    os.chmod(folder, 0o755)
    with open(os.path.join(folder, "leak.conf"), "w", encoding="utf-8") as out:
        out.write("password = " + secret + "\\\\n")
    os.chmod(os.path.join(folder, "leak.conf"), 0o644)
    try:
        assert_secrets_not_exposed(host, [secret], "the relay password", roots=folder)
    finally:
        os.remove(os.path.join(folder, "leak.conf"))
        os.rmdir(folder)


def test_a_pattern_file_that_came_empty(host, inventory, monkeypatch):
    """A pattern file that reached the host empty (a copy cut short) finds nothing anywhere:
    the check must fail, not pass, although the planted leak is there."""
    import conftest

    def empty_copy(handle, content, name):
        folder = tempfile.mkdtemp(prefix="cabinet-audit.", dir="/run")
        open(os.path.join(folder, name), "wb").close()
        return os.path.join(folder, name)

    monkeypatch.setattr(conftest, "push_private_file", empty_copy)
    test_a_leak_found(host, inventory)


def _compare(value):
    assert value == "something else"


def test_a_secret_in_a_failing_comparison(host, inventory):
    _compare(inventory.vars(host.inventory_name)["relay_password"])
'''


def test_a_failing_leak_check_never_prints_the_secret(tmp_path):
    """pytest prints each frame's arguments when a check fails: a leak check that finds a leak
    held the secrets it looked for, and a CI log, the demo's audit.log or junit's XML showed
    them. The secret is a Hidden argument, and every failure's text has the inventory's secrets
    masked. The check itself still fails, and says where the leak is; a pattern file that came
    empty fails it too (it would find nothing anywhere). It needs root, as the whole rig does
    (the pattern file goes to /run): it fails without, it does not skip."""
    # Long enough that pytest cuts its value short ("...") where it shows it.
    secret = "Rig-s3cret-" + os.urandom(150).hex()
    junit, results = tmp_path / "junit.xml", tmp_path / "results.json"
    run = run_rig(tmp_path, f"[cabinet_managed]\nlab-one ansible_connection=local relay_password={secret}\n",
                  {"test_leak_suite.py": LEAK_SUITE}, "-n", "2", "-rfE", f"--junitxml={junit}",
                  f"--report-json={results}", passes=False)
    output = run.stdout + run.stderr
    assert "3 failed" in output, output[-3000:]
    assert "world-readable files hold the relay password" in output and "leak.conf" in output, output[-3000:]
    assert "could not search the files: ['patterns=unusable']" in output, output[-3000:]
    # The short summary keeps each failure's reason (the report's parts are masked in place).
    assert re.search(r"FAILED \S*test_a_leak_found\S* - Assertion", output), output[-3000:]  # (cut to 80 columns)
    written = {"pytest's output": output, "junit's XML": junit.read_text(encoding="utf-8"),
               "the report's JSON": results.read_text(encoding="utf-8")}
    for where, text in written.items():
        pieces = [secret[i:i + 12] for i in range(len(secret) - 11) if secret[i:i + 12] in text]
        assert not pieces, f"twelve characters of the secret or more are in {where}"
    assert "<hidden>" in output and "[secret masqué]" in output, output[-3000:]


def _integration_conftest():
    import importlib.util

    spec = importlib.util.spec_from_file_location("cabinet_integration_conftest",
                                                  ROOT / "tests" / "integration" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_secret_copy_runs_where_and_as_every_other_command(tmp_path, monkeypatch):
    """The pattern file goes to the host on the standard input of an SSH command testinfra's own
    code builds (a private function of it): the same host, user, port, options and sudo as the
    audit's every other command, with no terminal (-T) and nothing else changed."""
    import testinfra

    rig = _integration_conftest()
    (tmp_path / "hosts.ini").write_text(
        "[cabinet_managed]\nh1 ansible_host=192.0.2.10 ansible_user=msp-admin ansible_port=2222 ansible_become=true "
        "ansible_ssh_common_args='-o StrictHostKeyChecking=yes'\n", encoding="utf-8")
    handle = testinfra.get_host("ansible://h1", ansible_inventory=str(tmp_path / "hosts.ini"))
    ssh = rig._ssh_backend(handle)
    assert ssh is not None and ssh.NAME == "ssh"
    seen = []
    monkeypatch.setattr(ssh, "run_local", lambda command, *args: seen.append(ssh.quote(command, *args))
                        or ssh.result(0, b"", b"", b""))
    handle.run("umask 077 && cat > /run/cabinet-audit.x/patterns")
    ordinary = seen[-1]
    copy = rig.ssh_command_with_stdin(handle, "umask 077 && cat > /run/cabinet-audit.x/patterns")
    assert copy.replace(" -T ", " ", 1) == ordinary, (copy, ordinary)
    assert " -T " in copy and copy.index(" -T ") > copy.index("StrictHostKeyChecking")
    for part in ("User=msp-admin", "Port=2222", "192.0.2.10", "sudo /bin/sh -c"):
        assert part in ordinary, (part, ordinary)
    # Not reached over SSH: no such command (the copy then goes by podman cp or Ansible's module).
    assert rig.ssh_command_with_stdin(testinfra.get_host("local://"), "true") is None
