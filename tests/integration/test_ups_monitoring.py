"""UPS monitoring: Network UPS Tools watches the UPS, alerts the MSP, shuts hosts down in time.

Audit checks (every host of ups_server and ups_clients) read expectations from the inventory.
Lab checks (``lab`` fixture) drive a simulated UPS: the dummy-ups driver reads the UPS status
from the file named by ``ups_monitoring_port``, which the tests rewrite. They need the lab's
shutdown command, which writes ``shutdown:<time>`` to ``SHUTDOWN_LOG`` instead of powering off
(the pre-shutdown commands write ``pre-shutdown:<time>``); see molecule/ups_monitoring.
"""

from __future__ import annotations

import json
import re
import shlex
import time

import pytest

from conftest import (assert_secrets_not_exposed, assert_secrets_not_in_ansible_log, connect, not_applicable,
                      wait_mail_queue_empty)

ROLE = "ups_monitoring"
AUDITED_GROUP = "ups_server:ups_clients"
SHUTDOWN_LOG = "/var/log/cabinet-ups-test.log"
SERVING = ("standalone", "netserver")
REQUIRED_NOTIFICATIONS = ("ONBATT", "ONLINE", "LOWBATT", "COMMBAD", "REPLBATT", "FSD", "SHUTDOWN")


def upsmon_conf(host) -> str:
    return host.file("/etc/nut/upsmon.conf").content_string


def ups_address(expect) -> str:
    server = "localhost" if expect("ups_monitoring_mode") in SERVING else expect("ups_monitoring_server")
    return f"{expect('ups_monitoring_ups_name')}@{server}:{expect('ups_monitoring_listen_port')}"


# ----------------------------------------------------------------------------- audit
def test_nut_installed_in_the_configured_mode(host, expect):
    mode = expect("ups_monitoring_mode")
    assert host.package("nut-client").is_installed
    if mode in SERVING:
        assert host.package("nut-server").is_installed
    assert re.search(rf"^MODE={mode}$", host.file("/etc/nut/nut.conf").content_string, re.M)


def test_files_with_credentials_are_root_nut_0640(host, expect):
    files = ["/etc/nut/upsmon.conf", "/etc/nut/upssched.conf", "/etc/cabinet/ups_monitoring.json"]
    if expect("ups_monitoring_mode") in SERVING:
        files += ["/etc/nut/upsd.users", "/etc/nut/ups.conf", "/etc/nut/upsd.conf"]
    for path in files:
        handle = host.file(path)
        assert handle.is_file, path
        assert (handle.user, handle.group, handle.mode) == ("root", "nut", 0o640), path


def test_passwords_in_no_world_readable_file_nor_the_journal(host, expect):
    secrets = [s for s in (expect("ups_monitoring_primary_password"), expect("ups_monitoring_secondary_password")) if s]
    if not secrets:
        not_applicable("no UPS password in this inventory")
    assert_secrets_not_exposed(host, secrets, "a UPS password")


def test_passwords_never_in_ansible_output(request, expect):
    secrets = [expect("ups_monitoring_primary_password"), expect("ups_monitoring_secondary_password")]
    assert_secrets_not_in_ansible_log(request, secrets, "a UPS password", "UPS monitoring")


def test_driver_upsd_and_upsmon_run(host, expect):
    monitor = host.service("nut-monitor.service")
    assert monitor.is_enabled and monitor.is_running
    if expect("ups_monitoring_mode") in SERVING:
        server = host.service("nut-server.service")
        assert server.is_enabled and server.is_running
        assert host.service(f"nut-driver@{expect('ups_monitoring_ups_name')}.service").is_running
    else:
        assert not host.service("nut-server.service").is_running


def test_upsd_listens_only_where_configured(host, expect):
    if expect("ups_monitoring_mode") not in SERVING:
        not_applicable("a netclient runs no upsd")
    port = expect("ups_monitoring_listen_port")
    lines = host.check_output(f"ss -Htln 'sport = :{port}'").splitlines()
    listening = {re.sub(r"^\[|\]$", "", line.split()[3].rsplit(":", 1)[0]) for line in lines}
    assert listening, "upsd listens nowhere"
    assert not listening & {"0.0.0.0", "*", "::"}, f"upsd listens on every address: {listening}"
    configured = expect("ups_monitoring_listen_addresses")
    if configured:
        assert listening == set(configured)
    elif expect("ups_monitoring_mode") == "standalone":
        assert listening <= {"127.0.0.1", "::1"}, f"a standalone upsd listens beyond loopback: {listening}"
    else:
        assert listening - {"127.0.0.1", "::1"}, "a netserver's upsd is unreachable for its clients"


def test_upsmon_sees_the_ups(host, expect, evidence):
    status = host.run(f"upsc {ups_address(expect)} ups.status 2>/dev/null")
    words = {"OL": "sur secteur", "OB": "SUR BATTERIE", "LB": "BATTERIE FAIBLE", "RB": "BATTERIE À REMPLACER"}
    evidence("État de l'onduleur", ", ".join(words.get(w, w) for w in status.stdout.split()) or "illisible")
    # Root's alerts only: a user can write a journal entry with these fields, not with _UID=0.
    last = host.run("journalctl -q --no-pager -o short-iso -n 1 SYSLOG_IDENTIFIER=cabinet-alert "
                    "CABINET_PRACTICE=ups_monitoring _UID=0")
    evidence("Dernier événement d'alimentation signalé", last.stdout.strip()[:200] or "aucun dans le journal")
    assert status.rc == 0 and status.stdout.strip(), f"upsc cannot read {ups_address(expect)}: {status.stderr}"
    role = "secondary" if expect("ups_monitoring_mode") == "netclient" else "primary"
    monitor = re.search(r"^MONITOR\s+(\S+)\s+1\s+(\S+)\s+\S+\s+(\w+)$", upsmon_conf(host), re.M)
    assert monitor and monitor.group(1) == ups_address(expect) and monitor.group(3) == role
    failures = host.run("journalctl -u nut-monitor --since=-10min --no-pager -q | grep -c 'ACCESS-DENIED'")
    assert failures.stdout.strip() == "0", "upsmon's login is refused by upsd"


def test_every_power_event_reaches_the_alert_command(host):
    conf = upsmon_conf(host)
    assert re.search(r"^NOTIFYCMD /usr/local/sbin/cabinet-ups-event$", conf, re.M)
    flags = dict(re.findall(r"^NOTIFYFLAG (\w+) (\S+)$", conf, re.M))
    missing = [event for event in REQUIRED_NOTIFICATIONS if "EXEC" not in flags.get(event, "").split("+")]
    assert missing == [], f"events not sent to the MSP: {missing}"


def test_early_shutdown_timer(host, expect):
    minutes = expect("ups_monitoring_battery_shutdown_minutes")
    conf = host.file("/etc/nut/upssched.conf").content_string
    start = re.findall(r"^AT ONBATT \* START-TIMER (\S+) (\d+)$", conf, re.M)
    if minutes == 0:
        assert start == []
        return
    assert start and int(start[0][1]) == round(float(minutes) * 60)
    assert re.search(rf"^AT ONLINE \* CANCEL-TIMER {re.escape(start[0][0])}$", conf, re.M)


def test_event_state_is_nuts_alone(host):
    """cabinet-ups-event keeps when each kind was last mailed; nobody else may read or plant it."""
    folder = host.file("/var/lib/cabinet-ups")
    assert folder.is_directory and not folder.is_symlink
    assert (folder.user, folder.group, folder.mode) == ("nut", "nut", 0o700)


def test_shutdown_runs_the_configured_commands(host, expect):
    assert re.search(r'^SHUTDOWNCMD "/usr/local/sbin/cabinet-ups-shutdown"$', upsmon_conf(host), re.M)
    settings = json.loads(host.file("/etc/cabinet/ups_monitoring.json").content_string)
    assert settings["shutdown_command"] == expect("ups_monitoring_shutdown_command")
    assert settings["pre_shutdown_commands"] == expect("ups_monitoring_pre_shutdown_commands")


# ----------------------------------------------------------------------------- lab: a simulated UPS
class Ups:
    """Drive one host's dummy-ups UPS and read what the host did."""

    def __init__(self, host, expect, mailsink) -> None:
        self.host, self.expect, self.mailsink = host, expect, mailsink
        self.device = expect("ups_monitoring_port")
        self.mail_host = host.check_output("postconf -h myhostname")

    def set(self, status: str, charge: int = 100) -> None:
        content = f"ups.status: {status}\nbattery.charge: {charge}\nbattery.runtime: {charge * 18}\n"
        # 0644 whatever the session's umask (through sudo over SSH it was 077): the driver runs as nut.
        device = shlex.quote(self.device)
        self.host.check_output(f"umask 022 && printf %s {shlex.quote(content)} > {device}.tmp && mv {device}.tmp {device}")

    def status(self) -> str:
        return self.host.run(f"upsc {ups_address(self.expect)} ups.status 2>/dev/null").stdout.strip()

    def wait_status(self, wanted: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.status() == wanted:
                return
            time.sleep(1)
        raise AssertionError(f"upsd reports {self.status()!r}, expected {wanted!r}")

    def events(self) -> list[tuple[str, float]]:
        text = self.host.run(f"cat {SHUTDOWN_LOG} 2>/dev/null").stdout
        return [(kind, float(stamp)) for kind, stamp in re.findall(r"^(pre-shutdown|shutdown):([\d.]+)$", text, re.M)]

    def now(self) -> float:
        return float(self.host.check_output("date +%s.%N"))

    def alerts(self, title: str) -> list[dict[str, str]]:
        return [m for m in self.mailsink.alerts(self.mail_host, ROLE, title) if title in m["Subject"]]

    def wait_alert(self, title: str, before: int, timeout: float = 60) -> dict[str, str]:
        return self.mailsink.wait_alert(self.mail_host, ROLE, title, before, timeout)

    def wait_shutdown(self, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = [stamp for kind, stamp in self.events() if kind == "shutdown"]
            if done:
                return done[0]
            time.sleep(1)
        raise AssertionError(f"no shutdown within {timeout:.0f} s")

    def reset(self) -> None:
        """Mains power back, monitoring restarted as after a reboot, the lab's log and event state emptied.

        upsmon is stopped first and started last: started while the driver still reports the
        previous low battery, it would order a new forced shutdown.
        """
        self.host.check_output("systemctl reset-failed nut-monitor.service; systemctl stop nut-monitor.service")
        if self.expect("ups_monitoring_mode") in SERVING:
            self.set("OL")
            # upsd forgets a forced shutdown when it restarts.
            self.host.check_output("systemctl reset-failed nut-server.service; systemctl restart nut-server.service")
            self.wait_status("OL")
        self.host.check_output(f"rm -f {SHUTDOWN_LOG}")
        # Each test starts from a host that has mailed nothing yet: repeats of an event kind
        # within ups_monitoring_realert_hours are held back, and a test must not depend on
        # what an earlier one raised.
        self.host.check_output("rm -f /var/lib/cabinet-ups/events.json")
        self.host.check_output("systemctl start nut-monitor.service")


# When upsmon exits after a shutdown, systemd in these containers (cgroup v1, no release
# agent) waits the whole stop timeout (90 s) for an empty cgroup before it can restart the
# unit. The lab shortens that timeout with a drop-in of its own; the role does not touch it.
LAB_DROPIN = "/etc/systemd/system/nut-monitor.service.d/cabinet-lab-stop-timeout.conf"


@pytest.fixture()
def ups(lab, expect, mailsink):
    if expect("ups_monitoring_driver") != "dummy-ups" and expect("ups_monitoring_mode") in SERVING:
        not_applicable("drives a simulated UPS: needs the dummy-ups driver")
    shorten_stop_timeout(lab)
    return Ups(lab, expect, mailsink)


def shorten_stop_timeout(handle) -> None:
    if not handle.file(LAB_DROPIN).exists:
        handle.check_output(f"mkdir -p {LAB_DROPIN.rsplit('/', 1)[0]} && printf '[Service]\\nTimeoutStopSec=3s\\n' > {LAB_DROPIN}"
                            " && systemctl daemon-reload")


@pytest.fixture()
def standalone(ups, expect):
    if expect("ups_monitoring_mode") != "standalone":
        not_applicable("a standalone host's behaviour; the netserver is driven with its client below")
    ups.reset()
    yield ups
    ups.reset()


def test_on_line_nothing_happens(standalone, expect):
    before = standalone.alerts("UPS")
    time.sleep(expect("ups_monitoring_poll_seconds") * 4)
    assert standalone.status() == "OL"
    assert standalone.events() == [], "a host on mains power ran its shutdown"
    assert standalone.alerts("UPS") == before, "a host on mains power raised a UPS alert"


def test_on_battery_alerts_cancels_on_return_and_shuts_down_after_the_minutes(standalone, expect):
    minutes = expect("ups_monitoring_battery_shutdown_minutes")
    if minutes == 0:
        not_applicable("no early shutdown configured")
    onbatt, online = len(standalone.alerts("UPS on battery")), len(standalone.alerts("UPS back on mains power"))
    early = len(standalone.alerts(f"On battery for {minutes} min"))

    # A short cut: alerts both ways, and the return to mains power cancels the timer. It lasts a
    # quarter of the delay (at least 8 s, for upsmon's polls to see it), whatever the mail's
    # latency: the alerts are awaited once power is back.
    standalone.set("OB", charge=90)
    time.sleep(max(8.0, float(minutes) * 60 / 4))
    standalone.set("OL")
    mail = standalone.wait_alert("UPS on battery", onbatt)
    assert mail["X-Cabinet-Severity"] == "warning"
    standalone.wait_alert("UPS back on mains power", online)

    # A long one: the shutdown comes the configured minutes after the second cut, not the first.
    time.sleep(5)
    second_cut = standalone.now()
    standalone.set("OB", charge=80)
    standalone.wait_alert("UPS on battery", onbatt + 1)
    assert standalone.events() == [], "shut down while on battery for less than the configured minutes"
    shutdown = standalone.wait_shutdown(timeout=minutes * 60 + 60)
    waited = shutdown - second_cut
    assert minutes * 60 - 5 <= waited <= minutes * 60 + 45, (
        f"shutdown {waited:.0f} s after the cut, expected about {minutes * 60} s: "
        "the return to mains power did not cancel the first timer, or the timer is wrong")
    kinds = [kind for kind, _ in standalone.events()]
    assert kinds[:2] == ["pre-shutdown", "shutdown"], f"pre-shutdown commands must run first: {kinds}"
    standalone.wait_alert(f"On battery for {minutes} min", early)


def test_low_battery_shuts_down_at_once(standalone, expect):
    lowbatt = len(standalone.alerts("UPS battery low"))
    start = standalone.now()
    standalone.set("OB LB", charge=8)
    shutdown = standalone.wait_shutdown(timeout=45)
    assert shutdown - start < 40
    assert standalone.wait_alert("UPS battery low", lowbatt)["X-Cabinet-Severity"] == "critical"


def test_worn_battery_and_lost_driver_reach_the_msp(standalone, expect):
    replbatt = len(standalone.alerts("UPS battery needs replacing"))
    standalone.set("OL RB")
    standalone.wait_alert("UPS battery needs replacing", replbatt)

    commbad = len(standalone.alerts("UPS communication lost"))
    driver = f"nut-driver@{expect('ups_monitoring_ups_name')}.service"
    standalone.host.check_output(f"systemctl stop {driver}")
    try:
        standalone.wait_alert("UPS communication lost", commbad, timeout=90)
        assert standalone.events() == [], "losing the driver while on mains power must not shut down"
    finally:
        standalone.host.check_output(f"systemctl start {driver}")


def test_repeated_events_are_mailed_once_per_period_and_the_end_always(standalone, expect):
    """An unplugged UPS: upsmon repeats NOCOMM every 5 minutes, each play reports the dead driver.

    The events are raised as upsmon raises them (as nut, NOTIFYTYPE and UPSNAME in the
    environment, the message as argument) and as the role's run does (--driver-down, as root).
    Each carries a token; once the later ones have arrived and the host's mail queue is empty,
    nothing held back can still arrive, so the count is final.
    """
    host = standalone.host
    token = f"lab-{time.time_ns()}"
    host.check_output("rm -f /var/lib/cabinet-ups/events.json")
    drivers_before = len(standalone.alerts("UPS driver"))

    def upsmon_event(kind: str, text: str) -> str:
        result = host.run(f"runuser -u nut -- env NOTIFYTYPE={kind} UPSNAME={expect('ups_monitoring_ups_name')}@localhost "
                          f"/usr/local/sbin/cabinet-ups-event {shlex.quote(f'{token} {text}')}")
        assert result.rc == 0, result.stdout + result.stderr
        return result.stdout

    upsmon_event("NOCOMM", "unreachable-1")
    repeats = [upsmon_event("NOCOMM", repeat)           # upsmon's repeats, 5 and 10 minutes later
               for repeat in ("unreachable-2", "unreachable-3")]
    driver = [host.run("/usr/local/sbin/cabinet-ups-event --driver-down failed") for _ in range(2)]  # two plays
    upsmon_event("COMMOK", "restored")            # the end of the condition
    upsmon_event("NOCOMM", "unreachable-4")      # lost again: alerted at once

    def arrived(word: str) -> list[dict[str, str]]:
        return [m for m in standalone.mailsink.messages() if f"{token} {word}" in m["body"]]

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not (arrived("unreachable-1") and arrived("restored") and arrived("unreachable-4")):
        time.sleep(2)
    assert arrived("unreachable-1"), "the first NOCOMM was not mailed"
    assert arrived("restored"), "the end of the condition (COMMOK) was not mailed"
    assert arrived("unreachable-4"), "NOCOMM after COMMOK was not mailed at once"
    wait_mail_queue_empty(host)
    counts = {word: len(arrived(word)) for word in ("unreachable-1", "unreachable-2", "unreachable-3", "restored", "unreachable-4")}
    assert counts == {"unreachable-1": 1, "unreachable-2": 0, "unreachable-3": 0, "restored": 1, "unreachable-4": 1}, counts
    assert len(standalone.alerts("UPS driver")) == drivers_before + 1, "the dead driver was not mailed exactly once"
    assert all("logged, not mailed" in out for out in repeats), repeats
    verdicts = [(run.rc, (run.stdout.strip().splitlines() or [""])[-1]) for run in driver]
    assert verdicts == [(0, "alerted"), (0, "repeat")], f"the role's driver check would report: {verdicts}"
    host.check_output("rm -f /var/lib/cabinet-ups/events.json")


# ----------------------------------------------------------------------------- lab: server and client
@pytest.fixture()
def pair(ups, expect, inventory):
    """A netclient (this host) and the netserver it follows, both reset afterwards."""
    if expect("ups_monitoring_mode") != "netclient":
        not_applicable("the netserver/netclient pair is driven from the client")
    server_name = expect("ups_monitoring_server")
    names = [n for n in inventory.hosts("ups_server")
             if n == server_name or inventory.vars(n).get("ansible_host") == server_name]
    if not names:
        pytest.skip(f"the server {server_name} is not in this inventory")
    server = connect(inventory, names[0])
    server.inventory_name = names[0]
    server_vars = inventory.vars(names[0])
    server_expect = lambda name: inventory.template(names[0], server_vars[name]) if name in server_vars else expect(name)  # noqa: E731
    shorten_stop_timeout(server)
    server_ups = Ups(server, server_expect, ups.mailsink)
    server_ups.reset()
    ups.reset()
    yield ups, server_ups
    server_ups.reset()
    ups.reset()


def _upsd_session(client, server: str, port: int, lines: list[str]) -> list[str]:
    script = (
        "import socket, sys\n"
        f"s = socket.create_connection(({server!r}, {port}), timeout=10)\n"
        "f = s.makefile('rw')\n"
        "for line in sys.stdin.read().splitlines():\n"
        "    f.write(line + '\\n'); f.flush(); print(f.readline().strip())\n"
    )
    result = client.run(f"printf %s {shlex.quote(chr(10).join(lines))} | python3 -c {shlex.quote(script)}")
    assert result.rc == 0, result.stderr
    return result.stdout.splitlines()


def test_client_is_served_and_wrong_credentials_are_refused(pair, expect):
    client, server = pair
    assert client.status() == "OL"
    name, port = expect("ups_monitoring_ups_name"), expect("ups_monitoring_listen_port")
    user, password = expect("ups_monitoring_secondary_user"), expect("ups_monitoring_secondary_password")
    host = expect("ups_monitoring_server")
    wrong = _upsd_session(client.host, host, port, [f"USERNAME {user}", "PASSWORD not-the-password", f"LOGIN {name}"])
    assert wrong[-1] == "ERR ACCESS-DENIED", wrong
    right = _upsd_session(client.host, host, port, [f"USERNAME {user}", f"PASSWORD {password}", f"LOGIN {name}"])
    assert right[-1] == "OK", right
    # The clients' account cannot order a forced shutdown.
    fsd = _upsd_session(client.host, host, port, [f"USERNAME {user}", f"PASSWORD {password}", f"FSD {name}"])
    assert fsd[-1] == "ERR ACCESS-DENIED", fsd


def test_forced_shutdown_stops_the_client_before_the_server(pair):
    client, server = pair
    client_fsd = len(client.alerts("UPS forced shutdown"))
    server.host.check_output("upsmon -c fsd")
    server_down = server.wait_shutdown(timeout=90)
    client_down = client.wait_shutdown(timeout=5)
    assert client_down < server_down, "the server shut down before its client"
    client.wait_alert("UPS forced shutdown", client_fsd)
