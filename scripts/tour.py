#!/usr/bin/env python3
"""The guided tour make demo ends with: each step shows one practice at work on the demo.

    scripts/tour.py guide                          the guide make demo prints
    scripts/tour.py STEP [--inventory INVENTORY]   one step (make demo-STEP)

Steps: mail (what the MSP's mailbox received), power-cut and power-back (the simulated UPS),
virus (a test signature planted and quarantined), restore (a file from each backup copy).

They act on lab machines only, over the inventory's own connection (the demo's: SSH as
msp-admin with sudo): a host that the inventory does not call a lab host (cabinet_lab: true, or
a lab_image), or that is not itself one of the rig's podman containers (systemd-detect-virt), is
refused, so no step can plant a test virus or cut the power on a client's machine. Each
step's host is the first of its group that fits (ups_server, backup_clients, the antivirus
hosts), so the same commands run on a Molecule scenario's lab, which is how CI runs every
command of the guide (tests/demo/test_tour.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import email.utils
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))
os.environ.setdefault("ANSIBLE_HOST_PATTERN_MISMATCH", "ignore")  # a lab without ups_clients is fine

DEFAULT_INVENTORY = "build/inventories/demo/hosts.yml"
# The test signature the lab's ClamAV knows (lab_files: /var/lib/clamav/cabinet-test.ndb);
# written in pieces so that this file is not itself a detection.
MARKER = "-".join(["CABINET", "HARDENING", "TEST", "MARKER", "2026"])

GUIDE = """\
What to look at next (each command works on the demo as printed; make demo-clean removes it):

  1. The alerts the practice sent to the MSP (the demo's mail sink stands for the MSP's mailbox):
       make demo-mail
  2. A power cut on the simulated UPS: the on-battery alert, and upssched's early-shutdown timer
     (the machine would shut down after ups_monitoring_battery_shutdown_minutes on battery):
       make demo-power-cut
     then the mains back, which cancels the timer and tells the MSP:
       make demo-power-back
  3. A test virus planted in the patients' folder, found by the scheduled scan, quarantined,
     and the alert with it:
       make demo-virus
  4. A file restored from each backup copy, the local disk and the off-site server:
       make demo-restore
  5. The practice's website (a certificate of the demo's own: accept it once; refuse the banner in
     one click, find the legal pages and the rights form in the footer; from another machine,
     ssh -L 8443:127.0.0.1:8443 to this one first):
       https://www.cabinet-demo.localhost:8443/
     and its compliance report, for the practice (French) and the MSP:
       reports/index.html (the fleet page), reports/demo/<date-time>/rapport.html
"""


class Refused(SystemExit):
    pass


# ----------------------------------------------------------------------------- hosts
def lab_hosts(inventory, pattern: str) -> list[str]:
    """The hosts of ``pattern`` that the inventory calls lab machines; refuses the step on any
    other. handle() then asks the machine itself."""
    names = inventory.hosts(pattern)
    for name in names:
        variables = inventory.vars(name)
        if not (variables.get("cabinet_lab") is True or variables.get("lab_image")):
            raise Refused(f"{name} is not a lab machine (no cabinet_lab: true, no lab_image): the tour acts on labs only")
    return names


def handle(inventory, name: str, lab: bool = True):
    """A connection to ``name``; for a step that changes it, only if the machine itself is one of
    the rig's podman containers: an inventory copied from the demo's, or mislabelled, must not
    make the tour plant a test virus or cut the power on a practice's machine."""
    import conftest  # noqa: PLC0415 - tests/integration's connection machinery

    host = conftest.connect(inventory, name)
    problem = conftest.reachable(host, name)
    if problem:
        raise SystemExit(f"{name} cannot be reached: {problem}")
    if lab:
        virt = host.run("systemd-detect-virt --container").stdout.strip()
        if virt != "podman":
            raise Refused(f"{name} is not a lab machine: not one of the rig's podman containers ({virt or 'none'}); "
                          "the tour acts on labs only")
    return host


def sink(inventory):
    import conftest  # noqa: PLC0415

    names = inventory.group(conftest.LAB_MAILSINK_GROUP)
    if not names:
        raise SystemExit(f"this lab has no mail sink (group {conftest.LAB_MAILSINK_GROUP})")
    return conftest.MailSink(handle(inventory, names[0], lab=False))  # read only


def mail_host(host) -> str:
    return host.check_output("postconf -h myhostname").strip()


def say(text: str = "") -> None:
    print(text, flush=True)


def show_mail(message: dict) -> None:
    say(f"     {when(message)}  {message['X-Cabinet-Host'] or '-'}  [{message['X-Cabinet-Practice'] or '-'}, "
        f"{message['X-Cabinet-Severity'] or '-'}]  {message['Subject']}")


def when(message: dict) -> str:
    try:
        return email.utils.parsedate_to_datetime(message.get("Date", "")).astimezone().strftime("%d/%m %H:%M:%S")
    except (TypeError, ValueError):
        return "--/-- --:--:--"


def wait_alert(mailbox, host: str, practice: str, text: str, before: int, timeout: float = 120) -> dict:
    message = mailbox.wait_alert(host, practice, text, before, timeout)
    show_mail(message)
    return message


# ----------------------------------------------------------------------------- steps
PROBE = re.compile(r"\bprobe-[0-9a-f]{12}\b")


def step_mail(inventory, args) -> int:
    everything = sink(inventory).messages()
    # The audit proves each alert path with a message of its own ("... probe-<hex>"): not news.
    messages = [m for m in everything if not PROBE.search(m["Subject"])]
    probes = len(everything) - len(messages)
    say(f"==> {len(messages)} alert(s) in the MSP's mailbox (the lab's mail sink), oldest first:")
    for message in messages[-args.last:] if args.last else messages:
        show_mail(message)
    if args.last and len(messages) > args.last:
        say(f"     ... and {len(messages) - args.last} older (make demo-mail LAST=0 shows all)")
    if probes:
        say(f"    (and {probes} test message(s) the audit sent to prove each alert path, not shown)")
    return 0


def ups_host(inventory):
    """The first lab host that drives the simulated UPS itself (dummy-ups, standalone or netserver)."""
    for name in lab_hosts(inventory, "ups_server:ups_clients"):
        variables = inventory.vars(name)
        if variables.get("ups_monitoring_driver") == "dummy-ups" and \
                variables.get("ups_monitoring_mode", "standalone") in ("standalone", "netserver"):
            return name, variables
    raise SystemExit("no lab host with the simulated UPS (ups_monitoring_driver: dummy-ups) in this inventory")


def set_ups(host, device: str, status: str, charge: int) -> None:
    if not device.startswith("/"):
        raise SystemExit(f"ups_monitoring_port: expected the absolute path of dummy-ups' state file, got {device!r}")
    content = f"ups.status: {status}\nbattery.charge: {charge}\nbattery.runtime: {charge * 18}\n"
    device = shlex.quote(device)
    # 0644 whatever the session's umask (sudo over SSH gave 0600): the driver runs as nut.
    host.check_output(f"umask 022 && printf %s {shlex.quote(content)} > {device}.tmp && mv {device}.tmp {device}")


def step_power(inventory, args, cut: bool) -> int:
    name, variables = ups_host(inventory)
    host = handle(inventory, name)
    mailbox = sink(inventory)
    sender = mail_host(host)
    device = variables.get("ups_monitoring_port", "")
    title = "UPS on battery" if cut else "UPS back on mains power"
    before = len([m for m in mailbox.alerts(sender, "ups_monitoring", title) if title in m["Subject"]])
    if cut:
        # An on-battery alert is mailed once per ups_monitoring_realert_hours (no flood when the
        # mains flickers); the lab forgets the earlier ones so that this cut is mailed as a first.
        host.check_output("rm -f /var/lib/cabinet-ups/events.json")
        say(f"==> Cutting the mains on {name}'s simulated UPS (on battery, 90 %)")
        set_ups(host, device, "OB", 90)
    else:
        say(f"==> Mains power back on {name}'s simulated UPS")
        set_ups(host, device, "OL", 100)
    say("    the MSP's mailbox receives:")
    wait_alert(mailbox, sender, "ups_monitoring", title, before)
    upssched = host.run("pgrep -a upssched").stdout.strip()
    if cut:
        timer = host.run("grep -E '^AT ONBATT' /etc/nut/upssched.conf").stdout.strip()
        say(f"    upssched's early-shutdown timer ({timer or 'none configured'}):")
        say(f"     {upssched or 'not running'}")
        if not upssched and timer:
            raise SystemExit("upssched did not start its timer")
        say("    leave it on battery and the machine shuts down when the timer ends; make demo-power-back cancels it")
    else:
        deadline = time.monotonic() + 30
        while upssched and time.monotonic() < deadline:
            time.sleep(1)
            upssched = host.run("pgrep -a upssched").stdout.strip()
        say(f"    upssched: {'timer cancelled, no shutdown' if not upssched else 'still running: ' + upssched}")
        if upssched:
            raise SystemExit("the early-shutdown timer was not cancelled")
    return 0


def av_host(inventory):
    for name in lab_hosts(inventory, "cabinet_managed:!backup_offsite"):
        variables = inventory.vars(name)
        if variables.get("antivirus_enabled", True) and variables.get("lab_files"):
            if any(f.get("path", "").endswith("cabinet-test.ndb") for f in variables["lab_files"]):
                return name, variables
    raise SystemExit("no lab host knows the test signature (lab_files: /var/lib/clamav/cabinet-test.ndb)")


def step_virus(inventory, args) -> int:
    import conftest  # noqa: PLC0415

    name, _ = av_host(inventory)
    host = handle(inventory, name)
    scan_paths = conftest.role_defaults("antivirus")["antivirus_scan_paths"]
    scan_paths = inventory.vars(name).get("antivirus_scan_paths", scan_paths)
    quarantine = inventory.vars(name).get("antivirus_quarantine_dir",
                                          conftest.role_defaults("antivirus")["antivirus_quarantine_dir"]).rstrip("/")
    folder = scan_paths[0].rstrip("/")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    # A folder of a name no one could guess beforehand, a file written with noclobber: a user of
    # the scanned folder cannot make root write through a link planted there.
    made = host.check_output(f"mktemp -d {shlex.quote(folder + '/tour-' + stamp)}-XXXXXX").strip()
    if not made.startswith(folder + "/tour-"):
        raise SystemExit(f"mktemp gave {made!r}")
    path = f"{made}/piece-jointe-{stamp}.pdf"
    mailbox = sink(inventory)
    sender = mail_host(host)
    before = len(mailbox.alerts(sender, "antivirus", path))
    say(f"==> Planting the lab's test signature in {path} on {name}")
    host.check_output(f"set -C && printf '%s\\n' {shlex.quote('%PDF-1.4 tour ' + stamp)} {shlex.quote(MARKER)} "
                      f"> {shlex.quote(path)}")
    say("==> Running the scheduled scan now, as its timer would (cabinet-av-scan.service)")
    result = conftest.run_unit(host, "cabinet-av-scan.service", timeout=600)
    say(f"    scan: {result}")
    if host.file(path).exists:
        raise SystemExit(f"{path} is still there: not quarantined")
    listing = host.check_output(f"find {shlex.quote(quarantine)} -type f -name {shlex.quote('*' + path.rsplit('/', 1)[1] + '*')} "
                                "-printf '%TH:%TM  %m %u  %p\\n'")
    if not listing.strip():
        raise SystemExit(f"{path} is gone but not in the quarantine {quarantine}")
    say(f"    {path} is gone; the quarantine ({quarantine}, root only) now holds it and its record:")
    for line in listing.splitlines():
        say(f"     {line}")
    say("    the MSP's mailbox receives:")
    wait_alert(mailbox, sender, "antivirus", path, before, timeout=180)
    host.run(f"rmdir {shlex.quote(path.rsplit('/', 1)[0])}")
    return 0


def pick_file(host, repo: str, archive: str) -> tuple[str, str]:
    """A small regular file of the archive, and its SHA-256 as the archive records it."""
    listing = host.check_output(f"cabinet-backup borg {repo} list ::{shlex.quote(archive)} "
                                "--format '{type} {size} {sha256} {path}{NL}'")
    files = []
    for line in listing.splitlines():
        parts = line.split(" ", 3)
        if len(parts) == 4 and parts[0] == "-" and parts[1].isdigit() and 0 < int(parts[1]) <= 1_000_000:
            files.append((parts[3].count("/"), parts[3], parts[2]))
    if not files:
        raise SystemExit(f"no regular file in {repo}::{archive}")
    _, path, digest = min(files)
    return path, digest


def step_restore(inventory, args) -> int:
    names = lab_hosts(inventory, "backup_clients")
    if not names:
        raise SystemExit("no backup client in this inventory")
    name = names[0]
    host = handle(inventory, name)
    target = host.check_output("umask 077 && mktemp -d /root/restauration.XXXXXX").strip()
    try:
        settings = json.loads(host.file("/etc/cabinet/backup.json").content_string)
        for repo in [r["name"] for r in settings["repositories"]]:
            latest = host.run(f"cabinet-backup borg {repo} list --last 1 --format '{{archive}}'")
            archive = latest.stdout.strip()
            if latest.rc != 0 or not archive:
                raise SystemExit(f"{name}: no archive in the {repo} copy yet: {latest.stderr.strip()[-300:]}")
            wanted, digest = pick_file(host, repo, archive)
            command = f"cd {target}/{repo} && cabinet-backup borg {repo} extract ::{shlex.quote(archive)} {shlex.quote(wanted)}"
            say(f"==> From the {repo} copy, on {name}:")
            say(f"    mkdir {target}/{repo} && {command}")
            host.check_output(f"mkdir {target}/{repo} && {command}")
            restored = host.check_output(f"sha256sum {shlex.quote(f'{target}/{repo}/{wanted}')}").split()[0]
            if restored != digest:
                raise SystemExit(f"/{wanted} restored from {repo} does not match the archive's SHA-256")
            live = host.run(f"sha256sum {shlex.quote('/' + wanted)}").stdout.split()[:1]
            now = "the same as the live file" if live == [restored] else "the live file has changed since"
            say(f"    restored /{wanted} from {archive}: SHA-256 as archived ({now})")
    finally:
        host.run(f"rm -rf -- {target}")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=["guide", "mail", "power-cut", "power-back", "virus", "restore"])
    parser.add_argument("--inventory", default=DEFAULT_INVENTORY)
    parser.add_argument("--last", type=int, default=20, help="mail: the newest N messages (0: all)")
    args = parser.parse_args(argv)
    if args.step == "guide":
        print(GUIDE, end="")
        return 0
    if not Path(args.inventory).exists():
        raise SystemExit(f"{args.inventory}: no such inventory (make demo writes the demo's)")
    import conftest  # noqa: PLC0415

    inventory = conftest.Inventory(args.inventory)
    steps = {"mail": step_mail, "power-cut": lambda i, a: step_power(i, a, True),
             "power-back": lambda i, a: step_power(i, a, False), "virus": step_virus, "restore": step_restore}
    return steps[args.step](inventory, args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
