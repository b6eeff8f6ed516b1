#!/usr/bin/python3
"""Test rig log sink: the MSP's log host, as system_baseline's log forwarding meets it.

Syslog over TLS as RFC 5425 frames it (port 6514, each message "LENGTH SP MESSAGE", octet
counting), with the lab's certificate (/etc/mailsink/mailsink.crt, the name "mailsink"). Every
message received is appended to /var/log/logsink/received.log, after the sender's address; a
frame that is not octet-counted ends the connection (and shows the sender's framing is wrong).
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
        while True:
            length = await reader.readuntil(b" ")
            if not length[:-1].isdigit() or len(length) > 10:
                break
            message = await reader.readexactly(int(length[:-1]))
            with OUT.open("a", encoding="utf-8", errors="backslashreplace") as out:
                out.write(f"{peer} {message.decode('utf-8', 'backslashreplace').rstrip()}\n")
    except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
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
