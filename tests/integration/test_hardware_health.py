"""Hardware health: disks (smartd), software RAID (mdadm), space and inodes, memory errors, the contract.

Audit checks (every host of cabinet_managed) read the last check's findings, which
``cabinet-hardware check`` writes every few minutes, and the configuration smartd and mdadm read.
Lab checks (``lab`` fixture) fill a small file system past the thresholds and drive the hooks of
smartd and mdadm with what those daemons pass them; each alert must reach the lab's mail sink.
What only real hardware proves (a disk that really fails its self-test, a mirror that really
degrades) is listed in roles/hardware_health/README.md.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
import time

import pytest

from conftest import not_applicable, run_unit, wait_mail_queue_empty

ROLE = "hardware_health"
AUDITED_GROUP = "cabinet_managed"
COMMAND = "/usr/local/sbin/cabinet-hardware"
STATE = "/var/lib/cabinet/hardware"
SMARTD_HOOK = "/usr/local/lib/cabinet/hardware-smartd-hook"
MDADM_HOOK = "/usr/local/lib/cabinet/hardware-mdadm-hook"
CHECK_UNIT = "cabinet-hardware-check.service"
LAB_MOUNT = "/srv/cabinet-data"


def status(host) -> dict:
    result = host.run(f"cat {STATE}/status.json")
    assert result.rc == 0, f"no findings: the check never ran ({result.stderr.strip()})"
    return json.loads(result.stdout)


# ----------------------------------------------------------------------------- audit
def test_smartd_configuration_is_accepted_by_smartd(host, expect):
    assert host.package("smartmontools").is_installed
    conf = host.file("/etc/smartd.conf").content_string
    lines = [line for line in conf.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert lines and lines[-1].startswith("DEVICESCAN "), "smartd.conf must end by scanning for every disk"
    # Every disk line (smartd reads nothing after DEVICESCAN) alerts through the hook, never by mail.
    for line in lines:
        words = line.split()
        assert "exec" in words, f"a disk line without the alert hook: {line!r}"
        at = words.index("exec")
        assert words[at - 1:at + 2] == ["-M", "exec", SMARTD_HOOK], line
        assert words[words.index("-m") + 1] == "<nomailer>", f"smartd must not mail on its own: {line!r}"
        assert words[words.index("-s") + 1] == expect("hardware_health_smart_schedule"), line
        for directive in ("-a", "-C", "-U", "-R", "-W"):
            assert directive in words, f"{directive} missing from {line!r}"
    # smartd parses the file as it would at start: 1, 2, 5, 6 are command line and file errors.
    checked = host.run("smartd -q showtests -c /etc/smartd.conf")
    assert checked.rc not in (1, 2, 5, 6), checked.stdout + checked.stderr


def test_smartd_watches_the_disks_where_the_machine_has_some(host, evidence):
    # The machine says whether it is a guest, not the role's settings: hardware_health_smart:
    # never on bare metal must fail here.
    virt = host.run("systemd-detect-virt").stdout.strip() or "none"
    evidence("Surveillance SMART des disques", "active" if virt == "none" else f"sans objet ({virt} : pas de disque propre)")
    if virt != "none":
        not_applicable(f"SMART: a {virt} guest has no disks of its own")
    service = host.service("smartmontools.service")
    assert service.is_enabled and service.is_running


def test_mdadm_reports_through_cabinet_alert_where_arrays_exist(host, inventory):
    arrays = status(host)["raid"].get("arrays", [])
    conf = host.file("/etc/mdadm/mdadm.conf")
    lines = conf.content_string.splitlines() if conf.exists else []
    configured = f"PROGRAM {MDADM_HOOK}" in lines
    # mdadm installed without arrays (Debian's installer may add it) is left alone by the role.
    if not arrays and not configured:
        not_applicable("no software RAID array on this machine")
    assert configured, f"arrays {[a['name'] for a in arrays]} but mdadm's events do not reach cabinet-alert"
    assert not [line for line in lines if line.startswith("MAILADDR")], "mdadm still mails on its own"
    # mdadm reads the file as its daily reminder does: on a lab machine only, since on a client's
    # it would mail a NewArray or DegradedArray reminder.
    if inventory.vars(host.inventory_name).get("cabinet_lab", False):
        checked = host.run("mdadm --monitor --scan --oneshot")
        assert checked.rc == 0 and "nknown keyword" not in checked.stderr, checked.stderr
    if arrays:
        assert host.service("mdmonitor.service").is_running


def test_the_check_runs_on_a_timer_and_ran_recently(host, expect):
    timer = host.service("cabinet-hardware-check.timer")
    assert timer.is_enabled and timer.is_running
    checked = dt.datetime.fromisoformat(status(host)["checked_at"].replace("Z", "+00:00"))
    age = (dt.datetime.now(dt.timezone.utc) - checked).total_seconds()
    limit = expect("hardware_health_check_interval_minutes") * 60 * 2 + 600
    assert age < limit, f"the last check is {age / 60:.0f} min old (every {expect('hardware_health_check_interval_minutes')} min)"
    errors = status(host).get("errors", [])
    assert not errors, f"parts of the check fail: {errors}"


def test_no_file_system_is_full(host, evidence):
    rows = status(host)["filesystems"]
    assert rows, "no local file system was checked"
    for row in rows:
        evidence(f"Espace {row['mount']}", f"{row['used_percent']} % utilisés, {row['free_gib']} Gio libres, "
                 f"inodes {row['inodes_percent']} %")
    critical = [f"{r['mount']} ({kind} {r[kind]})" for r in rows for kind in ("space", "inodes") if r[kind] == "critical"]
    assert not critical, f"file systems at the critical level: {critical}"


def test_no_raid_array_is_degraded(host):
    raid = status(host)["raid"]
    if not raid.get("arrays"):
        not_applicable(raid.get("reason") or "no software RAID array")
    degraded = [a["name"] for a in raid["arrays"] if a["degraded"]]
    assert not degraded, f"degraded arrays: {degraded}"


def test_memory_errors_are_watched_where_the_hardware_reports_them(host, evidence):
    memory = status(host)["memory"]
    if not memory["reported"]:
        evidence("Erreurs mémoire (EDAC)", "non signalées par ce matériel")
        not_applicable(memory["reason"])
    evidence("Erreurs mémoire (EDAC)", f"{memory['corrected']} corrigées, {memory['uncorrected']} non corrigibles")
    assert memory["uncorrected"] == 0, f"{memory['uncorrected']} uncorrectable memory errors"


def test_maintenance_contract_on_record_and_running(host, evidence, inventory):
    if host.inventory_name in inventory.group("backup_offsite"):
        not_applicable("the MSP's own off-site server: its upkeep is the MSP's, not the practice's contract")
    contract = status(host)["contract"]
    machine = contract["machine"]
    evidence("Machine", " ".join(v for v in (machine.get("vendor"), machine.get("model"), machine.get("serial")) if v) or "non renseignée")
    if contract.get("age_years") is not None:
        evidence("Âge de la machine", f"{contract['age_years']} ans (achat {machine['purchase_date']})")
    warranty = contract.get("warranty_end")
    evidence("Garantie constructeur", f"jusqu'au {warranty['date']} ({warranty['days_left']} jours)" if warranty else "non renseignée")
    end = contract.get("contract_end")
    evidence("Contrat de maintenance", f"{machine.get('contract_provider') or '?'}, jusqu'au {end['date']} ({end['days_left']} jours)"
             if end else "aucun enregistré")
    assert end, "no maintenance contract on record (hardware_health_contract_end): the practice asks for one"
    assert end["days_left"] >= 0, f"the maintenance contract ended on {end['date']}"


# ----------------------------------------------------------------------------- lab
@pytest.fixture()
def lab_host(lab, mailsink):
    lab.mail_host = lab.check_output("postconf -h myhostname")
    lab.sink = mailsink
    return lab


def alerts(host, text: str) -> list[dict[str, str]]:
    return host.sink.alerts(host.mail_host, ROLE, text)


def check_now(host) -> None:
    assert run_unit(host, CHECK_UNIT, timeout=120) == "success"


def test_contract_ending_within_the_notice_reaches_the_msp(lab_host, expect):
    end = expect("hardware_health_contract_end")
    days = (dt.date.fromisoformat(str(end)) - dt.date.today()).days
    if not 0 <= days <= expect("hardware_health_notice_days"):
        not_applicable(f"the contract ends in {days} days, outside the notice")
    # Forget what was mailed, so this check proves the alert itself, not the converge's.
    before = len(alerts(lab_host, "Maintenance contract"))
    lab_host.check_output(f"rm -f {STATE}/alerts.json")
    check_now(lab_host)
    mail = lab_host.sink.wait_alert(lab_host.mail_host, ROLE, "Maintenance contract", before)
    assert f"ends in {days} days ({end})" in mail["Subject"], mail["Subject"]
    assert expect("hardware_health_contract_reference") in mail["Subject"]
    assert mail["X-Cabinet-Severity"] == "warning"
    # Once a week, not at every check.
    check_now(lab_host)
    wait_mail_queue_empty(lab_host)
    assert len(alerts(lab_host, "Maintenance contract")) == before + 1


@pytest.fixture()
def small_disk(lab_host, inventory):
    """The lab's small ext4 file system, mounted on LAB_MOUNT (a key path) and emptied.

    Only a disk the scenario gives for this (lab_space_test_disk: its label) is filled: the
    demo's loop disk is its backup disk, which no test may fill."""
    label = inventory.vars(lab_host.inventory_name).get("lab_space_test_disk")
    if not label:
        not_applicable("no lab disk to fill on this host (lab_space_test_disk)")
    lab_host.check_output(f"mkdir -p {LAB_MOUNT} && (mountpoint -q {LAB_MOUNT} || mount LABEL={label} {LAB_MOUNT})")
    lab_host.check_output(f"rm -rf {LAB_MOUNT}/fill {LAB_MOUNT}/many && rm -f {STATE}/alerts.json")
    check_now(lab_host)
    yield lab_host
    lab_host.check_output(f"rm -rf {LAB_MOUNT}/fill {LAB_MOUNT}/many")
    check_now(lab_host)
    lab_host.check_output(f"umount {LAB_MOUNT}")


def fill_to(host, percent: float) -> None:
    """Grow LAB_MOUNT/fill until df's used percentage reaches ``percent``."""
    script = (
        "import os, sys\n"
        f"p = {LAB_MOUNT!r}; target = float(sys.argv[1])\n"
        "v = os.statvfs(p); used = v.f_blocks - v.f_bfree; usable = used + v.f_bavail\n"
        "need = int((target / 100 * usable - used) * v.f_frsize) + 4 * v.f_frsize\n"
        "if need > 0:\n"
        "    with open(os.path.join(p, 'fill'), 'ab') as f:\n"
        "        os.posix_fallocate(f.fileno(), os.fstat(f.fileno()).st_size, need)\n"
    )
    host.check_output(f"python3 -c {shlex.quote(script)} {percent}")


def test_space_warning_then_critical_then_cleared(small_disk, expect):
    host = small_disk
    warning, critical = expect("hardware_health_space_warning_percent"), expect("hardware_health_space_critical_percent")
    counts = {word: len(alerts(host, f"Disk space {word} on {LAB_MOUNT}")) for word in ("warning", "critical")}
    normal = len(alerts(host, f"Disk space back to normal on {LAB_MOUNT}"))

    fill_to(host, (warning + critical) / 2)
    check_now(host)
    mail = host.sink.wait_alert(host.mail_host, ROLE, f"Disk space warning on {LAB_MOUNT}", counts["warning"])
    assert mail["X-Cabinet-Severity"] == "warning"
    assert "données du logiciel métier" in mail["body"], "the alert must name what the file system holds"

    fill_to(host, min(99.5, critical + 2))
    check_now(host)
    mail = host.sink.wait_alert(host.mail_host, ROLE, f"Disk space critical on {LAB_MOUNT}", counts["critical"])
    assert mail["X-Cabinet-Severity"] == "critical"

    # Still full at the next check: not mailed again within hardware_health_realert_hours.
    check_now(host)
    wait_mail_queue_empty(host)
    assert len(alerts(host, f"Disk space critical on {LAB_MOUNT}")) == counts["critical"] + 1
    assert len(alerts(host, f"Disk space warning on {LAB_MOUNT}")) == counts["warning"] + 1

    host.check_output(f"rm -f {LAB_MOUNT}/fill")
    check_now(host)
    host.sink.wait_alert(host.mail_host, ROLE, f"Disk space back to normal on {LAB_MOUNT}", normal)
    row = next(r for r in status(host)["filesystems"] if r["mount"] == LAB_MOUNT)
    assert row["space"] == "ok"


def test_inode_exhaustion_alerts_and_clears(small_disk, expect):
    host = small_disk
    warning, critical = expect("hardware_health_inode_warning_percent"), expect("hardware_health_inode_critical_percent")
    counts = {word: len(alerts(host, f"Inodes {word} on {LAB_MOUNT}")) for word in ("warning", "critical")}
    normal = len(alerts(host, f"Inodes back to normal on {LAB_MOUNT}"))
    script = (
        "import os, sys\n"
        f"p = {LAB_MOUNT!r}; d = os.path.join(p, 'many'); os.makedirs(d, exist_ok=True)\n"
        "v = os.statvfs(p); need = int(float(sys.argv[1]) / 100 * v.f_files) - (v.f_files - v.f_ffree) + 2\n"
        "start = len(os.listdir(d))\n"
        "for i in range(start, start + max(0, need)):\n"
        "    open(os.path.join(d, str(i)), 'w').close()\n"
    )
    for target, word in (((warning + critical) / 2, "warning"), (min(99.5, critical + 2), "critical")):
        host.check_output(f"python3 -c {shlex.quote(script)} {target}")
        check_now(host)
        mail = host.sink.wait_alert(host.mail_host, ROLE, f"Inodes {word} on {LAB_MOUNT}", counts[word])
        assert mail["X-Cabinet-Severity"] == word
    host.check_output(f"rm -rf {LAB_MOUNT}/many")
    check_now(host)
    host.sink.wait_alert(host.mail_host, ROLE, f"Inodes back to normal on {LAB_MOUNT}", normal)


def test_smartd_hook_alerts_once_with_model_and_serial(lab_host):
    """The hook runs as smartd runs it (-M exec): SMARTD_* in the environment, the message on stdin."""
    token = f"LAB{time.time_ns()}"
    env = {
        "SMARTD_DEVICE": "/dev/sdz", "SMARTD_DEVICETYPE": "sat", "SMARTD_DEVICESTRING": "/dev/sdz [SAT]",
        "SMARTD_FAILTYPE": "CurrentPendingSector",
        "SMARTD_MESSAGE": "Device: /dev/sdz [SAT], 8 Currently unreadable (pending) sectors",
        "SMARTD_FULLMESSAGE": "This message was generated by the smartd daemon running on the lab.",
        "SMARTD_DEVICEINFO": f"WDC WD20EFRX-68EUZN0, S/N:{token}, WWN:5-0014ee-2b6d2c3f1, FW:82.00A82, 2.00 TB",
        "SMARTD_TFIRST": "Mon Dec  7 02:00:00 2026 CET", "SMARTD_ADDRESS": "", "SMARTD_MAILER": SMARTD_HOOK,
    }
    command = "env " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + f" {SMARTD_HOOK} < /dev/null"
    first, second = lab_host.run(command), lab_host.run(command)
    assert first.rc == 0 and "alerted" in first.stdout, first.stdout + first.stderr
    assert second.rc == 0 and "repeat" in second.stdout, second.stdout + second.stderr
    mail = lab_host.sink.wait_alert(lab_host.mail_host, ROLE, token)
    assert "WDC WD20EFRX-68EUZN0" in mail["Subject"] and token in mail["Subject"], mail["Subject"]
    assert mail["X-Cabinet-Severity"] == "critical"
    assert "8 Currently unreadable (pending) sectors" in mail["body"]
    wait_mail_queue_empty(lab_host)
    assert len(alerts(lab_host, token)) == 1, "smartd's repeat within the period was mailed again"


def test_mdadm_hook_reports_a_failed_mirror_and_its_recovery(lab_host):
    """The hook runs as mdadm --monitor runs PROGRAM: EVENT MD-DEVICE [COMPONENT]."""
    array = f"/dev/md{time.time_ns() % 100000}"
    failed = lab_host.run(f"{MDADM_HOOK} Fail {array} /dev/loop7")
    assert failed.rc == 0 and "alerted" in failed.stdout, failed.stdout + failed.stderr
    mail = lab_host.sink.wait_alert(lab_host.mail_host, ROLE, f"RAID {array}: disk /dev/loop7 failed")
    assert mail["X-Cabinet-Severity"] == "critical"
    # The daily reminder of the same degradation (mdadm --oneshot) is a repeat, not a new mail.
    reminder = lab_host.run(f"{MDADM_HOOK} DegradedArray {array}")
    assert reminder.rc == 0 and "repeat" in reminder.stdout, reminder.stdout
    # A rebuild's progress is logged, not mailed.
    progress = lab_host.run(f"{MDADM_HOOK} Rebuild20 {array}")
    assert progress.rc == 0 and "logged, not mailed" in progress.stdout, progress.stdout + progress.stderr
    rebuilt = lab_host.run(f"{MDADM_HOOK} RebuildFinished {array}")
    assert rebuilt.rc == 0 and "alerted" in rebuilt.stdout
    mail = lab_host.sink.wait_alert(lab_host.mail_host, ROLE, f"RAID {array} rebuilt")
    assert mail["X-Cabinet-Severity"] == "info"
    # Degraded again after the recovery: mailed at once.
    again = lab_host.run(f"{MDADM_HOOK} DegradedArray {array}")
    assert again.rc == 0 and "alerted" in again.stdout, again.stdout
    lab_host.sink.wait_alert(lab_host.mail_host, ROLE, f"RAID {array} degraded")
