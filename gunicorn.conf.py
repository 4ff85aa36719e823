"""gunicorn settings, from the same VIEWER_* variables as the app (see README)."""

import os

bind = os.environ.get("VIEWER_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("VIEWER_WORKERS", "2"))
# Threads give keep-alive and let one browser's parallel slice requests overlap;
# decoding, windowing and PNG/JPEG encoding release the GIL for most of their time.
# worker_class (gthread, lingering on kept-alive connections) is set below.
threads = int(os.environ.get("VIEWER_THREADS", "4"))
keepalive = 5
timeout = 60
graceful_timeout = 10
loglevel = os.environ.get("VIEWER_LOG_LEVEL", "info")
accesslog = "-"
# Never log query strings' secrets: the access log shows the path only.
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms'
preload_app = False

# Secrets that travel in the path: one-time sign-in links, enrolment/reset links and share
# links. The access log shows "/enrol/…" instead of the token (security.md: never log tokens).
import logging  # noqa: E402
import re  # noqa: E402
import traceback  # noqa: E402

from gunicorn.glogging import Logger  # noqa: E402

_SECRET_PATH = re.compile(r"(^|[\s\"']|//[^/\s\"']*)(/(?:login|enrol|s)/)[^/?#\s\"']+")


def mask_secrets(text):
    """The text with the path segment after /login/, /enrol/ and /s/ replaced by '…'."""
    if isinstance(text, str) and ("/login/" in text or "/enrol/" in text or "/s/" in text):
        return _SECRET_PATH.sub(r"\1\2…", text)
    return text


class MaskingLogger(Logger):
    """gunicorn's logger, with link secrets masked in every access-log atom.

    With the format above, only its six atoms are made: gunicorn's own ``atoms`` makes
    ~60 (every header and environ entry), which cost 0.14 ms of each rendered slice.
    Another format (``--access-logformat``) gets every atom, masked.
    """

    def setup(self, cfg):
        super().setup(cfg)
        # gunicorn's access() checks five settings on every request for whether any
        # access log is configured; they change only when the config is reloaded.
        self._lean_access = cfg.access_log_format == access_log_format and bool(
            cfg.accesslog or cfg.logconfig or cfg.logconfig_dict or cfg.logconfig_json
            or (cfg.syslog and not cfg.disable_redirect_access_to_syslog))

    def access(self, resp, req, environ, request_time):
        """The default format's line, through the access logger's handlers and filters,
        without what ``Logger.info`` adds for other formats (finding the caller's source
        line, ``SafeAtoms``): half the cost of a rendered slice's log line."""
        if not self._lean_access:
            return super().access(resp, req, environ, request_time)
        log = self.access_log
        if not log.isEnabledFor(logging.INFO):
            return None
        try:
            message = access_log_format % self.atoms(resp, req, environ, request_time)
            log.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, message, None, None))
        except Exception:
            self.error(traceback.format_exc())
        return None

    def atoms(self, resp, req, environ, request_time):
        if self.cfg.access_log_format == access_log_format:
            return {
                "h": environ.get("REMOTE_ADDR", "-"),
                "m": environ.get("REQUEST_METHOD"),
                "U": mask_secrets(environ.get("PATH_INFO")),
                "s": str(resp.status).split(None, 1)[0],
                "b": str(resp.sent) if getattr(resp, "sent", None) is not None else "-",
                "M": request_time.seconds * 1000 + request_time.microseconds // 1000,
            }
        return {key: mask_secrets(value)
                for key, value in super().atoms(resp, req, environ, request_time).items()}


logger_class = MaskingLogger


import gc  # noqa: E402


def application_log(worker):
    """The app's loggers (``viewer.*``) and Python's warnings (pydicom's about odd values)
    write through gunicorn's error log, in its format and at its level (VIEWER_LOG_LEVEL).
    Without this their records reach no handler: Python prints warnings and errors bare
    (no time, no level) and drops the rest."""
    error_log = worker.log.error_log
    logging.captureWarnings(True)
    for name in ("viewer", "py.warnings"):
        log = logging.getLogger(name)
        log.handlers = list(error_log.handlers)
        log.setLevel(error_log.level)
        log.propagate = False


def post_worker_init(worker):
    """Once a worker has loaded the app: its log (``application_log``), then
    ``gc.freeze()``, which takes everything made so far (modules, the app, SQLAlchemy's
    and pydicom's tables: objects that live as long as the worker) out of the cyclic
    collector's sight. A full collection scanned them all: ~100 ms, measured when one fell
    in the first metadata answer of a 130-file series. Now it scans what requests made
    (~1 ms)."""
    application_log(worker)
    gc.freeze()


# Kept-alive connections: the thread that answered one waits this long for its next request.
KEEPALIVE_LINGER_MS = 2
# A client that stops sending in the middle of a request is taken to have gone: after this
# long without a byte, or when its request line and headers are not all in after
# REQUEST_HEAD_S. gunicorn itself waits for good, so a few connections that send half a
# request and stop (a "slowloris") would hold every thread and stall the server.
CLIENT_IDLE_S = 15.0
REQUEST_HEAD_S = 10.0

import errno  # noqa: E402
import select  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from gunicorn.http.errors import ParseException  # noqa: E402
from gunicorn.workers.gthread import TConn, ThreadWorker  # noqa: E402
from werkzeug.exceptions import BadRequest  # noqa: E402


def _readable_within(sock: socket.socket, milliseconds: int) -> bool:
    """Whether ``sock`` has data (or was closed) within ``milliseconds``."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(milliseconds))


def _gone() -> BrokenPipeError:
    """What a client that stopped reading is to gunicorn: a closed connection (logged at
    debug level, not as an error with a traceback)."""
    return BrokenPipeError(errno.EPIPE, f"the client read nothing for {CLIENT_IDLE_S:g} s")


class ClientSocket(socket.socket):
    """A client connection that gives up on a client that has stopped sending, or reading.

    gunicorn reads requests with ``recv`` on a blocking socket and no time limit. Here a
    read that would wait longer than CLIENT_IDLE_S (or past ``head_deadline``, while the
    request line and headers come in) ends the connection's reading instead, as if the
    client had closed it: gunicorn and Werkzeug already handle that (the connection
    closes; a request body cut short is a 400). Writing an answer, a send that takes no
    byte within CLIENT_IDLE_S ends the connection as if the client had closed it
    (``sendall``, ``sendfile``).
    """

    head_deadline: float | None = None

    @classmethod
    def adopt(cls, sock: socket.socket) -> "ClientSocket":
        adopted = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        # A send waits CLIENT_IDLE_S at most (the one that fills the buffers returns with part
        # of its bytes sent, the next with none: EAGAIN), so a client that stops reading an
        # answer (a phone gone out of range) holds its thread for 15-45 s, not for good.
        seconds = int(CLIENT_IDLE_S)
        adopted.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                           struct.pack("ll", seconds, int((CLIENT_IDLE_S - seconds) * 1e6)))
        return adopted

    def sendall(self, data: bytes, flags: int = 0) -> None:
        try:
            super().sendall(data, flags)
        except BlockingIOError:  # SO_SNDTIMEO: the client stopped reading
            raise _gone() from None

    def sendfile(self, file, offset: int = 0, count: int | None = None) -> int:  # type: ignore[no-untyped-def]
        # Python's sendfile waits without a limit on a socket without a timeout.
        self.settimeout(CLIENT_IDLE_S)
        try:
            return super().sendfile(file, offset, count)
        except TimeoutError:
            raise _gone() from None
        finally:
            self.settimeout(None)

    def recv(self, size: int, flags: int = 0) -> bytes:
        if self.gettimeout() is None:  # gunicorn's own bounded reads set a timeout
            try:  # usually the bytes are there already: no need to wait for them
                return super().recv(size, flags | socket.MSG_DONTWAIT)
            except BlockingIOError:
                pass
            wait = CLIENT_IDLE_S
            if self.head_deadline is not None:
                wait = min(wait, self.head_deadline - time.monotonic())
            if wait <= 0 or not _readable_within(self, int(wait * 1000)):
                self.shutdown(socket.SHUT_RD)  # every later read sees the end, too
        return super().recv(size, flags)


# gunicorn reads less than this much of a request body the app left unread before it gives
# up and closes the connection (gunicorn.http.parser._DRAIN_MAX_BYTES).
DRAIN_MAX_BYTES = 64 * 1024


def close_after_unread_bodies(app):  # type: ignore[no-untyped-def]
    """``app``, except that an error answer to a request with more body than gunicorn
    drains says ``Connection: close`` (and a chunked body is read through ``ChunkedBody``).

    An app refusing a request (401, 413, 415…) does not read its body; gunicorn then
    closes the connection after the answer, which it had sent with "Connection:
    keep-alive", so a client's next request on it met a closed connection.
    """

    def closing(environ, start_response):  # type: ignore[no-untyped-def]
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if chunked:
            environ["wsgi.input"] = ChunkedBody(environ["wsgi.input"])

        def start(status, headers, exc_info=None):  # type: ignore[no-untyped-def]
            if int(status[:3]) >= 400 and (chunked or _long_body(environ)):
                start_response.__self__.force_close()  # gunicorn's Response
            return start_response(status, headers, exc_info)

        return app(environ, start)

    return closing


class ChunkedBody:
    """A chunked request body whose malformed chunks are the client's error (400).

    gunicorn raises its own ParseException from ``read`` when a chunk size or terminator
    is malformed; reaching the app, that was an unexpected error: a 500 and a traceback.
    """

    def __init__(self, body) -> None:  # type: ignore[no-untyped-def]
        self._body = body

    def _call(self, method, *args):  # type: ignore[no-untyped-def]
        try:
            return method(*args)
        except ParseException as exc:
            raise BadRequest(f"the request's chunked body is malformed ({exc})") from None

    def read(self, *args):  # type: ignore[no-untyped-def]
        return self._call(self._body.read, *args)

    def readline(self, *args):  # type: ignore[no-untyped-def]
        return self._call(self._body.readline, *args)

    def readlines(self, *args):  # type: ignore[no-untyped-def]
        return self._call(self._body.readlines, *args)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return self

    def __next__(self):  # type: ignore[no-untyped-def]
        line = self.readline()
        if not line:
            raise StopIteration
        return line


def _long_body(environ) -> bool:  # type: ignore[no-untyped-def]
    length = environ.get("CONTENT_LENGTH", "")
    return length.isdigit() and int(length) >= DRAIN_MAX_BYTES  # gunicorn stops at the limit


class LingeringThreadWorker(ThreadWorker):
    """gunicorn's gthread worker, except that the thread that answered a kept-alive
    connection waits up to KEEPALIVE_LINGER_MS for that connection's next request and
    answers it itself (and ``ClientSocket`` and ``close_after_unread_bodies``).

    gthread hands every request of a kept-alive connection from its poller thread to a
    pool thread and back again: two thread wake-ups, a pipe and four more system calls.
    On this 2-core VM that was ~0.5 ms of a ~3 ms rendered JPEG slice, for a viewer
    asking for slice after slice on one connection. The thread lingers only while no other
    connection waits for a thread, and gives the connection back to the poller as soon
    as one does, so no connection waits on another's linger longer than
    KEEPALIVE_LINGER_MS.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._queued = 0  # connections submitted to the pool and not yet taken up
        self._queued_lock = threading.Lock()

    def enqueue_req(self, conn: TConn) -> None:
        with self._queued_lock:
            self._queued += 1
        super().enqueue_req(conn)

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self.wsgi = close_after_unread_bodies(self.wsgi)

    def handle(self, conn: TConn) -> object:
        with self._queued_lock:
            self._queued -= 1
        if not isinstance(conn.sock, ClientSocket):  # a new connection, not yet read from
            conn.sock = ClientSocket.adopt(conn.sock)
        while True:
            conn.sock.head_deadline = time.monotonic() + REQUEST_HEAD_S
            keep_alive = super().handle(conn)
            if keep_alive is not True or not self.alive or conn.is_http2 or self._queued:
                return keep_alive
            if conn.parser.unreader.buf.getvalue():
                continue  # the next request was sent with the last one (pipelining)
            if not _readable_within(conn.sock, KEEPALIVE_LINGER_MS):
                return keep_alive  # back to the poller, as gthread does

    def handle_request(self, req: object, conn: TConn) -> object:
        conn.sock.head_deadline = None  # the head is in; the app reads the body
        return super().handle_request(req, conn)


worker_class = LingeringThreadWorker
