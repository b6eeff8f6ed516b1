"""Alerting: every host relays alerts and system mail to the MSP, and loses none.

Expectations come from the inventory (see conftest.py). Tests taking ``mailsink`` prove
delivery end to end in the lab; on a real host the others audit the configuration and the
queue's health.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

import pytest

from conftest import (SECRET_ROOTS, assert_secrets_not_exposed, assert_secrets_not_in_ansible_log, drop_private,
                      not_applicable, push_private_file, wait_mail_queue_empty)

ROLE = "alerting"
AUDITED_GROUP = "cabinet_managed"
ALERT = "/usr/local/sbin/cabinet-alert"


def _token() -> str:
    return f"probe-{uuid.uuid4().hex[:12]}"


def _queue(host) -> list[dict]:
    """Postfix's queue as JSON objects (postqueue -j prints one a line)."""
    out = host.check_output("postqueue -j")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_postfix_installed_enabled_running(host):
    assert host.package("postfix").is_installed
    service = host.service("postfix")
    assert service.is_enabled
    assert service.is_running


def test_smtp_listens_on_loopback_only(host):
    assert host.socket("tcp://127.0.0.1:25").is_listening
    listening = host.socket.get_listening_sockets()
    exposed = [s for s in listening if s.endswith(":25") and not s.startswith(("tcp://127.", "tcp://[::1]", "unix:"))]
    assert exposed == [], f"SMTP must not listen beyond loopback: {exposed}"


def test_relay_is_the_msp_over_tls(host, expect):
    postconf = host.check_output("postconf -h relayhost smtp_tls_security_level smtp_tls_wrappermode").splitlines()
    assert postconf[0] == f"[{expect('alerting_relay_host')}]:{expect('alerting_relay_port')}"
    assert postconf[1] == ("secure" if expect("alerting_relay_tls_verify") else "encrypt")
    assert postconf[2] == ("yes" if expect("alerting_relay_tls") == "smtps" else "no")


def test_local_mail_is_rewritten_to_the_msp(host, expect):
    # What Postfix would do with mail for root and for a service account, without sending it.
    for user in ("root", "clamav"):
        hostname = host.check_output("postconf -h myhostname")
        result = host.check_output(f"postmap -q {user}@{hostname} regexp:/etc/postfix/cabinet_local_recipients")
        assert result == expect("alerting_msp_address")
    assert host.check_output("postconf -h mydestination") == ""


def test_relay_credentials_are_root_only(host, expect):
    if not expect("alerting_relay_user"):
        assert not host.file("/etc/postfix/sasl_passwd").exists
        return
    creds = host.file("/etc/postfix/sasl_passwd")
    assert creds.is_file
    assert creds.user == "root" and creds.group == "root"
    assert creds.mode == 0o600


def test_relay_password_is_in_no_world_readable_file_nor_the_journal(host, expect):
    password = expect("alerting_relay_password")
    if not password:
        not_applicable("no relay password in this inventory")
    assert_secrets_not_exposed(host, [password], "the relay password", roots=SECRET_ROOTS + " /var/spool/postfix")


def test_relay_password_never_in_ansible_output(request, expect):
    assert_secrets_not_in_ansible_log(request, [expect("alerting_relay_password")], "the relay password", "alerting")


def test_flush_timer_is_active(host, expect):
    timer = host.service("cabinet-mail-flush.timer")
    assert timer.is_enabled
    assert timer.is_running
    unit = host.check_output("systemctl cat cabinet-mail-flush.timer")
    assert f"OnUnitActiveSec={expect('alerting_flush_interval_minutes')}min" in unit


def test_queue_keeps_alerts_for_the_configured_lifetime(host, expect):
    days = expect("alerting_queue_lifetime_days")
    assert host.check_output("postconf -h maximal_queue_lifetime") == f"{days}d"


def test_no_alert_stuck_in_the_queue(host):
    """An alert older than two hours still queued means the MSP is not hearing this host."""
    stale = [m for m in _queue(host) if time.time() - m["arrival_time"] > 7200]
    assert stale == [], f"alerts stuck in the queue: {[(m['queue_id'], m['recipients']) for m in stale]}"


def test_shared_helpers_are_root_only(host):
    """Every root-run cabinet-* command imports /usr/local/lib/cabinet/cabinet_common.py first:
    only root may be able to change that folder or the module."""
    folder = host.file("/usr/local/lib/cabinet")
    module = host.file("/usr/local/lib/cabinet/cabinet_common.py")
    assert folder.is_directory and folder.user == "root" and folder.group == "root"
    assert folder.mode & 0o022 == 0, f"{folder.path} is writable by others: {folder.mode:o}"
    assert module.is_file and not module.is_symlink and module.user == "root"
    assert module.mode & 0o022 == 0, f"{module.path} is writable by others: {module.mode:o}"


def test_incident_register_is_root_only_and_readable(host, evidence):
    """The register of possible breaches (GDPR art. 33(5)): its folder and file root's alone,
    the file a plain file with one name, every line readable. Its incidents go to the report
    (the evidence "incidents"), which shows the open ones with their 72-hour deadline."""
    folder = host.file("/var/lib/cabinet/incidents")
    assert folder.is_directory and not folder.is_symlink and folder.user == "root" and folder.mode & 0o077 == 0, \
        f"{folder.path}: expected a root-only folder"
    register = host.file("/var/lib/cabinet/incidents/register.jsonl")
    if register.exists:
        links = host.check_output("stat -c %h /var/lib/cabinet/incidents/register.jsonl")
        assert register.is_file and not register.is_symlink and register.user == "root" and register.mode & 0o077 == 0 \
            and links == "1", f"{register.path}: expected a root-only file with one name"
        flags = host.run("lsattr -d /var/lib/cabinet/incidents/register.jsonl")
        evidence("Registre des incidents", "en ajout seul (attribut a)" if flags.rc == 0 and "a" in flags.stdout.split()[0]
                 else "fichier réservé à root (le système ne permet pas l'attribut « ajout seul » ici)")
    listed = host.run("/usr/local/sbin/cabinet-incident list --json")
    assert listed.rc == 0, f"cabinet-incident cannot read the register: {listed.stderr}"
    found = json.loads(listed.stdout)
    evidence("incidents", found)
    unreadable = [i["id"] for i in found if i["status"] == "unreadable"]
    assert unreadable == [], f"lines of the register cannot be read: {unreadable}"


def test_alert_command_refuses_bad_usage(host):
    result = host.run(f"{ALERT} --practice backup --severity urgent --title x")
    assert result.rc == 2
    assert "severity" in result.stderr


def test_alert_reaches_the_msp_with_its_subject_and_the_journal(host, expect, mailsink):
    token = _token()
    result = host.run(f"{ALERT} --practice backup --severity critical --title %s %s",
                      f"Sauvegarde échouée {token}", "Détails : disque plein")
    assert result.rc == 0, result.stderr

    mailsink.wait_for(token)
    # The count is final once the host's queue is empty: nothing is left that could deliver it again.
    wait_mail_queue_empty(host, timeout=60)
    messages = mailsink.wait_for(token, timeout=0)
    assert len(messages) == 1, f"expected the alert in the sink once, found {len(messages)}"
    mail = messages[0]
    hostname = host.check_output("postconf -h myhostname")
    assert mail["Subject"] == (
        f"[{expect('alerting_practice_name')}] [CRITICAL] [backup] {hostname}: Sauvegarde échouée {token}"
    )
    assert mail["X-RcptTo"] == expect("alerting_msp_address")
    assert mail["X-Cabinet-Severity"] == "critical"
    assert "Détails : disque plein" in mail["body"]

    logged = host.check_output("journalctl -q --no-pager -t cabinet-alert CABINET_PRACTICE=backup -o cat")
    assert token in logged


def test_alert_keeps_its_journal_fields_with_a_multiline_body(host, mailsink):  # noqa: ARG001 - sends mail
    """A body with blank lines and KEY=value lines stays in MESSAGE and adds no field."""
    token = _token()
    body = (f"First line {token}\n\nCABINET_PRACTICE=antivirus\nPRIORITY=7\nSYSLOG_IDENTIFIER=forged\n"
            "\nlast line\n")
    result = host.run(f"printf '%%s' %s | {ALERT} -p auto_updates -s critical -t %s -", body, f"Multi-line {token}")
    assert result.rc == 0, result.stderr
    entries = [json.loads(line) for line in host.check_output(
        "journalctl -q --no-pager -t cabinet-alert CABINET_PRACTICE=auto_updates -o json").splitlines()
        if token in line]
    assert len(entries) == 1, f"the alert is not in the journal under CABINET_PRACTICE=auto_updates: {entries}"
    entry = entries[0]
    # A field given twice comes back as a list: each must be exactly one value, ours.
    assert entry["CABINET_PRACTICE"] == "auto_updates"
    assert entry["CABINET_SEVERITY"] == "critical"
    assert entry["PRIORITY"] == "2"
    assert entry["SYSLOG_IDENTIFIER"] == "cabinet-alert"
    assert "CABINET_PRACTICE=antivirus" in entry["MESSAGE"] and "last line" in entry["MESSAGE"]


# A watcher that reads every process's command line, as often as it can, and writes which of
# its patterns (by number, never the text) it saw. On the host systemd-run starts it; on the
# controller the test does. Its own arguments are file names only.
ARGV_WATCHER = r"""
import os, sys, time
patterns = [p.encode() for p in open(sys.argv[1], encoding="utf-8").read().splitlines() if p]
hits, stop = sys.argv[2], sys.argv[3]
seen = set()
while not os.path.exists(stop):
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    line = handle.read()
            except OSError:
                continue
            seen.update(i for i, p in enumerate(patterns) if p in line)
    with open(hits + ".tmp", "w") as out:
        out.write(" ".join(map(str, sorted(seen))))
    os.replace(hits + ".tmp", hits)
    time.sleep(0.002)
"""


def test_secret_audit_never_puts_a_secret_in_a_command_line(lab, expect):
    """The leak audit itself must not leak: no process, on the host or the controller, ever
    has the secret in its arguments while the audit runs. A canary put in a command line on
    purpose proves that the watchers would have seen it. The same watcher runs on both sides."""
    import subprocess
    import sys
    import tempfile

    password = expect("alerting_relay_password")
    if not password:
        not_applicable("no relay password in this inventory")
    canary = f"canary-{uuid.uuid4().hex}"
    patterns = ("\n".join([canary, password]) + "\n").encode()
    watcher = push_private_file(lab, ARGV_WATCHER.encode(), "watch.py")
    folder = watcher.rsplit("/", 1)[0]
    pattern_file = push_private_file(lab, patterns, "patterns")
    unit = f"cabinet-argv-watch-{uuid.uuid4().hex[:8]}"
    here = Path(tempfile.mkdtemp(prefix="cabinet-argv-watch."))  # 0700
    (here / "patterns").touch(mode=0o600)
    (here / "patterns").write_bytes(patterns)
    local = None
    try:
        lab.check_output(f"systemd-run --unit {unit} --collect python3 {watcher} {pattern_file} {folder}/hits {folder}/stop")
        local = subprocess.Popen([sys.executable, "-c", ARGV_WATCHER, str(here / "patterns"), str(here / "hits"),
                                  str(here / "stop")])
        deadline = time.monotonic() + 30
        while not (lab.file(f"{folder}/hits").exists and (here / "hits").exists()) and time.monotonic() < deadline:
            time.sleep(0.5)
        # The canary, in a command line on the host and on the controller (the backend's runc or podman exec,
        # or its ssh).
        lab.check_output(f"sh -c ': {canary}; sleep 1'")
        assert_secrets_not_exposed(lab, [password], "the relay password", roots=SECRET_ROOTS + " /var/spool/postfix")
        time.sleep(0.5)
        lab.check_output(f"touch {folder}/stop")
        (here / "stop").touch()
        local.wait(timeout=30)
        deadline = time.monotonic() + 30
        while lab.service(unit).is_running and time.monotonic() < deadline:
            time.sleep(0.5)
        seen_there = set(map(int, lab.check_output(f"cat {folder}/hits").split()))
        seen_here = set(map(int, (here / "hits").read_text(encoding="utf-8").split()))
    finally:
        if local and local.poll() is None:
            local.kill()
        lab.run(f"systemctl stop {unit} 2>/dev/null")
        drop_private(lab, watcher)
        drop_private(lab, pattern_file)
        shutil.rmtree(here, ignore_errors=True)
    assert 0 in seen_there, "the host's watcher did not see the canary: it proves nothing"
    assert 1 not in seen_there, "the relay password was in a process's arguments on the host during the audit"
    if lab.backend.NAME != "local":
        assert 0 in seen_here, "the controller's watcher did not see the canary: it proves nothing"
    assert 1 not in seen_here, "the relay password was in a process's arguments on the controller during the audit"


def test_mail_for_root_reaches_the_msp(host, expect, mailsink):
    token = _token()
    sent = host.run(f"printf 'Subject: cron output {token}\\n\\nbody\\n' | /usr/sbin/sendmail -oi root")
    assert sent.rc == 0, sent.stderr
    messages = mailsink.wait_for(token)
    assert [m["X-RcptTo"] for m in messages] == [expect("alerting_msp_address")]


@pytest.mark.mailsink_outage
def test_alert_waits_while_the_relay_is_down_and_arrives_once(host, mailsink):
    token = _token()
    mailsink.stop()
    try:
        result = host.run(f"{ALERT} -p alerting -s warning -t %s", f"Relay down {token}")
        assert result.rc == 0, result.stderr
        # It is in the queue, deferred after a failed attempt, not lost.
        deferred = []
        for _ in range(60):
            deferred = [m for m in _queue(host) if m["queue_name"] == "deferred"]
            if deferred:
                break
            time.sleep(1)
        assert deferred, "the alert was not kept in the queue while the relay was down"
        # Not delivered: one look is enough, the sink is stopped and nothing can reach it now.
        assert mailsink.wait_for(token, timeout=0) == []
    finally:
        mailsink.start()
    # The flush timer's service re-sends it; run it now rather than wait for the timer.
    assert host.run("systemctl start cabinet-mail-flush.service").rc == 0
    messages = mailsink.wait_for(token, timeout=90)
    assert len(messages) == 1
    # Once Postfix's queue is empty, nothing is left that could deliver the alert again: only
    # then is the count final.
    wait_mail_queue_empty(host, timeout=60)
    assert len(mailsink.wait_for(token, timeout=1)) == 1, "the queued alert arrived more than once"
