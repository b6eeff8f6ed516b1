"""Antivirus: clamd answers, signatures are fresh, scans find, quarantine and alert.

Audit checks read expectations from the inventory. Lab checks (``lab`` fixture) need a
signature that detects the harmless marker below: molecule/antivirus installs one
(Cabinet.Test.Marker, an .ndb body signature), since the public mirrors are out of reach.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import time
import uuid

import pytest

from conftest import not_applicable, run_unit, stamp, wait_mail_queue_empty

ROLE = "antivirus"
AUDITED_GROUP = "cabinet_managed:!backup_offsite"
SIGNATURE = "Cabinet.Test.Marker.UNOFFICIAL"
# Assembled at run time, so this file itself never carries the marker.
MARKER = "-".join(["CABINET", "HARDENING", "TEST", "MARKER", "2026"])


def in_container(host) -> bool:
    return host.run("systemd-detect-virt --container").rc == 0


def settings(host) -> dict:
    return json.loads(host.file("/etc/cabinet/antivirus.json").content_string)


# ----------------------------------------------------------------------------- audit
def test_clamav_installed(host):
    for package in ("clamav", "clamav-daemon", "clamav-freshclam", "clamdscan"):
        assert host.package(package).is_installed, package


def test_clamd_answers_on_its_local_socket(host):
    assert host.service("clamav-daemon.socket").is_enabled
    ping = host.run("clamdscan --ping 3:2")
    assert ping.rc == 0, f"clamd does not answer: {ping.stdout}{ping.stderr}"
    conf = host.file("/etc/clamav/clamd.conf").content_string
    assert re.search(r"^LocalSocket /run/clamav/clamd.ctl$", conf, re.M)
    assert not re.search(r"^TCPSocket", conf, re.M), "clamd must not listen on the network"


def test_ordinary_users_cannot_talk_to_clamd(host):
    """Issue #12 item 11: an ordinary user must not send clamd commands (SCAN any path,
    SHUTDOWN, RELOAD). Root (scans, clamonacc) and the clamav group (freshclam's reload
    notice) still can."""
    sock = host.file("/run/clamav/clamd.ctl")
    assert sock.is_socket
    assert (sock.user, sock.group, sock.mode & 0o777) == ("clamav", "clamav", 0o660), \
        f"{sock.user}:{sock.group} {sock.mode:o}"
    ping = ("import socket\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "try:\n"
            "    s.connect('/run/clamav/clamd.ctl'); s.sendall(b'zPING\\0'); print(s.recv(64))\n"
            "except PermissionError as exc:\n"
            "    print('refused', exc)\n")
    as_nobody = host.run("runuser -u nobody -- python3 -c %s", ping)
    assert "refused" in as_nobody.stdout and "PONG" not in as_nobody.stdout, as_nobody.stdout + as_nobody.stderr
    assert host.run("runuser -u nobody -- clamdscan --ping 1").rc != 0
    assert "PONG" in host.check_output("runuser -u clamav -- python3 -c %s", ping)
    assert "PONG" in host.check_output("python3 -c %s", ping)


def test_clamd_memory_settings_follow_the_host_s_ram(host, expect):
    """Item 11: concurrent reload (and freshclam's test load) only where the RAM allows it."""
    memtotal_mb = int(host.check_output("awk '/^MemTotal:/ {print $2}' /proc/meminfo")) // 1024
    concurrent = memtotal_mb >= expect("antivirus_concurrent_reload_min_memory_mb")
    clamd = host.file("/etc/clamav/clamd.conf").content_string
    freshclam = host.file("/etc/clamav/freshclam.conf").content_string
    want = "yes" if concurrent else "no"
    assert re.findall(r"^ConcurrentDatabaseReload (\S+)$", clamd, re.M) == [want], f"{memtotal_mb} MB"
    assert re.findall(r"^TestDatabases (\S+)$", freshclam, re.M) == [want], f"{memtotal_mb} MB"
    assert host.run("clamdscan --ping 3:2").rc == 0, "clamd does not run with these settings"


def test_config_validation_refuses_what_clamconf_cannot_parse(host):
    """Item 11: the role's validate: command (clamconf exits 0 on a parse error: this does not)."""
    folder = host.check_output("mktemp -d")
    try:
        host.check_output(f"cp /etc/clamav/clamd.conf {folder}/good && cp {folder}/good {folder}/bad"
                          f" && echo 'NoSuchClamdOption yes' >> {folder}/bad"
                          f" && printf 'Checks\\n' > {folder}/badfresh")
        assert host.run(f"/usr/local/sbin/cabinet-av validate-config clamd {folder}/good").rc == 0
        bad = host.run(f"/usr/local/sbin/cabinet-av validate-config clamd {folder}/bad")
        assert bad.rc == 1 and "NoSuchClamdOption" in bad.stderr, bad.stdout + bad.stderr
        assert host.run("/usr/local/sbin/cabinet-av validate-config freshclam /etc/clamav/freshclam.conf").rc == 0
        assert host.run(f"/usr/local/sbin/cabinet-av validate-config freshclam {folder}/badfresh").rc == 1
    finally:
        host.run(f"rm -rf {folder}")


def test_freshclam_updates_from_the_configured_mirrors(host, expect):
    service = host.service("clamav-freshclam.service")
    assert service.is_enabled and service.is_running
    conf = host.file("/etc/clamav/freshclam.conf").content_string
    mirrors = expect("antivirus_private_mirrors")
    if mirrors:
        assert re.findall(r"^PrivateMirror (\S+)$", conf, re.M) == mirrors
    else:
        assert re.search(r"^DatabaseMirror database.clamav.net$", conf, re.M)
    assert re.search(rf"^Checks {expect('antivirus_freshclam_checks_per_day')}$", conf, re.M)


OFFICIAL_DATABASE = re.compile(r"^(main|daily|bytecode)\.(cvd|cld)$")


def test_signatures_are_fresh(host, expect, inventory, evidence):
    """The databases freshclam manages (main, daily, bytecode) are younger than the threshold,
    by the health check's own verdict, which counts no local database (such as the lab's)."""
    verdict = json.loads(host.check_output("/usr/local/sbin/cabinet-av status"))["signatures"]
    on_disk = sorted(name for name in host.check_output(
        "find /var/lib/clamav -maxdepth 1 -type f -printf '%f\\n'").splitlines() if OFFICIAL_DATABASE.match(name))
    if on_disk:
        newest = host.check_output("stat -c %Y " + " ".join(f"/var/lib/clamav/{n}" for n in on_disk) + " | sort -n | tail -1")
        evidence("Signatures antivirus", f"mises à jour le {stamp(newest)} "
                 f"({(time.time() - float(newest)) / 3600:.0f} h ; limite {expect('antivirus_signature_max_age_hours')} h)")
    else:
        evidence("Signatures antivirus", "aucune base officielle sur la machine")
    assert verdict["databases"] == on_disk, "the check does not look at the databases freshclam manages"
    assert verdict["limit_hours"] == expect("antivirus_signature_max_age_hours")
    if not on_disk and inventory.vars(host.inventory_name).get("cabinet_lab", False):
        not_applicable("lab host without ClamAV's official databases (the mirrors are out of reach): nothing "
                    "here can be fresh; the check's verdict on them is proven by "
                    "test_the_lab_s_own_signature_does_not_count_as_fresh and the unit tests")
    assert on_disk, "no official signature database at all: freshclam never downloaded one"
    newest = float(host.check_output("stat -c %Y " + " ".join(f"/var/lib/clamav/{n}" for n in on_disk)
                                     + " | sort -n | tail -1"))
    age_hours = (time.time() - newest) / 3600
    assert verdict["fresh"] is True, f"the health check calls the signatures stale: {verdict}"
    assert age_hours <= expect("antivirus_signature_max_age_hours"), f"signatures are {age_hours:.0f} h old"


def test_quarantine_is_root_only_and_outside_scanned_folders(host, expect):
    qdir = expect("antivirus_quarantine_dir").rstrip("/")
    handle = host.file(qdir)
    assert handle.is_directory
    assert (handle.user, handle.group, handle.mode) == ("root", "root", 0o700)
    for path in expect("antivirus_scan_paths") + expect("antivirus_onaccess_paths"):
        base = path.rstrip("/")
        assert not (qdir + "/").startswith(base + "/") and not (base + "/").startswith(qdir + "/"), path
    conf = host.file("/etc/clamav/clamd.conf").content_string
    assert re.search(rf"^ExcludePath \^{re.escape(re.escape(qdir))}", conf, re.M), "clamd would scan the quarantine"


def test_scheduled_scan_timer(host, expect):
    timer = host.service("cabinet-av-scan.timer")
    if not expect("antivirus_scan_enabled"):
        assert not timer.is_enabled
        return
    assert timer.is_enabled and timer.is_running
    unit = host.check_output("systemctl cat cabinet-av-scan.timer")
    assert f"OnCalendar=*-*-* {expect('antivirus_scan_time')}:00" in unit
    assert settings(host)["scan_paths"] == expect("antivirus_scan_paths")


def test_health_check_and_quarantine_reports_are_armed(host):
    for unit in ("cabinet-av-check.timer", "cabinet-av-report.path"):
        handle = host.service(unit)
        assert handle.is_enabled and handle.is_running, unit


def test_on_access_scanning(host, expect):
    service = host.service("clamav-clamonacc.service")
    if in_container(host):
        # fanotify is not available in containers: the role skips clamonacc on purpose.
        assert not service.is_running
        assert settings(host)["onaccess"] is False
        return
    if not expect("antivirus_onaccess_enabled"):
        assert not service.is_running
        return
    assert service.is_enabled and service.is_running
    conf = host.file("/etc/clamav/clamd.conf").content_string
    assert re.findall(r"^OnAccessIncludePath (\S+)$", conf, re.M) == expect("antivirus_onaccess_paths")
    # clamonacc's own --move follows symlinks again after the scan: cabinet-av moves instead.
    command = host.check_output("systemctl show -p ExecStart --value clamav-clamonacc.service")
    assert "--fdpass" in command and "--move" not in command and "--remove" not in command, command


# ----------------------------------------------------------------------------- lab
def _settled(host, timeout: float = 180) -> None:
    """No report, scan or check runs and the queue is empty: a count taken now is final."""
    wait_mail_queue_empty(host, timeout,
                          ("cabinet-av-report.service", "cabinet-av-scan.service", "cabinet-av-check.service"))


def _write(host, path: str, content: str) -> str:
    host.check_output(f"mkdir -p {shlex.quote(path.rsplit('/', 1)[0])} && printf %s {shlex.quote(content)} > {shlex.quote(path)}")
    return hashlib.sha256(content.encode()).hexdigest()


@pytest.fixture()
def marked(lab, expect):
    """A scanned folder of this host, and the test signature loaded in clamd."""
    try:
        lab_files = [f["path"] for f in expect("lab_files")]
    except KeyError:
        lab_files = []
    found = lab.run(f"echo {shlex.quote(MARKER)} | clamdscan --fdpass --no-summary -")
    if not any(path.endswith(".ndb") for path in lab_files):
        pytest.skip("the inventory brings no signature for the lab marker (molecule/antivirus does)")
    # The lab installed the signature: clamd not detecting the marker is a failure, not a skip.
    assert SIGNATURE in found.stdout, f"clamd does not detect the lab marker: {found.stdout}{found.stderr}"
    folder = expect("antivirus_scan_paths")[0].rstrip("/")
    return lab, folder


def test_scheduled_scan_quarantines_the_infected_file_and_alerts(marked, expect, mailsink):
    host, folder = marked
    token = uuid.uuid4().hex[:8]
    infected = f"{folder}/dossier {token}/compte-rendu échographie {token}.pdf"
    clean = f"{folder}/dossier {token}/ordonnance {token}.txt"
    excluded = [p for p in expect("antivirus_exclude_paths") if p.startswith(folder)]
    infected_digest = _write(host, infected, f"%PDF-1.4 patient {token}\n{MARKER}\n")
    clean_digest = _write(host, clean, f"Ordonnance {token}: paracétamol 1 g\n")
    skipped = f"{excluded[0]}/ignored {token}.txt" if excluded else None
    if skipped:
        _write(host, skipped, f"{MARKER} {token}\n")
    mail_host = host.check_output("postconf -h myhostname")

    assert run_unit(host, "cabinet-av-scan.service", timeout=600) == "success"

    assert not host.file(infected).exists, "the infected file is still in its folder"
    assert host.file(clean).exists and host.file(clean).sha256sum == clean_digest, "the clean file was touched"
    if skipped:
        assert host.file(skipped).exists, "an excluded path was scanned"
    qdir = expect("antivirus_quarantine_dir").rstrip("/")
    records = [json.loads(host.file(p).content_string)
               for p in host.check_output(f"find {qdir} -name '*.json'").splitlines()]
    record = next(r for r in records if r["original_path"] == infected)
    assert record["signature"] == SIGNATURE
    moved = host.check_output(f"find {qdir} -type f -name '*-{record['sha256'][:12]}-*' ! -name '*.json'").splitlines()
    assert len(moved) == 1
    assert host.file(moved[0]).sha256sum == infected_digest == record["sha256"], "the quarantined content changed"
    assert host.file(moved[0]).mode == 0o600 and host.file(moved[0]).user == "root"

    mail = mailsink.wait_alert(mail_host, ROLE, infected)
    assert mail["X-Cabinet-Severity"] == "critical"
    assert SIGNATURE in mail["Subject"] and moved[0] in mail["body"]
    assert len(mailsink.alerts(mail_host, ROLE, infected)) == 1, "one detection, one alert"
    assert json.loads(host.file(moved[0] + ".json").content_string)["alerted"] is True
    # The detection opened an incident in the host's register (GDPR art. 33: the 72-hour clock),
    # which the alert names and the compliance report lists.
    opened = [i for i in json.loads(host.check_output("/usr/local/sbin/cabinet-incident list --open --json"))
              if i["kind"] == "virus" and infected in i["title"]]
    assert len(opened) == 1, f"the detection is not in the incident register once: {opened}"
    assert opened[0]["deadline"] and f"Incident {opened[0]['id']} recorded" in mail["body"]
    # A later report (by hand, and the path unit that the sidecar's rewrite triggers) does not
    # alert again: once every report has finished and the host's mail queue is empty, count.
    host.check_output("/usr/local/sbin/cabinet-av report")
    host.check_output("systemctl start cabinet-av-report.service")
    _settled(host)
    assert len(mailsink.alerts(mail_host, ROLE, infected)) == 1, "the same detection was alerted twice"


def test_on_access_scanner_quarantines_and_alerts(marked, expect, mailsink):
    """clamonacc itself: a marked file opened in a watched folder lands in the quarantine and alerts."""
    host, _ = marked
    if in_container(host):
        not_applicable("fanotify is not available in containers, so clamonacc cannot run here (the role leaves "
                    "it off on purpose, see test_on_access_scanning); the chain from its log line to the "
                    "quarantine and the alert is proven by "
                    "test_a_detection_in_clamonacc_s_log_is_checked_quarantined_and_alerted")
    if not expect("antivirus_onaccess_enabled"):
        not_applicable("antivirus_onaccess_enabled is false in this inventory")
    token = uuid.uuid4().hex[:8]
    folder = expect("antivirus_onaccess_paths")[0].rstrip("/")
    path = f"{folder}/onaccess-{token}.doc"
    qdir = expect("antivirus_quarantine_dir").rstrip("/")
    mail_host = host.check_output("postconf -h myhostname")
    _write(host, path, f"{MARKER} {token}\n")
    host.run(f"cat {shlex.quote(path)} > /dev/null")  # an open that clamonacc sees
    deadline = time.monotonic() + 120
    while host.file(path).exists and time.monotonic() < deadline:
        time.sleep(2)
    assert not host.file(path).exists, "the file clamonacc found is still in the watched folder"
    mail = mailsink.wait_alert(mail_host, ROLE, f"onaccess-{token}.doc", timeout=120)
    assert SIGNATURE in mail["Subject"] and "on-access scanner" in mail["body"]
    records = [json.loads(host.file(p).content_string)
               for p in host.check_output(f"find {qdir} -name '*.json'").splitlines()]
    assert any(r["original_path"] == path and r["detected_by"] == "on-access scanner" for r in records)


def test_a_detection_in_clamonacc_s_log_is_checked_quarantined_and_alerted(marked, expect, mailsink):
    """The chain after clamonacc's detection, with a line in clamonacc's log as clamonacc writes
    it (ClamAV's clamonacc/client/protocol.c: "<path>: <signature> FOUND", after the log's time
    stamp). The path unit sees the line, cabinet-av scans the file again by descriptor and
    quarantines it, and the MSP gets the alert. Forged lines (outside the watched folders, a
    newline, a symlink, a clean file) move nothing."""
    host, _ = marked
    token = uuid.uuid4().hex[:8]
    folder = expect("antivirus_onaccess_paths")[0].rstrip("/")
    qdir = expect("antivirus_quarantine_dir").rstrip("/")
    mail_host = host.check_output("postconf -h myhostname")
    infected = f"{folder}/facture-{token}.doc"
    clean = f"{folder}/propre-{token}.txt"
    target = f"/var/lib/cabinet-lab/decoy-{token}"
    digest = _write(host, infected, f"{MARKER} {token}\n")
    clean_digest = _write(host, clean, f"clean {token}\n")
    host.check_output(f"mkdir -p {target} && chmod 0700 {target}")
    decoy = _write(host, f"{target}/shadow", f"root:$y$decoy-{token}\n{MARKER}\n")
    host.check_output(f"ln -s {target} {folder}/link-{token}")
    stamp = "Sun Nov 29 17:53:05 2026 -> "
    lines = [f"{target}/shadow", f"{folder}/x\n{target}/shadow", f"{folder}/link-{token}/shadow", clean, infected]
    log_lines = "".join(f"{stamp}{line}: {SIGNATURE} FOUND\n" for line in lines)
    try:
        host.check_output("printf %s " + shlex.quote(log_lines) + " >> /var/log/clamav/clamonacc.log")
        mail = mailsink.wait_alert(mail_host, ROLE, f"facture-{token}.doc", timeout=90)
        assert SIGNATURE in mail["Subject"] and "on-access scanner" in mail["body"]
        assert not host.file(infected).exists, "the detected file is still in its folder"
        records = [json.loads(host.file(p).content_string)
                   for p in host.check_output(f"find {qdir} -name '*.json'").splitlines()]
        record = next(r for r in records if r["original_path"] == infected)
        assert record["sha256"] == digest and record["detected_by"] == "on-access scanner"
        _settled(host)
        assert host.file(f"{target}/shadow").sha256sum == decoy, "a forged line moved a file outside"
        assert host.file(clean).sha256sum == clean_digest, "a clean file was moved on a forged line"
        assert not any(r["original_path"].startswith((target, f"{folder}/link-{token}", clean)) for r in records)
    finally:
        host.run(f"rm -rf {target} {folder}/link-{token} {shlex.quote(clean)}")


ATTACKER = r"""
import ctypes, os, struct, sys
folder, swap_to = sys.argv[1], sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init()
libc.inotify_add_watch(fd, os.path.join(folder, "d").encode(), 0x10)  # IN_CLOSE_NOWRITE
print("watching", flush=True)
while True:
    data = os.read(fd, 4096)
    off = 0
    while off < len(data):
        _wd, _mask, _cookie, size = struct.unpack_from("iIII", data, off)
        name = data[off + 16: off + 16 + size].rstrip(b"\0")
        off += 16 + size
        if name == b"shadow":
            # The scanner has read d/shadow and closed it: swap d for a link to the target.
            os.rename(os.path.join(folder, "d"), os.path.join(folder, "d.orig"))
            os.symlink(swap_to, os.path.join(folder, "d"))
            print("swapped", flush=True)
            sys.exit(0)
"""


def test_a_local_user_cannot_make_the_scan_move_files_outside_the_roots(marked, expect):
    """Issue #12 item 1, played by an ordinary user (nobody) in a folder of a scanned root:
    - d/shadow carries the marker; once the scanner has read it, d becomes a symlink to a
      root-only folder outside the roots, holding a "shadow" with the marker too;
    - a file named so that clamdscan's text output prints '<that folder>/passwd: ... FOUND'
      on a line of its own (a newline in a folder name).
    Nothing outside the roots moves or changes; the files the user planted are quarantined."""
    host, folder = marked
    token = uuid.uuid4().hex[:8]
    attack = f"{folder}/attack-{token}"
    target = f"/var/lib/cabinet-lab/decoy-{token}"
    qdir = expect("antivirus_quarantine_dir").rstrip("/")
    host.check_output(f"mkdir -p {target} && chmod 0700 {target}")
    shadow = _write(host, f"{target}/shadow", f"root:$y$decoy-hash-{token}:19000:0:99999:7:::\n{MARKER}\n")
    passwd = _write(host, f"{target}/passwd", f"decoy {token}\n{MARKER}\n")
    host.check_output(f"install -d -o nobody -g nogroup -m 0755 {attack}")
    as_user = "runuser -u nobody -- "
    host.check_output(as_user + "python3 -c %s", (
        "import os, sys\n"
        f"a = {attack!r}\n"
        "os.makedirs(a + '/d')\n"
        f"open(a + '/d/shadow', 'w').write('planted {token}\\n{MARKER}\\n')\n"
        f"forged = a + '/x\\n' + {target!r}\n"
        "os.makedirs(forged)\n"
        f"open(forged + '/passwd', 'w').write('planted {token}\\n{MARKER}\\n')\n"))
    watcher = host.run(f"systemd-run --unit=cabinet-attack-{token} --uid=nobody --collect "
                       f"timeout 900 python3 -c {shlex.quote(ATTACKER)} {attack} {target}")
    assert watcher.rc == 0, watcher.stderr
    try:
        time.sleep(2)
        assert run_unit(host, "cabinet-av-scan.service", timeout=600) == "success"
        assert host.file(f"{target}/shadow").exists, "the scan moved a file outside its roots (symlink swap)"
        assert host.file(f"{target}/shadow").sha256sum == shadow
        assert host.file(f"{target}/passwd").exists, "a forged FOUND line moved a file outside the roots"
        assert host.file(f"{target}/passwd").sha256sum == passwd
        records = [json.loads(host.file(p).content_string)
                   for p in host.check_output(f"find {qdir} -name '*.json'").splitlines()]
        originals = {r["original_path"] for r in records}
        assert f"{attack}/d/shadow" in originals, "the planted d/shadow was not quarantined"
        assert f"{attack}/x\n{target}/passwd" in originals, "the planted file with a newline was not quarantined"
        assert not any(o.startswith(target) for o in originals)
    finally:
        host.run(f"systemctl stop cabinet-attack-{token}.service")
        host.run(f"rm -rf {attack} {target}")


def test_the_lab_s_own_signature_does_not_count_as_fresh(marked, mailsink):
    """Before #12 the lab's marker database (.ndb, rewritten by each converge) made the check call
    the signatures fresh. Only freshclam's databases (main, daily, bytecode) count."""
    host, _ = marked
    if host.run(r"find /var/lib/clamav -maxdepth 1 -regextype egrep -regex '.*/(main|daily|bytecode)\.c[vl]d' "
                "| grep -q .").rc == 0:
        not_applicable("this lab host has official databases: the check has something real to judge")
    mail_host = host.check_output("postconf -h myhostname")
    before = len(mailsink.alerts(mail_host, ROLE, "signatures are stale (none)"))
    host.check_output("touch /var/lib/clamav/cabinet-test.ndb")
    _forget_alert(host, "signatures-stale")
    assert run_unit(host, "cabinet-av-check.service", timeout=300) != "success"
    assert mailsink.wait_alert(mail_host, ROLE, "signatures are stale (none)", before)["X-Cabinet-Severity"] == "warning"


def _forget_alert(host, key: str) -> None:
    """Forget an earlier alert of the same condition, so the next one is not held back."""
    host.check_output("python3 -c %s", (
        "import json, pathlib; p = pathlib.Path('/var/lib/cabinet/antivirus-state.json')\n"
        "d = json.loads(p.read_text()) if p.exists() else {}\n"
        f"d.get('alerted', {{}}).pop({key!r}, None); p.write_text(json.dumps(d))"))


def test_stale_signatures_raise_an_alert_and_clamd_keeps_scanning(marked, mailsink, expect):
    host, _ = marked
    mail_host = host.check_output("postconf -h myhostname")
    before = len(mailsink.alerts(mail_host, ROLE, "signatures are stale"))
    hours = expect("antivirus_signature_max_age_hours") + 24
    stamps = host.check_output("find /var/lib/clamav -maxdepth 1 -type f -printf '%T@ %p\\n'")
    host.check_output(f"find /var/lib/clamav -maxdepth 1 -type f -exec touch -d '-{hours} hours' {{}} +")
    try:
        _forget_alert(host, "signatures-stale")
        assert run_unit(host, "cabinet-av-check.service", timeout=120) != "success"
        assert mailsink.wait_alert(mail_host, ROLE, "signatures are stale", before)["X-Cabinet-Severity"] == "warning"

        # freshclam cannot reach its mirror here; clamd still answers and still detects.
        host.check_output("systemctl stop clamav-freshclam.service")  # frees its lock for one manual run
        try:
            update = host.run("timeout 180 freshclam --stdout")
        finally:
            host.check_output("systemctl start clamav-freshclam.service")
        assert update.rc != 0, f"freshclam reached a mirror: {update.stdout[-2000:]}"
        assert "lock" not in update.stdout.lower(), update.stdout[-2000:]
        assert host.run("clamdscan --ping 3:2").rc == 0
        found = host.run(f"echo {shlex.quote(MARKER)} | clamdscan --fdpass --no-summary -")
        assert found.rc == 1 and SIGNATURE in found.stdout
    finally:
        for line in stamps.splitlines():
            stamp, path = line.split(" ", 1)
            host.run(f"touch -d @{stamp.split('.')[0]} {shlex.quote(path)}")
