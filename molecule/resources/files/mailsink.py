#!/usr/bin/python3
"""Test rig mail sink: the MSP's SMTP relay, as the alerting role meets it.

Listens on port 587 with STARTTLS required and AUTH (PLAIN/LOGIN) required after TLS, like a
real submission server, and stores every accepted message in the Maildir /var/mail/sink.
Credentials come from /etc/mailsink/credentials (one line: user:password).
Test rig only: never part of a role.
"""

import ssl
import time
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import AuthResult, LoginPassword

CONF = Path("/etc/mailsink")
USER, _, PASSWORD = (CONF / "credentials").read_text(encoding="utf-8").strip().partition(":")


def authenticator(server, session, envelope, mechanism, auth_data):  # noqa: ARG001
    ok = (isinstance(auth_data, LoginPassword)
          and auth_data.login.decode() == USER and auth_data.password.decode() == PASSWORD)
    return AuthResult(success=ok)


def main() -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(CONF / "mailsink.crt", CONF / "mailsink.key")
    controller = Controller(
        Mailbox("/var/mail/sink"),
        hostname="0.0.0.0",
        port=587,
        tls_context=context,
        require_starttls=True,
        authenticator=authenticator,
        auth_require_tls=True,
        auth_required=True,
    )
    controller.start()
    try:
        while True:
            time.sleep(3600)
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
