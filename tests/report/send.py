#!/usr/bin/env python3
"""Mail a practice's compliance report to the MSP through the practice's own relay, as the
alerting role's Postfix reaches it: the same TLS mode and the same certificate check
(playbooks/report.yml; community.general.mail checks no certificate).

    tests/report/send.py SETTINGS.json

SETTINGS.json (written 0600 by the playbook, removed after): host, port, tls (starttls | smtps),
tls_verify (true unless the practice's alerting_relay_tls_verify says otherwise), ca_cert (PEM
text, or empty for the system's authorities), user, password, sender, to, subject, body,
attachments (paths). The password is read from the file, never from the command line.
"""

from __future__ import annotations

import json
import mimetypes
import smtplib
import ssl
import sys
from email.message import EmailMessage
from pathlib import Path


def context(settings: dict) -> ssl.SSLContext:
    if not settings.get("tls_verify", True):
        unverified = ssl.create_default_context()
        unverified.check_hostname = False
        unverified.verify_mode = ssl.CERT_NONE
        return unverified
    return ssl.create_default_context(cadata=settings["ca_cert"]) if settings.get("ca_cert") else ssl.create_default_context()


def message(settings: dict) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = settings["sender"]
    mail["To"] = ", ".join(settings["to"])
    mail["Subject"] = settings["subject"]
    mail.set_content(settings["body"])
    for path in map(Path, settings.get("attachments", [])):
        kind = (mimetypes.guess_type(path.name)[0] or "application/octet-stream").split("/", 1)
        mail.add_attachment(path.read_bytes(), maintype=kind[0], subtype=kind[1], filename=path.name)
    return mail


def send(settings: dict) -> None:
    tls = context(settings)
    if settings.get("tls", "starttls") == "smtps":
        server = smtplib.SMTP_SSL(settings["host"], int(settings["port"]), context=tls, timeout=60)
    else:
        server = smtplib.SMTP(settings["host"], int(settings["port"]), timeout=60)
        server.starttls(context=tls)
    with server:
        if settings.get("user"):
            server.login(settings["user"], settings["password"])
        server.send_message(message(settings))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    settings = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    try:
        send(settings)
    except (OSError, smtplib.SMTPException, ssl.SSLError) as exc:
        # The reason, never the settings (the password is among them).
        print(f"the report could not be mailed through {settings['host']}:{settings['port']}: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 1
    print(f"mailed to {', '.join(settings['to'])} through {settings['host']}:{settings['port']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
