"""tests/report/send.py: the weekly report mailed through the practice's relay, with the TLS
mode and certificate check the alerting role uses for the same relay (community.general.mail,
which it replaces in playbooks/report.yml, checks no certificate)."""

from __future__ import annotations

import json
import ssl
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "report"))
import send  # noqa: E402

CA = (ROOT / "molecule" / "resources" / "files" / "mailsink.crt").read_text(encoding="utf-8")
PASSWORD = "Vq7#mWk2$pLx9@rTz4"


class FakeSMTP:
    """Records what the sender did; fails where asked."""
    made: list["FakeSMTP"] = []

    def __init__(self, host, port, timeout=None, context=None, fail=None):
        self.host, self.port, self.context, self.calls = host, port, context, []
        FakeSMTP.made.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def starttls(self, context=None):
        self.context = context
        self.calls.append("starttls")

    def login(self, user, password):
        self.calls.append(("login", user))
        if password == "refused":
            raise send.smtplib.SMTPAuthenticationError(535, b"authentication failed")

    def send_message(self, mail):
        self.calls.append(("send", mail))


@pytest.fixture
def settings(tmp_path, monkeypatch):
    FakeSMTP.made = []
    monkeypatch.setattr(send.smtplib, "SMTP", FakeSMTP)
    monkeypatch.setattr(send.smtplib, "SMTP_SSL", FakeSMTP)
    pdf = tmp_path / "rapport.pdf"
    pdf.write_bytes(b"%PDF-1.7 test")
    data = tmp_path / "report.json"
    data.write_text("{}", encoding="utf-8")
    return {"host": "smtp.msp.example", "port": 587, "tls": "starttls", "tls_verify": True, "ca_cert": "",
            "user": "relay", "password": PASSWORD, "sender": "cabinet@msp.example", "to": ["alertes@msp.example"],
            "subject": "[cabinet-hardening] Rapport de conformité – Cabinet – conforme", "body": "Rapport.\n",
            "attachments": [str(pdf), str(data)]}


def test_starttls_checks_the_certificate_and_the_name_by_default(settings):
    send.send(settings)
    (server,) = FakeSMTP.made
    assert server.calls[0] == "starttls"
    assert server.context.verify_mode == ssl.CERT_REQUIRED and server.context.check_hostname
    assert server.calls[1] == ("login", "relay")
    mail = server.calls[2][1]
    assert [p.get_filename() for p in mail.iter_attachments()] == ["rapport.pdf", "report.json"]
    assert mail["Subject"].endswith("conforme")


def test_the_practice_s_own_authority_is_the_one_trusted(settings):
    send.send({**settings, "ca_cert": CA})
    ctx = FakeSMTP.made[0].context
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert len(ctx.get_ca_certs()) == 1   # that authority only, not the system's


def test_smtps_wraps_the_connection_from_the_start(settings):
    send.send({**settings, "tls": "smtps", "port": 465})
    (server,) = FakeSMTP.made
    assert "starttls" not in server.calls and server.context.verify_mode == ssl.CERT_REQUIRED


def test_no_check_only_when_the_practice_turned_it_off(settings):
    send.send({**settings, "tls_verify": False})
    assert FakeSMTP.made[0].context.verify_mode == ssl.CERT_NONE


def test_a_failure_is_told_without_the_password(settings, tmp_path, capsys):
    path = tmp_path / "mail.json"
    path.write_text(json.dumps({**settings, "password": "refused"}), encoding="utf-8")
    assert send.main([str(path)]) == 1
    err = capsys.readouterr().err
    assert "could not be mailed through smtp.msp.example:587: SMTPAuthenticationError" in err
    assert "refused" not in err and PASSWORD not in err


def test_the_playbook_mails_through_the_sender_not_an_unchecked_module():
    text = (ROOT / "playbooks" / "report.yml").read_text(encoding="utf-8")
    assert "community.general.mail" not in text and "tests/report/send.py" in text
