"""A tiny local SMTP server for tests: just enough of RFC 5321 for smtplib.

Each delivered message is appended to ``server.received`` as a dict with "from", "rcpt",
"data" (the raw message) and "auth" when the client logged in.
"""

from __future__ import annotations

import base64
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class SMTPHandler(socketserver.StreamRequestHandler):
    """Just enough of RFC 5321 (and AUTH PLAIN) for smtplib to deliver one message."""

    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        server: SMTPServer = self.server  # type: ignore[assignment]
        self.reply("220 localhost test SMTP")
        envelope: dict[str, object] = {"rcpt": []}
        while True:
            raw = self.rfile.readline()
            if not raw:
                return
            line = raw.decode().rstrip("\r\n")
            verb = line.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                self.wfile.write(b"250-localhost\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n")
            elif verb == "AUTH":
                _, _user, password = base64.b64decode(line.split()[2]).split(b"\0")
                envelope["auth"] = (_user.decode(), password.decode())
                self.reply("235 ok")
            elif verb == "MAIL":
                envelope["from"] = line
                self.reply("250 ok")
            elif verb == "RCPT":
                envelope["rcpt"].append(line)  # type: ignore[union-attr]
                self.reply("250 ok")
            elif verb == "DATA":
                self.reply("354 go on")
                data = b""
                while not data.endswith(b"\r\n.\r\n"):
                    chunk = self.rfile.readline()
                    if not chunk:
                        return
                    data += chunk
                envelope["data"] = data[: -len(b".\r\n")]
                server.received.append(envelope)
                self.reply("250 queued")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("250 ok")


class SMTPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), SMTPHandler)
        self.received: list[dict[str, object]] = []


@contextmanager
def running_smtp_server() -> Iterator[SMTPServer]:
    """A server on a free loopback port, serving in a thread until the block ends."""
    server = SMTPServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
