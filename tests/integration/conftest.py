"""Shared machinery of the testinfra suites: which hosts to audit, what to expect of them.

The same suites run in Molecule's verify step and against a client's real inventory:

    pytest tests/integration --ansible-inventory=inventories/<client>/hosts.yml

Hosts and expectations come from the inventory through Ansible's own API (group_vars,
host_vars and, with ANSIBLE_VAULT_PASSWORD_FILE set, the vault), over the role's defaults.
A suite names the group it audits with the module constant ``AUDITED_GROUP`` and its role
with ``ROLE``. Tests that need the lab's mail sink (a stand-in for the MSP's relay that the
tests can stop and read) take the ``mailsink`` fixture; on a real inventory, which has no
``lab_mailsink`` group, they are reported as not applicable there, with that reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import pytest
import testinfra
import yaml
from testinfra.backend import base
from testinfra.backend.podman import PodmanBackend

ROOT = Path(__file__).resolve().parents[2]
LAB_MAILSINK_GROUP = "lab_mailsink"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--ansible-log",
        default=os.environ.get("ANSIBLE_LOG_PATH", ""),
        help="Ansible log of the run to audit for leaked secrets (default: $ANSIBLE_LOG_PATH)",
    )
    parser.addoption(
        "--read-only",
        action="store_true",
        help="the compliance report's audit: checks that change a host to prove an outcome (lab "
             "fixtures, the mail sink) are not run, even on lab hosts",
    )
    parser.addoption(
        "--report-json",
        default="",
        help="write every check's result, host, evidence and reason to this JSON file (tests/report reads it)",
    )
    parser.addoption(
        "--check-timeout",
        type=int,
        default=0,
        help="seconds a check may take before it counts as an error (0: no limit; the report uses one)",
    )
    parser.addoption(
        "--host-budget",
        type=int,
        default=0,
        help="seconds a host's whole audit may take; past it, its remaining checks report it unreachable (0: no limit)",
    )
    parser.addoption(
        "--split-suites",
        action="store_true",
        help="pytest-xdist: one group per host and suite instead of one per host, so a host's practices "
             "are audited side by side (make demo); a lab host whose checks may change it (cabinet_lab: true, "
             "not --read-only) keeps one group. --host-budget and the reachability probe then count per worker",
    )
    parser.addoption(
        "--lab-run",
        action="store_true",
        help="the inventory is a lab (Molecule, the demo): every audited host must be a lab host "
             "(cabinet_lab: true), and any skip other than a declared 'not applicable' fails",
    )


# ----------------------------------------------------------------------------- skips
# A check that does not apply to a host (a server check on a practice machine, a mode the
# host is not in) says so with not_applicable(): in a lab run (--lab-run, as Molecule's
# verify runs the suites) that is the only skip allowed, and every other skip fails the
# run, so that a scenario cannot silently test nothing (a forgotten cabinet_lab: true, a
# missing mail sink, a missing Ansible log). On a real inventory, skips stay skips: lab-only
# tests do not apply to a client's machines.
NOT_APPLICABLE = "n/a: "
# A read-only audit (the compliance report) does not run the checks that prove an outcome by
# changing the host; they are counted as not run, never as passed.
READ_ONLY_SKIP = "not run in a read-only audit: proves an outcome by changing the host"


class HostUnreachable(Exception):
    """The host did not answer (or stopped answering): each of its checks fails with this, and
    the report says unreachable, never compliant. Told apart by its type, not by its text."""


class CheckTimeout(BaseException):
    """A check ran past --check-timeout. A BaseException, so that no `except Exception` (or
    OSError, which TimeoutError is) in a check can swallow it."""


def not_applicable(reason: str) -> None:
    """Skip: this check does not apply to this host (counted in the summary as n/a)."""
    pytest.skip(NOT_APPLICABLE + reason)


def _lab_run(config: pytest.Config) -> bool:
    return bool(config.getoption("lab_run", default=False))


@pytest.hookimpl(tryfirst=True)  # before the terminal reporter files it as a skip
def pytest_collectreport(report) -> None:
    """A whole module skipped at collection (pytest.skip(allow_module_level=True),
    importorskip) is an unexpected skip too in a lab run."""
    if report.skipped and _LAB_RUN.get("on"):
        report.outcome = "failed"
        report.longrepr = f"unexpected skip at collection in a lab run: {report.longrepr}"


_LAB_RUN: dict[str, bool] = {}


def pytest_configure(config: pytest.Config) -> None:
    _LAB_RUN["on"] = _lab_run(config)
    config.addinivalue_line("markers", "mailsink_outage: the test stops the lab's mail sink (see _mailsink_turn)")
    if config.getoption("split_suites", default=False) and hasattr(config.option, "loadscopereorder"):
        # pytest-xdist hands out its groups largest first by number of checks; with
        # --split-suites the order is this conftest's instead (pytest_collection_modifyitems).
        config.option.loadscopereorder = False
    path = config.getoption("report_json", default="")
    if path and not hasattr(config, "workerinput"):  # on the controller only, with pytest-xdist
        config.pluginmanager.register(Results(path, config), "cabinet-results")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # noqa: ARG001 - pytest's signature
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.excinfo is not None:
        # What the report shows of a failure, decided here where the exception is at hand: its
        # type and message (pytest runs with --assert=plain for the report: no compared values),
        # or the failing statement of the check (code, not data), with the inventory's secrets
        # masked; and whether it means the host could not be reached.
        if call.excinfo.errisinstance((HostUnreachable, CheckTimeout)):
            report.user_properties.append(("cabinet_unreachable", scrub(item.config, str(call.excinfo.value))[:400]))
        report.user_properties.append(("cabinet_reason", failure_reason(item.config, call.excinfo)))
    if report.failed:
        # What pytest prints of a failure (the terminal, a CI log, the demo's audit.log, junit's
        # XML) shows each frame's arguments: a leak check that fails held the secrets it looked
        # for (`secrets = [...]`). The inventory's secrets are masked there too, and in what the
        # check printed: every string of the report, in place, so that its parts (the short
        # summary's reason, junit's message) stay what pytest and pytest-xdist expect.
        report.longrepr = _scrubbed(item.config, report.longrepr)
        report.sections = [(title, scrub(item.config, text)) for title, text in report.sections]
    # An expected failure (pytest.xfail with its reason) is a known defect, declared and
    # counted in the summary, not a skip.
    if not report.skipped or hasattr(report, "wasxfail") or not _lab_run(item.config):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if not reason.removeprefix("Skipped: ").startswith(NOT_APPLICABLE):
        report.outcome = "failed"
        report.longrepr = f"unexpected skip in a lab run (only not_applicable() may skip there): {reason}"


# ----------------------------------------------------------------------------- inventory
class Inventory:
    """A parsed Ansible inventory: hosts by pattern, and each host's variables."""

    def __init__(self, source: str) -> None:
        from ansible.inventory.manager import InventoryManager
        from ansible.parsing.dataloader import DataLoader
        from ansible.plugins.loader import init_plugin_loader
        from ansible.vars.manager import VariableManager

        # Lookups in inventory values (lookup('ansible.builtin.file', ...) of a certificate, as
        # a scenario's or an MSP's inventory holds) need Ansible's plugin and collection loader.
        init_plugin_loader()
        self.loader = DataLoader()
        vault_file = os.environ.get("ANSIBLE_VAULT_PASSWORD_FILE")
        if vault_file:
            from ansible.parsing.vault import get_file_vault_secret

            secret = get_file_vault_secret(filename=vault_file, loader=self.loader)
            secret.load()
            self.loader.set_vault_secrets([("default", secret)])
        self.manager = InventoryManager(loader=self.loader, sources=[source])
        self.variables = VariableManager(loader=self.loader, inventory=self.manager)

    def hosts(self, pattern: str) -> list[str]:
        return [h.name for h in self.manager.get_hosts(pattern)]

    def group(self, name: str) -> list[str]:
        group = self.manager.groups.get(name)
        return sorted(h.name for h in group.get_hosts()) if group else []

    @lru_cache(maxsize=None)
    def vars(self, hostname: str) -> dict[str, Any]:
        host = self.manager.get_host(hostname)
        return self.variables.get_vars(host=host, include_hostvars=False)

    def template(self, hostname: str, value: Any) -> Any:
        from ansible.template import Templar

        variables = {**self.vars(hostname), "inventory_hostname": hostname,
                     "inventory_hostname_short": hostname.split(".")[0]}
        try:  # ansible-core 2.19 templates only trusted strings; role defaults read here are ours
            from ansible.template import trust_as_template
        except ImportError:  # older ansible-core trusts every string
            trust_as_template = None
        if trust_as_template and isinstance(value, str):
            value = trust_as_template(value)
        return Templar(loader=self.loader, variables=variables).template(value)


@lru_cache(maxsize=None)
def _inventory(source: str) -> Inventory:
    return Inventory(source)


def _inventory_source(config: pytest.Config) -> str:
    source = config.getoption("ansible_inventory", default=None)
    if not source:
        raise pytest.UsageError(
            "give the inventory to audit: --ansible-inventory=inventories/<client>/hosts.yml"
        )
    return source


@lru_cache(maxsize=None)
def role_defaults(role: str) -> dict[str, Any]:
    path = ROOT / "roles" / role / "defaults" / "main.yml"
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


@lru_cache(maxsize=None)
def role_vars(role: str) -> dict[str, Any]:
    """A role's internal constants (vars/main.yml), such as tables of release dates."""
    path = ROOT / "roles" / role / "vars" / "main.yml"
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


# ----------------------------------------------------------------------------- host fixtures
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``host`` over the inventory hosts of the suite's AUDITED_GROUP."""
    if "host" not in metafunc.fixturenames:
        return
    inventory = _inventory(_inventory_source(metafunc.config))
    pattern = getattr(metafunc.module, "AUDITED_GROUP", "cabinet_managed")
    limit = metafunc.config.getoption("hosts", default=None)
    # Plain strings: ansible-core 2.19 tags the inventory's strings, which pytest-xdist cannot
    # send between its workers (test ids, user properties).
    names = [name.encode().decode() for name in inventory.hosts(pattern)]
    if limit:
        wanted = {n for spec in limit for n in inventory.hosts(spec.replace("ansible://", ""))}
        names = [n for n in names if n in wanted]
    # Each host's tests in one pytest-xdist group (a scenario's CABINET_VERIFY_WORKERS, --dist
    # loadgroup): one worker runs them, hosts side by side. The mark goes on the parameter, so
    # it is there when xdist's own collection hook names the groups; added in
    # pytest_collection_modifyitems it came after that hook, and session 8's parallel run had
    # one host's tests on two workers at once (their rollback timers met).
    # With --split-suites (make demo), a host whose checks cannot change it (not a lab host, or
    # a read-only audit) has a group per suite instead: its practices are audited side by side
    # (the demo's server has half the demo's checks). The tests that use the lab's mail sink,
    # the one thing they change then, take its lock (_mailsink_turn). Without it (Molecule,
    # build.py's audits), the per-host bookkeeping below (_REACHED, _STALLED, _HOST_STARTED: per
    # process) is per host.
    split = metafunc.config.getoption("split_suites", default=False)
    read_only = metafunc.config.getoption("read_only", default=False)

    def group(name: str) -> str:
        if not split or (not read_only and inventory.vars(name).get("cabinet_lab", False)):
            return name
        suite = f"{name}::{Path(str(metafunc.module.__file__)).stem}"
        # The checks that drive a browser (each starts its own) are a group of their own: on the
        # demo's server they were 31 of its website suite's 42 s, the audit's longest group.
        return f"{suite}::browser" if "browser" in metafunc.fixturenames else suite

    params = [pytest.param(n, id=n, marks=pytest.mark.xdist_group(name=group(n))) for n in names]
    metafunc.parametrize("host", params, indirect=True, scope="module")


class RuncPodmanBackend(PodmanBackend):
    """testinfra's podman backend, with each command started by the container's OCI runtime
    (`runc exec <container id>`, what `podman exec` itself ends in) instead of through podman.

    Why: a `podman exec` costs about 0.25 s of CPU and `runc exec` 0.04 s (measured in session
    6: 10 commands 2.35 s against 0.8 s), and a scenario's verify runs thousands of commands on
    a 2-core machine that runs two scenarios at once. What the command gets is what podman exec
    gives it: the container's namespaces, cgroup, capabilities, seccomp and AppArmor profile,
    and its environment, none of the controller's. The command line on the controller holds the
    command as podman exec's did (`/bin/sh -c <command>`), so the audit of secrets in command
    lines sees what it saw. (Entering the namespaces with nsenter was faster still, 3 ms, but
    ran the container's binaries with the controller root's full capabilities, outside its
    cgroup and seccomp filter: a compromised lab container could have reached the controller.)
    The name stays "podman" (push_private_file copies with `podman cp`). Used when the suite
    runs as root and podman runs the container with runc under RUNC_ROOT; otherwise podman exec."""

    RUNC_ROOT = "/run/runc"  # rootful podman's state folder for runc

    def __init__(self, name: str, container_id: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(name, *args, **kwargs)
        self.container_id = container_id

    def run(self, command: str, *args: str, **kwargs: Any) -> base.CommandResult:
        if self.user is not None:
            return super().run(command, *args, **kwargs)
        cmd = self.get_command(command, *args)
        out = self.run_local("runc --root %s exec %s /bin/sh -c %s", self.RUNC_ROOT, self.container_id, cmd)
        out.command = self.encode(cmd)
        return out


def _runc_container_id(name: str) -> str | None:
    """The container's ID when runc runs it where RuncPodmanBackend looks, else None."""
    import shutil
    import subprocess

    if os.geteuid() != 0 or not shutil.which("runc") or os.environ.get("CABINET_PODMAN_EXEC") == "1":
        return None
    shown = subprocess.run(["podman", "inspect", "--type", "container", "--format", "{{.Id}} {{.OCIRuntime}}", name],
                           capture_output=True, text=True, check=False)
    container_id, _, runtime = shown.stdout.strip().partition(" ")
    if shown.returncode != 0 or runtime != "runc" or not container_id.isalnum():
        return None
    if not os.path.exists(os.path.join(RuncPodmanBackend.RUNC_ROOT, container_id, "state.json")):
        return None
    return container_id


_HOSTS: dict[str, testinfra.host.Host] = {}


def connect(inventory: Inventory, name: str) -> testinfra.host.Host:
    """A testinfra host over the inventory's own connection, natively where testinfra can."""
    hostvars = inventory.vars(name)
    connection = hostvars.get("ansible_connection", "ssh")
    target = hostvars.get("ansible_host", name)
    if connection in ("podman", "containers.podman.podman"):
        if target not in _HOSTS:
            container_id = _runc_container_id(target)
            if container_id:
                backend = RuncPodmanBackend(target, container_id)
                _HOSTS[target] = testinfra.host.Host(backend)
                backend.set_host(_HOSTS[target])
            else:
                _HOSTS[target] = testinfra.get_host(f"podman://{target}")
        return _HOSTS[target]
    if connection == "local":
        return testinfra.get_host("local://", sudo=os.geteuid() != 0)
    handle = testinfra.get_host(f"ansible://{name}", ansible_inventory=inventory.manager._sources[0])
    # testinfra's SSH backend reuses a connection only when it is given a ControlPath, and it
    # takes one only from ansible.cfg, shared by every audit: without one each check opened a new
    # SSH session (0.49 s a command through sudo, 0.02 s with one, issue 19); a shared one could
    # let an audit of one client, within 60 s of another's, run on the other's machine when both
    # reach the same address through different jump hosts (%C hashes address, port and user
    # only). So the path is this process's own. testinfra caches the SSH host it builds.
    ssh = _ssh_backend(handle)
    if ssh is not None:
        ssh.controlpath = f"{_control_dir()}/%%C"  # %% survives testinfra's formatting
    return handle


@lru_cache(maxsize=None)
def _control_dir() -> str:
    """This audit's own folder for SSH connection sockets (0700, removed with the process)."""
    import atexit
    import shutil

    folder = tempfile.mkdtemp(prefix="cabinet-cp.")
    atexit.register(shutil.rmtree, folder, True)
    return folder


@pytest.fixture(scope="module")
def inventory(request: pytest.FixtureRequest) -> Inventory:
    return _inventory(_inventory_source(request.config))


_REACHED: dict[str, str] = {}  # host -> "" when it answered, else why not (probed once per run)
PROBE_SECONDS = 60


def reachable(handle: testinfra.host.Host, name: str) -> str:
    """"" when the host runs a command within PROBE_SECONDS, else the reason it does not.

    Once per host and run: a host that is down costs one time-out, not one per suite."""
    if name not in _REACHED:
        import threading

        outcome: dict[str, str] = {}

        def probe() -> None:
            try:
                done = handle.run("true")
                outcome["why"] = "" if done.rc == 0 else f"a command on it failed ({done.rc}): {done.stderr.strip()[:300]}"
            except Exception as exc:  # noqa: BLE001 - whatever the backend raises, the host is not reached
                outcome["why"] = f"{type(exc).__name__}: {str(exc).strip()[:300]}"

        worker = threading.Thread(target=probe, daemon=True)
        worker.start()
        worker.join(PROBE_SECONDS)
        _REACHED[name] = outcome.get("why", f"no answer within {PROBE_SECONDS} s")
    return _REACHED[name]


@pytest.fixture(scope="module")
def host(request: pytest.FixtureRequest, inventory: Inventory) -> testinfra.host.Host:
    handle = connect(inventory, request.param)
    why = reachable(handle, request.param)
    if why:
        raise HostUnreachable(f"{request.param}: {why}")
    handle.inventory_name = request.param
    variables = inventory.vars(request.param)
    handle.cabinet_lab = bool(variables.get("cabinet_lab", False))
    # Where this machine reaches a lab machine's services: the address the connection uses (the
    # demo over SSH: the container's); a client's machine's sites are reached by DNS, as their
    # visitors reach them. Containers reached through podman are looked up by their backend.
    handle.lab_address = (str(variables.get("ansible_host", "")) or None
                          if handle.cabinet_lab or "lab_image" in variables else None)
    return handle


@pytest.fixture(scope="module")
def expect(request: pytest.FixtureRequest, inventory: Inventory, host) -> Callable[[str], Any]:
    """expect('alerting_relay_port'): the inventory's value for this host, else the role default."""
    role = getattr(request.module, "ROLE")
    defaults = role_defaults(role)
    hostvars = inventory.vars(host.inventory_name)

    def lookup(name: str) -> Any:
        if name in hostvars:
            return inventory.template(host.inventory_name, hostvars[name])
        if name in defaults:
            return inventory.template(host.inventory_name, defaults[name])
        raise KeyError(f"{name} is neither in the inventory nor in roles/{role}/defaults/main.yml")

    return lookup


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest, inventory: Inventory, host) -> testinfra.host.Host:
    """The host, when the inventory marks it as a lab machine (cabinet_lab: true).

    Tests that install packages, publish repositories or fake a pending reboot take this
    fixture: they prove outcomes in Molecule and the demo, never on a client's machine.
    """
    if request.config.getoption("read_only", default=False):
        pytest.skip(READ_ONLY_SKIP)
    if not inventory.vars(host.inventory_name).get("cabinet_lab", False):
        if _lab_run(request.config):
            pytest.fail(f"{host.inventory_name} is audited in a lab run but is not a lab host: "
                        "the scenario's inventory must set cabinet_lab: true")
        pytest.skip("changes the host to prove an outcome: runs only on lab hosts (cabinet_lab: true)")
    return host


@pytest.fixture(scope="module")
def mailsink(request: pytest.FixtureRequest, inventory: Inventory) -> "MailSink":
    if request.config.getoption("read_only", default=False):
        pytest.skip(READ_ONLY_SKIP)
    names = inventory.group(LAB_MAILSINK_GROUP)
    if not names:
        if _lab_run(request.config):
            pytest.fail("this lab has no mail sink (group lab_mailsink): add one to the scenario")
        pytest.skip(
            "needs the lab mail sink (group lab_mailsink): on a real inventory, alerts arrive "
            "in the MSP's own mailbox, which this suite cannot read or stop"
        )
    return MailSink(connect(inventory, names[0]))


# One mail sink serves a whole lab, and pytest-xdist can run its checks side by side (make
# demo's audit, --split-suites): a test that stops the sink (marked mailsink_outage) must not
# run while another waits for a delivery, which would arrive only at Postfix's next queue run,
# after that test had given up (session 15 lost a delivery so). Each test that takes the
# ``mailsink`` fixture holds a lock on the sink for its whole run: shared, or exclusive for an
# outage; an outage waiting holds a turnstile that keeps new shared holders out, so it cannot be
# starved. The lock files are this checkout's (build/, the user's, not /tmp), one per sink
# (Molecule runs two scenarios, each with its own sink, at once); a wait is bounded.
MAILSINK_LOCK_WAIT = 900
_MAILSINK_OUTAGE = {"allowed": False}


def _lock_file(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        pytest.fail(f"cannot open the mail sink's lock {path}: {exc}")
    if os.fstat(descriptor).st_uid != os.geteuid():
        os.close(descriptor)
        pytest.fail(f"{path} belongs to another user: remove it (it is this checkout's lock on the lab's mail sink)")
    return descriptor


def _flock(descriptor: int, mode: int, path: Path, deadline: float) -> None:
    while True:
        try:
            fcntl.flock(descriptor, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                pytest.fail(f"waited {MAILSINK_LOCK_WAIT} s for the lab's mail sink ({path}): another check "
                            "kept it; is another run of the suites using this lab?")
            time.sleep(0.2)


@pytest.fixture(autouse=True)
def _mailsink_turn(request: pytest.FixtureRequest):
    if "mailsink" not in request.fixturenames or request.config.getoption("read_only", default=False):
        yield
        return
    names = _inventory(_inventory_source(request.config)).group(LAB_MAILSINK_GROUP)
    if not names:  # (the mailsink fixture says why the test does not apply)
        yield
        return
    stem = "".join(c if c.isalnum() or c in "._-" else "_" for c in str(names[0]))[:64]
    lock, turnstile = (ROOT / "build" / f"mailsink-{stem}{suffix}.lock" for suffix in ("", ".turnstile"))
    outage = request.node.get_closest_marker("mailsink_outage") is not None
    deadline = time.monotonic() + MAILSINK_LOCK_WAIT
    held, gate = _lock_file(lock), _lock_file(turnstile)
    try:
        _flock(gate, fcntl.LOCK_EX, turnstile, deadline)
        try:
            _flock(held, fcntl.LOCK_EX if outage else fcntl.LOCK_SH, lock, deadline)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
        _MAILSINK_OUTAGE["allowed"] = outage
        yield
    finally:
        _MAILSINK_OUTAGE["allowed"] = False
        os.close(held)  # (closing releases the lock)
        os.close(gate)


class MailSink:
    """The lab's stand-in for the MSP relay: a Maildir the tests read, a service they stop
    (only in a test marked ``mailsink_outage``)."""

    MAILDIR = "/var/mail/sink"

    def __init__(self, handle: testinfra.host.Host) -> None:
        self.host = handle

    def messages(self) -> list[dict[str, str]]:
        """Every message, oldest first (Maildir names start with the time they arrived)."""
        script = (
            "import json, mailbox\n"
            "from email.header import decode_header, make_header\n"
            f"box = mailbox.Maildir({self.MAILDIR!r}, create=False)\n"
            "import re\n"
            "def arrival(key):\n"
            "    m = re.match(r'(\\d+)\\.M(\\d+)', key)\n"
            "    return (int(m[1]), int(m[2])) if m else (0, 0)\n"
            "out = []\n"
            "for key, msg in sorted(box.items(), key=lambda item: arrival(item[0])):\n"
            "    out.append({k: str(make_header(decode_header(msg.get(k, '')))) for k in\n"
            "                ('Subject', 'Date', 'To', 'From', 'X-RcptTo', 'X-MailFrom', 'X-Cabinet-Practice',\n"
            "                 'X-Cabinet-Severity', 'X-Cabinet-Host')}\n"
            "               | {'body': msg.get_payload(decode=True).decode('utf-8', 'replace')\n"
            "                  if not msg.is_multipart() else ''})\n"
            "print(json.dumps(out))\n"
        )
        result = self.host.run("python3 -c %s", script)
        assert result.rc == 0, result.stderr
        return json.loads(result.stdout)

    # Seconds between two looks at the sink (one short command each). It was 2: each wait for an
    # alert then took a second more than the alert, and a look for one that must not come took
    # four seconds (session 19).
    POLL = 0.5

    def wait_for(self, token: str, timeout: float = 90, count: int = 1) -> list[dict[str, str]]:
        """Messages whose subject holds ``token``, once at least ``count`` have arrived; at
        ``timeout``, those there are. It always looks once: ``timeout=0`` is one look."""
        deadline = time.monotonic() + timeout
        while True:
            found = [m for m in self.messages() if token in m["Subject"] or token in m["body"]]
            if len(found) >= count or time.monotonic() >= deadline:
                return found
            time.sleep(self.POLL)

    def alerts(self, mail_host: str, practice: str, text: str) -> list[dict[str, str]]:
        """Alerts from one host (its Postfix myhostname) and practice, mentioning ``text``."""
        return [m for m in self.messages()
                if m["X-Cabinet-Host"] == mail_host and m["X-Cabinet-Practice"] == practice
                and (text in m["Subject"] or text in m["body"])]

    def wait_alert(self, mail_host: str, practice: str, text: str, before: int = 0,
                   timeout: float = 90) -> dict[str, str]:
        """The newest such alert, once more than ``before`` of them have arrived."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.alerts(mail_host, practice, text)
            if len(found) > before:
                return found[-1]
            if time.monotonic() >= deadline:
                break
            time.sleep(self.POLL)
        raise AssertionError(f"no new {practice} alert mentioning {text!r} from {mail_host} within {timeout:.0f} s")

    def stop(self) -> None:
        assert _MAILSINK_OUTAGE["allowed"], "a test that stops the mail sink is marked mailsink_outage (see _mailsink_turn)"
        assert self.host.run("systemctl stop mailsink").rc == 0

    def start(self) -> None:
        assert self.host.run("systemctl start mailsink").rc == 0
        for _ in range(30):
            if self.host.socket("tcp://0.0.0.0:587").is_listening:
                return
            time.sleep(1)
        raise AssertionError("the mail sink did not come back on port 587")


def run_unit(handle: testinfra.host.Host, unit: str, timeout: float = 900) -> str:
    """Start a oneshot unit as its timer would and wait for it; return systemd's Result.

    `systemctl start` would wait too, but an upgrade may restart D-Bus under it and cut the
    client off; polling survives that. Result is "success", "exit-code", and so on.
    """
    handle.check_output(f"systemctl reset-failed {unit} 2>/dev/null; systemctl start --no-block {unit}")
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        time.sleep(2)
        state = handle.run(f"systemctl show -p ActiveState --value {unit}").stdout.strip()
        if state in ("inactive", "failed"):
            return handle.check_output(f"systemctl show -p Result --value {unit}")
    raise AssertionError(f"{unit} still {state} after {timeout} s")


def wait_mail_queue_empty(handle: testinfra.host.Host, timeout: float = 90, units: tuple[str, ...] = ()) -> None:
    """Wait until none of ``units`` runs and the host's Postfix queue is empty: every alert the
    host raised so far has then reached the relay (the lab's sink), so a count taken now is
    final. An "exactly once" check decides on this, never after a fixed sleep."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = handle.run(f"systemctl is-active {' '.join(units)}").stdout.split() if units else []
        if not {"active", "activating", "deactivating", "reloading"} & set(busy) \
                and handle.run("postqueue -j").stdout.strip() == "":
            return
        time.sleep(1)
    raise AssertionError(f"units still running or alerts still queued after {timeout:.0f} s: "
                         + handle.run("postqueue -p").stdout)


# ----------------------------------------------------------------------------- secrets
# Searched on every audited host; LAB_SECRET_ROOTS hold patient data on a real practice
# (/srv, /var/lib: records, databases, backups), so only lab hosts are walked there.
SECRET_ROOTS = "/etc /usr/local /var/log /tmp /root"


class Hidden:
    """A secret pytest must never print: a failing check's report shows each frame's arguments
    (saferepr cuts long ones short, which the masking of pytest_runtest_makereport would then
    miss). A function given a secret rebinds its argument to one of these first thing."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value.value if isinstance(value, Hidden) else value

    def __repr__(self) -> str:
        return "<hidden>"


# A search's first step: the pattern file matches itself, or it is empty or unreadable and the
# search would find nothing whatever the host holds (it fails the check instead).
PATTERNS_SELF_TEST = 'grep -qF -f "$1" -- "$1" || { echo "patterns=unusable"; exit 3; }; '


def push_private_file(handle: testinfra.host.Host, content: bytes, name: str) -> str:
    """Put ``content`` in a new root-only folder on the host; return the file's path there.

    Never through a command line: the content goes on the standard input of the backend's
    own SSH command (hosts reached over SSH, through sudo as every other command), from a
    0600 file on the controller by ``podman cp`` (containers), or by Ansible's copy module
    (any other connection, whose arguments travel inside the module's payload), so neither
    the controller's nor the host's process list, sudo's command log or auth.log ever holds it
    (tests/integration/test_alerting.py's argv watcher, on both paths; sudo's input logging,
    off unless a client turns it on, keeps what sudo reads: README, Secrets). The copy is
    checked whole. The caller removes the folder (``drop_private``).
    """
    content = Hidden(content)
    folder = handle.check_output("umask 077 && mktemp -d /run/cabinet-audit.XXXXXXXX").strip()
    assert folder.startswith("/run/cabinet-audit."), folder
    remote = f"{folder}/{name}"
    try:
        _copy_private(handle, content, name, remote)
        size = handle.check_output(f"chown root:root {remote} && chmod 0600 {remote} && stat -c %s {remote}").strip()
        # Whole, or not at all: a copy cut short would search for part of the secrets only.
        assert size == str(len(content.value)), f"the copy on the host holds {size} bytes, not {len(content.value)}"
    except BaseException:
        _drop_within(handle, remote, 30)  # no part of a copy left behind when it fails
        raise
    return remote


def _drop_within(handle: testinfra.host.Host, remote: str, seconds: int) -> None:
    """drop_private, tried once and for ``seconds`` at most over SSH (the host may be the reason
    the copy failed), its own failure kept quiet: the copy's is the one to report."""
    folder = os.path.dirname(remote)
    with contextlib.suppress(Exception):
        command = ssh_command_with_stdin(handle, f"rm -rf -- {shlex.quote(folder)}")
        if command is None:
            drop_private(handle, remote)
        elif folder.startswith("/run/cabinet-audit."):
            subprocess.run(command, shell=True, stdin=subprocess.DEVNULL, capture_output=True,  # noqa: S602 - testinfra's quoting
                           timeout=seconds, check=False)


def ssh_command_with_stdin(handle: testinfra.host.Host, command: str) -> str | None:
    """The shell command line that runs ``command`` on ``handle`` exactly as testinfra's
    ``handle.run(command)`` would over SSH (its AnsibleBackend's sudo, then the SSH host's, its
    options and ControlPath), with no terminal (-T, last: it wins over -t and RequestTTY), so
    that what it reads on its standard input is the caller's; None when the host is not reached
    over SSH."""
    ssh = _ssh_backend(handle)
    if ssh is None:
        return None
    parts, args = ssh._build_ssh_command(ssh.get_command(handle.backend.get_command(command)))
    parts.insert(len(parts) - 1, "-T")
    return ssh.quote(" ".join(parts), *args)


def _copy_private(handle: testinfra.host.Host, content: Hidden, name: str, remote: str) -> None:
    command = ssh_command_with_stdin(handle, f"umask 077 && cat > {shlex.quote(remote)}")
    if command is not None:
        # One SSH command instead of an `ansible` process (1.6 s of the controller's CPU for
        # each pattern file, measured on the demo's audit, session 19). A failure raised inside
        # subprocess would show its frames, whose arguments hold the content (pytest prints the
        # last frame's in full): it is raised again from here, alone.
        failure: BaseException | None = None
        try:
            done = subprocess.run(command, shell=True, input=content.value, capture_output=True,  # noqa: S602 - testinfra's quoting
                                  timeout=120, check=False)
        except subprocess.TimeoutExpired:
            failure = AssertionError("could not copy to the host: no answer within 120 s")
        except CheckTimeout as exc:
            failure = CheckTimeout(str(exc))
        if failure is not None:
            raise failure from None
        assert done.returncode == 0, f"could not copy to the host: {done.stderr.decode(errors='replace')[-400:]}"
        return
    with tempfile.TemporaryDirectory(prefix="cabinet-audit.") as local_dir:
        local = Path(local_dir) / name
        fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(content.value)
        backend = handle.backend
        if backend.NAME == "podman":
            done = subprocess.run(["podman", "cp", str(local), f"{backend.name}:{remote}"],
                                  capture_output=True, text=True, check=False)
            assert done.returncode == 0, f"podman cp failed: {done.stderr}"
        elif backend.NAME == "local":
            shutil.copyfile(local, remote)
        else:
            done = handle.ansible("ansible.builtin.copy", f"src={local} dest={remote} owner=root group=root mode=0600",
                                  become=True, check=False)
            assert not done.get("failed"), f"could not copy to the host: {done.get('msg')}"


def _ssh_backend(handle: testinfra.host.Host):
    """The SSH backend testinfra runs ``handle``'s commands through (its Ansible backend's, with
    the inventory's become as sudo), or None when the host is not reached over SSH."""
    backend = handle.backend
    if backend.NAME != "ansible" or backend.force_ansible:
        return None
    inner = backend.ansible_runner.get_host(backend.host, ssh_config=backend.ssh_config,
                                            ssh_identity_file=backend.ssh_identity_file)
    if inner is None or getattr(inner.backend, "NAME", "") != "ssh":
        return None
    return inner.backend


def drop_private(handle: testinfra.host.Host, remote: str) -> None:
    folder = os.path.dirname(remote)
    assert folder.startswith("/run/cabinet-audit."), folder
    handle.run(f"rm -rf -- {folder}")


def assert_secrets_not_exposed(handle: testinfra.host.Host, secrets: list[str], what: str,
                               roots: str = SECRET_ROOTS, lab_roots: str = "") -> None:
    """No world-readable file under ``roots`` and no journal line holds any of ``secrets``.

    ``lab_roots`` are searched too, on lab hosts only (see LAB_SECRET_ROOTS above). The
    secrets reach the host as a root-only pattern file (``push_private_file``), never as a
    command's argument: an audit through sudo must not write them to sudo's log or show
    them in ``ps``. The suite runs as root (Molecule) or with the inventory's become (real
    hosts); a search that cannot run fails the check rather than passing it.
    """
    secrets = Hidden([s for s in Hidden(secrets).value if s])
    assert secrets.value, f"no {what} to look for"
    # Each assertion computes a boolean first: pytest prints the values of a failing
    # expression, and a list of secrets must never reach a CI log.
    multiline = any("\n" in s for s in secrets.value)
    assert not multiline, f"{what}: a secret with a line break cannot be searched line by line"
    if lab_roots and getattr(handle, "cabinet_lab", False):
        roots = f"{roots} {lab_roots}"
    patterns = push_private_file(handle, ("\n".join(secrets.value) + "\n").encode(), "patterns")
    try:
        # One grep for many files (xargs), not one a file: 0.015 s instead of 1.2 s on the demo's
        # server. grep lists the files that hold a pattern (-l), skips one that vanished or cannot
        # be read (-s, as before), and exits 1 when it found nothing, which xargs reports as 123;
        # find's own status fails the check (a root that cannot be walked is not searched).
        leaked = handle.run(f"bash -c '{PATTERNS_SELF_TEST}find {roots} -xdev -type f -perm -o=r -print0 "
                            f"| xargs -0 -r grep -lsF -f \"$1\" --; "
                            f"echo \"find=${{PIPESTATUS[0]}} xargs=${{PIPESTATUS[1]}}\"' - {patterns}")
        lines = leaked.stdout.splitlines()
        status = lines.pop().split() if lines else []
        assert leaked.rc == 0 and status in (["find=0", "xargs=0"], ["find=0", "xargs=123"]), \
            f"could not search the files: {status} {leaked.stderr}"
        assert lines == [], f"world-readable files hold {what}: {lines}"
        # Every field of every entry (-o export: MESSAGE, but also _CMDLINE, where a secret
        # passed as an argument lands), and a journal that could not be read, or is empty,
        # fails rather than passes.
        entries = handle.run("journalctl --no-pager -q -n 1 -o cat | wc -l")
        assert entries.rc == 0 and entries.stdout.strip() not in ("", "0"), \
            f"the journal could not be read or is empty: {entries.stderr}"
        journal = handle.run(f"bash -c '{PATTERNS_SELF_TEST}journalctl --no-pager -q -o export | grep -caF -f \"$1\"; "
                             "echo \"journalctl=${PIPESTATUS[0]}\"' - " + patterns)
        lines = journal.stdout.split()
        assert len(lines) == 2 and lines[0].isdigit() and lines[1] == "journalctl=0", \
            f"could not search the journal: {journal.stdout} {journal.stderr}"
        assert lines[0] == "0", f"{what} appears in the journal"
    finally:
        drop_private(handle, patterns)


def assert_secrets_not_in_ansible_log(request: pytest.FixtureRequest, secrets: list[str], what: str,
                                      marker: str) -> None:
    """The Ansible log of the run (--ansible-log) holds none of ``secrets``.

    ``marker`` is text the role's run always logs, so a log of some other run cannot pass.
    """
    log = request.config.getoption("ansible_log")
    secrets = Hidden([s for s in Hidden(secrets).value if s])
    if not secrets.value:
        not_applicable(f"no {what} in this inventory")
    if not log:
        pytest.skip("no Ansible log to audit (give --ansible-log)")
    with open(log, encoding="utf-8", errors="replace") as handle:
        text = handle.read()
    assert marker in text, f"{log} does not look like the log of a run with {marker!r}"
    found = any(s in text for s in secrets.value)
    assert not found, f"{what} appears in the Ansible output ({log})"


# ----------------------------------------------------------------------------- time bounds
# --check-timeout bounds each check (its fixtures' set-up included); --host-budget bounds a
# host's whole audit. A host whose check ran out of time, or past its budget, is reported
# unreachable for the rest: one that answers the probe and then stalls costs one time-out, not
# one per check. (Per process: pytest-xdist runs each host's checks in one worker, unless
# --split-suites, which make demo alone uses, with no --host-budget.)
_STALLED: dict[str, str] = {}
_HOST_STARTED: dict[str, float] = {}


def _item_host(item) -> str | None:
    params = getattr(getattr(item, "callspec", None), "params", {})
    return params.get("host") if isinstance(params.get("host"), str) else None


def _bounded(item, phase: str):
    """A context for one phase of a check under --check-timeout (SIGALRM, main thread only)."""
    import contextlib
    import signal
    import threading

    seconds = item.config.getoption("check_timeout", default=0)
    if not seconds or threading.current_thread() is not threading.main_thread():
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def alarm():
        def expired(signum, frame):  # noqa: ARG001 - signal's signature
            name = _item_host(item)
            if name:
                _STALLED[name] = f"a check's {phase} ran past {seconds} s (--check-timeout): the host stopped answering"
            raise CheckTimeout(f"{name or 'the check'}: {phase} ran past {seconds} s (--check-timeout)")

        previous = signal.signal(signal.SIGALRM, expired)
        signal.alarm(seconds)
        try:
            yield
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)

    return alarm()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    name = _item_host(item)
    budget = item.config.getoption("host_budget", default=0)
    if name:
        started = _HOST_STARTED.setdefault(name, time.monotonic())
        if budget and time.monotonic() - started > budget and name not in _STALLED:
            _STALLED[name] = f"its audit ran past {budget} s (--host-budget)"
    with _bounded(item, "set-up"):
        if name in _STALLED:  # before the fixtures: the check fails at set-up without touching the host
            raise HostUnreachable(f"{name}: {_STALLED[name]}")
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    with _bounded(item, "run"):
        yield


# ----------------------------------------------------------------------------- what the report shows
@lru_cache(maxsize=None)
def _secret_values(source: str) -> tuple[str, ...]:
    """The inventory's secret values (passwords, passphrases, keys, tokens, vault_*), longest
    first, for scrub(): they never reach the report, whatever a check's message held."""
    import re

    import html

    inventory = _inventory(source)
    found: set[str] = set()
    named = re.compile(r"(pass(word|phrase|wd)?|secret|token|private_key|_key$|^vault_)", re.I)

    def collect(value: Any, secret: bool) -> None:
        """Strings under a secret's name, at any depth (a site's tls_private_key in a list)."""
        if isinstance(value, dict):
            for key, item in value.items():
                collect(item, secret or bool(named.search(str(key))))
        elif isinstance(value, (list, tuple)):
            for item in value:
                collect(item, secret)
        elif secret and isinstance(value, str) and len(value.strip()) >= 4:
            value = value.strip()
            # As written, and as a message may show it: whitespace folded, escaped for JSON, as
            # Python shows bytes, for XML/HTML; each line of a multi-line one (a PEM key).
            forms = {value, " ".join(value.split()), json.dumps(value)[1:-1], repr(value.encode())[2:-1],
                     html.escape(value), html.escape(value, quote=False)}
            forms |= {line.strip() for line in value.splitlines() if len(line.strip()) >= 8}
            found.update(f for f in forms if len(f) >= 4)

    for name in inventory.hosts("all"):
        for var, value in inventory.vars(name).items():
            if not named.search(str(var)) and not isinstance(value, (dict, list)):
                continue
            try:
                value = inventory.template(name, value)
            except Exception:  # noqa: BLE001 - a value that does not template is used as written
                pass
            collect(value, bool(named.search(str(var))))
    return tuple(sorted(found, key=len, reverse=True))


def scrub(config: pytest.Config, text: str) -> str:
    """``text`` with every secret of the inventory masked: before anything cuts it short, and
    where pytest already did (its saferepr cuts a long value in the middle with "...": a
    secret's first or last four characters and more, against those dots, are masked too)."""
    source = config.getoption("ansible_inventory", default=None)
    if not source or not text:
        return text
    secrets = _secret_values(source)
    for secret in secrets:
        text = text.replace(secret, "[secret masqué]")
    if "..." in text:
        for secret in secrets:
            for size in range(len(secret) - 1, 3, -1):
                text = text.replace(secret[:size] + "...", "[secret masqué]...")
                text = text.replace("..." + secret[-size:], "...[secret masqué]")
    return text


def _scrubbed(config: pytest.Config, value: Any) -> Any:
    """``value`` (a report's longrepr: pytest's dataclasses, tuples, lists, strings) with
    scrub() applied to every string in it, changed in place where it is an object."""
    import dataclasses

    if isinstance(value, str):
        return scrub(config, value)
    if type(value) in (list, tuple):  # exactly: a named tuple would not rebuild from one iterable
        return type(value)(_scrubbed(config, item) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            current = getattr(value, field.name)
            cleaned = _scrubbed(config, current)
            if cleaned is not current:
                object.__setattr__(value, field.name, cleaned)
    return value


def failure_reason(config: pytest.Config, excinfo) -> str:
    """A failure in one or a few lines: the exception's type and message; when it has none (a
    bare assert), the failing statement of the check, which is code, not data."""
    import re

    message = " ".join(scrub(config, str(excinfo.value)).split())
    # testinfra's "Unexpected exit code/output CommandResult(backend=<...>, ...)": the command
    # and what it said, not the objects' representation.
    shown = re.search(r"CommandResult\(.*?exit_status=(-?\d+), command=b?(['\"])(.*?)\2.*?stderr=b?(['\"])(.*?)\4",
                      message)
    if shown:
        said = " ".join(shown[5].replace("\\n", " ").split())[:200]
        message = f"the command `{shown[3]}` failed (exit {shown[1]})" + (f": {said}" if said else "")
    reason = f"{excinfo.typename}: {message}" if message else excinfo.typename
    if not message:
        for entry in reversed(excinfo.traceback):
            if "tests/integration/" in str(entry.path):
                try:
                    statement = " ".join(str(entry.statement).split())
                except Exception:  # noqa: BLE001 - no source at hand: the place is enough
                    statement = "?"
                reason = f"{reason} ({Path(str(entry.path)).name}:{entry.lineno + 1}: {statement})"
                break
    return scrub(config, reason)[:600]


# ----------------------------------------------------------------------------- evidence
EVIDENCE = "cabinet_evidence"


def stamp(epoch: float | int | str | None) -> str:
    """A time read on a host (seconds since 1970) as the report shows it: 2026-12-07 02:14 UTC."""
    try:
        return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(float(epoch)))
    except (TypeError, ValueError):
        return "jamais"


@pytest.fixture
def evidence(request: pytest.FixtureRequest) -> Callable[[str, Any], None]:
    """evidence("Dernière sauvegarde hors site", "2026-12-07 02:14 UTC"): a value read from the
    host that the compliance report shows beside the check's verdict (French label, plain
    value). Record it before asserting, so that a failing check shows what it found. Never a
    secret: the report is handed to the practice (and the inventory's secrets are masked)."""

    def record(label: str, value: Any) -> None:
        # A sentence is cut at 500 characters; data (the incident register) is kept whole.
        text = scrub(request.config, value)[:500] if isinstance(value, str) else \
            scrub(request.config, json.dumps(value, ensure_ascii=False, default=str))
        request.node.user_properties.append((EVIDENCE, json.dumps([str(label), text], ensure_ascii=False)))

    return record


class Results:
    """Every check's outcome, for --report-json: what tests/report/build.py turns into the
    compliance report. Collected where pytest-xdist sends its workers' reports."""

    def __init__(self, path: str, config: pytest.Config) -> None:
        self.path = path
        self.config = config
        self.checks: dict[str, dict[str, Any]] = {}
        self.started = ""
        self.deselected = 0

    def pytest_runtest_logreport(self, report) -> None:
        props = dict((k, v) for k, v in getattr(report, "user_properties", []) if k != EVIDENCE)
        module, _, test = report.nodeid.partition("::")
        entry = self.checks.setdefault(report.nodeid, {
            "check": f"{Path(module).name}::{test.partition('[')[0]}", "host": props.get("cabinet_host", ""),
            "outcome": "passed", "reason": "", "unreachable": "", "evidence": [], "seconds": 0.0})
        entry["seconds"] = round(entry["seconds"] + getattr(report, "duration", 0.0), 2)
        for key, value in getattr(report, "user_properties", []):
            if key == EVIDENCE and json.loads(value) not in entry["evidence"]:
                entry["evidence"].append(json.loads(value))
        if report.skipped:
            entry["outcome"] = "xfailed" if hasattr(report, "wasxfail") else "skipped"
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr or "")
            entry["reason"] = scrub(self.config, getattr(report, "wasxfail", "") or reason.removeprefix("Skipped: "))
        elif report.failed:
            entry["outcome"] = "failed" if report.when == "call" else "error"
            entry["reason"] = props.get("cabinet_reason") or scrub(self.config, str(report.longrepr or "?"))[-600:]
            entry["unreachable"] = props.get("cabinet_unreachable", "")

    def pytest_sessionstart(self, session) -> None:  # noqa: ARG002 - pytest's signature
        self.started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def pytest_deselected(self, items) -> None:
        self.deselected += len(items)

    def pytest_sessionfinish(self, session, exitstatus) -> None:
        config = session.config
        data = {"schema": 1, "inventory": self.inventory(session.config),
                # Whether this audit is whole, for a report made from it later (build.py
                # --from-audit): pytest's exit status, every collected check reported, no
                # selection (-k, -m, --hosts, a suite left out), and when it ran.
                "audit": {"exitstatus": int(exitstatus), "collected": session.testscollected,
                          "deselected": self.deselected,
                          "selection": bool(config.option.keyword or config.option.markexpr
                                            or config.getoption("hosts", default=None)),
                          "suites": sorted({c["check"].partition("::")[0] for c in self.checks.values()}),
                          "started": self.started,
                          "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                # The report says how its checks ran: read-only (a client's audit), or with the
                # checks that change a lab host (make demo's audit, which its report reuses).
                "read_only": bool(session.config.getoption("read_only", default=False)),
                "inventory_source": str(Path(_inventory_source(session.config)).resolve()),
                "checks": sorted(self.checks.values(), key=lambda c: (c["host"], c["check"]))}
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        with open(self.path, "w", encoding="utf-8") as out:
            json.dump(data, out, ensure_ascii=False, indent=1)

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        """pytest's JUnit file (written by now) holds failure messages: mask the secrets there too."""
        xml = getattr(config.option, "xmlpath", None)
        if xml and os.path.isfile(xml):
            with open(xml, encoding="utf-8") as handle:
                text = handle.read()
            from xml.sax.saxutils import escape

            for secret in _secret_values(config.getoption("ansible_inventory")):
                text = text.replace(escape(secret, {'"': "&quot;"}), "[secret masqué]").replace(secret, "[secret masqué]")
            with open(xml, "w", encoding="utf-8") as handle:
                handle.write(text)

    @staticmethod
    def inventory(config: pytest.Config) -> dict[str, Any]:
        """The audited inventory's hosts and groups, the practice's name as its machines know it
        (alerting_practice_name: the report's heading) and the off-site repositories of its
        machines (the shared off-site server's incidents about other practices are left out).
        No other variable."""
        inventory = _inventory(_inventory_source(config))
        hosts, names, repositories = {}, defaultdict(int), set()
        managed = set(inventory.hosts("cabinet_managed"))
        clients = set(inventory.hosts("backup_clients"))
        for name in inventory.hosts("all"):
            if name in inventory.group(LAB_MAILSINK_GROUP):
                continue
            host = inventory.manager.get_host(name)
            hosts[str(name)] = {"groups": sorted(str(g.name) for g in host.get_groups() if g.name != "all")}
            variables = inventory.vars(name)
            if name in managed and variables.get("alerting_practice_name"):
                names[str(inventory.template(name, variables["alerting_practice_name"])).strip()] += 1
            if name in clients:
                repo = variables.get("backup_offsite_repository_name",
                                     role_defaults("backup").get("backup_offsite_repository_name"))
                repositories.add(str(inventory.template(name, repo)))
        practice = max(names.items(), key=lambda item: item[1])[0] if names else ""
        return {"practice_name": practice, "hosts": hosts, "offsite_repositories": sorted(repositories)}


# ----------------------------------------------------------------------------- report
def pytest_collection_modifyitems(config, items) -> None:
    """Remember each test's host, so the summary does not guess it from parameter ids.
    (pytest_generate_tests groups each host's tests for pytest-xdist.)

    With --split-suites, the groups that drive a browser come first, then the others largest
    first (pytest-xdist's own order, turned off in pytest_configure): the browser checks are
    the longest group by far but few, and xdist's order, by number, started them last (the
    demo's audit, session 19: 44 s, one worker busy with them for the last 19). Each group
    keeps its checks in their order."""
    if config.getoption("split_suites", default=False):
        def group(item) -> str:
            marker = item.get_closest_marker("xdist_group")
            return marker.kwargs.get("name", marker.args[0] if marker.args else "") if marker else item.nodeid

        names = [group(item) for item in items]
        size = Counter(names)
        first = {}
        for index, name in enumerate(names):
            first.setdefault(name, index)
        order = sorted(range(len(items)), key=lambda i: (not names[i].endswith("::browser"), -size[names[i]],
                                                          first[names[i]], i))
        items[:] = [items[i] for i in order]
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        # (An inventory with no host in a suite's group, such as a practice without a website,
        # gives pytest's empty parameter set: no host to name, the check is skipped.)
        if isinstance(params.get("host"), str):
            item.user_properties.append(("cabinet_host", params["host"].encode().decode()))


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    """Per practice and host: how many checks passed, failed or did not apply."""
    table: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    failures: dict[tuple[str, str], list[str]] = defaultdict(list)
    for outcome in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            if not hasattr(report, "nodeid") or report.when not in ("call", "setup"):
                continue
            if report.when == "setup" and outcome == "passed":
                continue
            module, _, test = report.nodeid.partition("::")
            practice = Path(module).stem.removeprefix("test_")
            name = test.partition("[")[0]
            target = dict(getattr(report, "user_properties", [])).get("cabinet_host", "-")
            key = (practice, target)
            table[key][outcome] += 1
            if outcome in ("failed", "error"):
                failures[key].append(name)
    if not table:
        return
    write = terminalreporter.write_line
    for report in terminalreporter.stats.get("xfailed", []):
        write(f"KNOWN DEFECT (xfail): {report.nodeid}: {getattr(report, 'wasxfail', '')}")
    reasons: dict[str, int] = defaultdict(int)
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(getattr(report, "longrepr", None), tuple) else str(report.longrepr)
        reasons[reason.removeprefix("Skipped: ")] += 1
    if reasons:
        terminalreporter.section("cabinet-hardening: checks not run, by reason")
        for reason, count in sorted(reasons.items(), key=lambda r: -r[1]):
            write(f"{count:>5}  {reason}")
    terminalreporter.section("cabinet-hardening: per practice and host")
    write(f"{'practice':<18}{'host':<28}{'passed':>8}{'failed':>8}{'n/a':>6}  verdict")
    for (practice, target), counts in sorted(table.items()):
        bad = counts["failed"] + counts["error"]
        verdict = "DRIFT: " + ", ".join(failures[(practice, target)]) if bad else "ok"
        write(f"{practice:<18}{target:<28}{counts['passed']:>8}{bad:>8}{counts['skipped']:>6}  {verdict}")


# ----------------------------------------------------------------------------- the MSP admin's way in
def run_playbook(playbook: str, lab, request, *extra: str, login: list[str] | None = None,
                 own_strategy: bool = False, timeout: float = 900) -> subprocess.CompletedProcess:
    """ansible-playbook playbooks/<playbook> on this lab host: as root over the inventory's
    connection, or with ``login`` (the ``admin_login`` fixture) the way the MSP's admin
    connects: over SSH with its key, then become through sudo. ``own_strategy``: Ansible's own
    strategy (a new sudo for every task), whatever the caller uses."""
    inventory = request.config.getoption("ansible_inventory")
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_CALLBACK_RESULT_FORMAT": "json"}  # one line a message, for the assertions
    if own_strategy:
        env.pop("ANSIBLE_STRATEGY", None)
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-v", "-i", inventory, "--limit", lab.inventory_name,
            str(ROOT / "playbooks" / playbook), *extra, *(login or [])]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def lab_admin(lab, inventory, request):
    """The lab's stand-in for the MSP's admin (msp-admin): SSH key, sudo without a password."""
    name = inventory.vars(lab.inventory_name).get("lab_admin_account")
    if not name:
        # A lab precondition, not a host the check does not apply to: a lab run fails.
        message = ("this lab has no account standing for the MSP's admin: set lab_admin_account in the "
                   "scenario (molecule/resources/prepare.yml then creates the account)")
        if request.config.getoption("lab_run", default=False):
            pytest.fail(message)
        pytest.skip(message)
    assert lab.user(name).exists, f"{name}: the lab's prepare did not create it"
    return name


@pytest.fixture(scope="module")
def admin_login(lab, lab_admin, tmp_path_factory):
    """Extra variables that make a run connect as the lab's admin, the way the MSP's admin
    does: SSH to the host's address with the admin's key (which the lab's prepare left in
    /root/lab-admin-key), the host's own key checked against its public key, then sudo.

    The connection is shared between the tasks of a run, as ansible.cfg has it for the MSP's
    runs (ControlPersist); with Ansible's own strategy (``own_strategy``) every task still runs
    its own sudo through the PAM stacks the run is changing. (Before session 6 these runs went
    through ``podman exec --user``: 2 s a task instead of 1, and sshd's stacks never in the path.)"""
    folder = tmp_path_factory.mktemp("admin-login")
    key = folder / "key"
    address = lab.check_output("hostname -I").split()[0]
    host_key = lab.check_output("cat /etc/ssh/ssh_host_ed25519_key.pub").split()
    known = folder / "known_hosts"
    known.write_text(f"{address} {host_key[0]} {host_key[1]}\n", encoding="utf-8")
    # The control socket in a short folder of its own: a pytest-xdist worker's tmp path
    # (.../popen-gw0/...) is longer than a Unix socket's path may be.
    control = Path(tempfile.mkdtemp(prefix="cab-", dir="/tmp"))
    options = ["-o", "ControlMaster=auto", "-o", "ControlPersist=60s", "-o", f"ControlPath={control}/%C",
               "-o", f"UserKnownHostsFile={known}", "-o", "IdentitiesOnly=yes"]
    login = ["-e", json.dumps({"ansible_connection": "ssh", "ansible_host": address, "ansible_user": lab_admin,
                               "ansible_ssh_private_key_file": str(key), "ansible_ssh_args": " ".join(options)})]
    try:
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(lab.check_output("cat /root/lab-admin-key") + "\n")
        probe = subprocess.run(["ssh", "-i", str(key), *options, "-o", "BatchMode=yes", f"{lab_admin}@{address}",
                                "sudo", "-n", "true"], capture_output=True, text=True, timeout=60, check=False)
        assert probe.returncode == 0, f"the controller cannot log in as {lab_admin} at {address}: {probe.stderr}"
        yield login
    finally:
        subprocess.run(["ssh", *options, "-O", "exit", f"{lab_admin}@{address}"], capture_output=True, timeout=60,
                       check=False)
        key.unlink(missing_ok=True)  # the lab admin's private key leaves the controller with the module
        shutil.rmtree(control, ignore_errors=True)


def admin_gets_in(lab, admin: str) -> list[str]:
    """A new SSH session with the admin's key, and sudo -n in it; and su -l."""
    problems = []
    ssh = lab.run(f"ssh -i /root/lab-admin-key -o BatchMode=yes -o StrictHostKeyChecking=no "
                  f"-o UserKnownHostsFile=/dev/null {admin}@localhost sudo -n true")
    if ssh.rc != 0:
        problems.append(f"ssh + sudo -n: {ssh.stderr.strip()}")
    su = lab.run(f"su -l {admin} -c 'sudo -n true'")
    if su.rc != 0:
        problems.append(f"su -l + sudo -n: {su.stderr.strip()}")
    return problems
