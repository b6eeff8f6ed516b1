"""cabinet-alert: the journal entry keeps its fields, whatever the details hold."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from conftest import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "roles" / "alerting" / "files" / "usr" / "local" / "sbin" / "cabinet-alert"


def load():
    return load_script(SCRIPT)


def fake_journal(monkeypatch) -> list:
    sent: list = []
    journal = types.ModuleType("systemd.journal")
    journal.send = lambda message, **fields: sent.append((message, fields))
    package = types.ModuleType("systemd")
    package.journal = journal
    monkeypatch.setitem(sys.modules, "systemd", package)
    monkeypatch.setitem(sys.modules, "systemd.journal", journal)
    return sent


def mail_rig(monkeypatch, tmp_path, sendmail_rc: int = 0):
    """cabinet-alert loaded with a fake journal, its settings in tmp_path and a sendmail that
    writes the mail to tmp_path/mail and exits ``sendmail_rc``. Returns (module, mail path)."""
    fake_journal(monkeypatch)
    alert = load()
    config = tmp_path / "alerting.conf"
    config.write_text("[alerting]\nmsp_address = alertes@msp.example\npractice_name = Cabinet\nhostname = h.example\n",
                      encoding="utf-8")
    mail = tmp_path / "mail"
    sendmail = tmp_path / "sendmail"
    sendmail.write_text(f"#!/bin/sh\ncat > {mail}\nexit {sendmail_rc}\n", encoding="utf-8")
    sendmail.chmod(0o755)
    monkeypatch.setattr(alert, "CONFIG", str(config))
    monkeypatch.setattr(alert, "SENDMAIL", str(sendmail))
    return alert, mail


def test_multiline_details_stay_in_the_message_and_add_no_field(monkeypatch):
    sent = fake_journal(monkeypatch)
    alert = load()
    text = "[CRITICAL] [auto_updates] Upgrade failed -- first\n\nCABINET_PRACTICE=antivirus\nPRIORITY=7\n"
    assert alert.journal("cabinet-alert", "critical", "auto_updates", text) is True
    assert len(sent) == 1
    message, fields = sent[0]
    assert message == text
    assert fields == {"PRIORITY": "2", "SYSLOG_IDENTIFIER": "cabinet-alert",
                      "CABINET_PRACTICE": "auto_updates", "CABINET_SEVERITY": "critical"}


def test_without_the_journal_api_it_falls_back_to_syslog(monkeypatch):
    monkeypatch.setitem(sys.modules, "systemd", None)  # import fails
    alert = load()
    calls = []

    class Done:
        returncode = 0

    monkeypatch.setattr(alert.subprocess, "run", lambda argv, **kw: calls.append(argv) or Done())
    assert alert.journal("cabinet-alert", "warning", "backup", "-- a message that starts like an option") is True
    assert calls == [["logger", "-t", "cabinet-alert", "-p", "daemon.warning", "--",
                      "-- a message that starts like an option"]]


def test_an_alert_with_odd_bytes_and_line_breaks_is_still_mailed(monkeypatch, tmp_path):
    """A Latin-1 file name in the details, a title with CR/LF: the alert still goes out."""
    import io

    alert, mail = mail_rig(monkeypatch, tmp_path)

    class Stdin:
        buffer = io.BytesIO(b"Fichier : /srv/patients/caf\xe9.pdf\r\nSubject: forged\n")

    monkeypatch.setattr(alert.sys, "stdin", Stdin)
    title = "Virus found in caf\udce9.pdf\r\nBcc: evil@example.org"
    assert alert.main(["-p", "antivirus", "-s", "critical", "-t", title, "-"]) == 0
    import email
    from email import policy

    sent = email.message_from_bytes(mail.read_bytes(), policy=policy.default)
    # (Decoding RFC 2047 words may double a space; compare the words.)
    assert " ".join(sent["Subject"].split()) == ("[Cabinet] [CRITICAL] [antivirus] h.example: "
                               "Virus found in caf\ufffd.pdf Bcc: evil@example.org")
    assert sent["Bcc"] is None and sent.get_all("Subject") == [sent["Subject"]]
    body = sent.get_content()
    assert "caf\ufffd.pdf" in body and "Subject: forged" in body
