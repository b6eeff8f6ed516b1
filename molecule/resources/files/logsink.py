#!/usr/bin/python3
"""Test rig log sink: the MSP's log host, as system_baseline's log forwarding meets it.

Syslog over TLS (RFC 5425's port 6514, newline-framed as rsyslog's omfwd sends by default),
with the lab's certificate (/etc/mailsink/mailsink.crt, the name "mailsink"). Every line
received is appended to /var/log/logsink/received.log, after the sender's address.
Test rig only: never part of a role.
"""

import asyncio
import ssl
from pathlib import Path

CONF = Path("/etc/mailsink")
OUT = Path("/var/log/logsink/received.log")


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    peer = writer.get_extra_info("peername")[0]
    try:
        while line := await reader.readline():
            with OUT.open("a", encoding="utf-8", errors="backslashreplace") as out:
                out.write(f"{peer} {line.decode('utf-8', 'backslashreplace').rstrip()}\n")
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def main() -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(CONF / "mailsink.crt", CONF / "mailsink.key")
    OUT.parent.mkdir(mode=0o700, exist_ok=True)
    server = await asyncio.start_server(handle, "0.0.0.0", 6514, ssl=context)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
