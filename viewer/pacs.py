"""A small DICOMweb client for the upstream PACS (``VIEWER_SOURCE=dicomweb``).

Only what reading from a PACS needs: QIDO-RS searches, WADO-RS series
metadata and instance retrieval, streamed to a file. Every call finishes
within the configured timeout (connect, each read and the whole transfer), and
every failure becomes a ``PacsError`` carrying the HTTP status our answer
should have: 504 when the PACS is too slow, 502 for anything else (down,
refused credentials, a broken answer). The messages are safe to show anyone;
the details (address, status, reason) go to the log.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import re
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any, BinaryIO
from urllib.parse import quote, urlencode, urlsplit

log = logging.getLogger(__name__)

CHUNK = 1 << 20
MULTIPART_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
DICOM_JSON = "application/dicom+json"
UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class PacsError(RuntimeError):
    """The PACS could not give us what we asked for; ``status`` is our answer's (502/504)."""

    status = 502


class PacsTimeout(PacsError):
    """The PACS did not answer within ``VIEWER_SOURCE_TIMEOUT``."""

    status = 504


class PacsNotFound(PacsError):
    """The PACS answered 404: it does not have (or no longer has) the object."""


UNREACHABLE = "the image archive (PACS) cannot be reached; please try again shortly"
TOO_SLOW = "the image archive (PACS) did not answer in time; please try again shortly"
REFUSED = "the image archive (PACS) refused our request"
BROKEN = "the image archive (PACS) sent an answer that could not be read"


class PacsClient:
    """DICOMweb root ``url`` (no trailing slash), ``Authorization`` value, timeout in seconds.

    Each thread keeps its connection open between requests (keep-alive: no TCP
    or TLS handshake per instance); a kept connection the PACS has closed
    meanwhile is replaced once, transparently.
    """

    def __init__(self, url: str, auth: str = "", timeout: float = 10.0,
                 max_bytes: int = 512 << 20) -> None:
        self.url = url
        self.auth = auth
        self.timeout = timeout
        self.max_bytes = max_bytes
        parts = urlsplit(url)
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname or "", parts.port
        self._prefix = parts.path.rstrip("/")
        self._local = threading.local()

    def _deadline(self) -> float:
        """When the next call must be done: the timeout, or the budget's end if sooner."""
        deadline = time.monotonic() + self.timeout
        budget: float | None = getattr(self._local, "budget", None)
        return deadline if budget is None else min(deadline, budget)

    @contextlib.contextmanager
    def budget(self, seconds: float) -> Iterator[None]:
        """Every call in this block (this thread) ends within ``seconds`` of its start."""
        self._local.budget = time.monotonic() + seconds
        try:
            yield
        finally:
            self._local.budget = None

    def _connection(self, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's kept connection (True) or a new one (False)."""
        kept: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if kept is not None:
            kept.timeout = timeout
            if kept.sock is not None:
                kept.sock.settimeout(timeout)
            return kept, True
        if self._https:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self._host, self._port, timeout=timeout, context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        self._local.conn = conn
        return conn, False

    def _drop(self, conn: http.client.HTTPConnection) -> None:
        conn.close()
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None

    @contextlib.contextmanager
    def _exchange(self, path: str, accept: str, deadline: float
                  ) -> Iterator[tuple[http.client.HTTPConnection, http.client.HTTPResponse]]:
        """A GET with a 2xx answer; the connection is kept only if the answer was read whole."""
        conn, reply = self._open(path, accept, deadline)
        try:
            yield conn, reply
            if not reply.isclosed():
                reply.read(64 * 1024)  # an epilogue after the last multipart boundary
        except BaseException:
            self._drop(conn)
            raise
        if not reply.isclosed():
            self._drop(conn)

    def _open(self, path: str, accept: str, deadline: float
              ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send a GET and return the open response (2xx only)."""
        headers = {"Accept": accept, "User-Agent": "viewer"}
        if self.auth:
            headers["Authorization"] = self.auth
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PacsTimeout(TOO_SLOW)
            conn, reused = self._connection(remaining)
            try:
                conn.request("GET", self._prefix + path, headers=headers)
                reply = conn.getresponse()
                break
            except TimeoutError:
                self._drop(conn)
                log.warning("PACS %s: no answer within %.1f s for %s", self.url, self.timeout,
                            path)
                raise PacsTimeout(TOO_SLOW) from None
            except (OSError, http.client.HTTPException) as exc:
                self._drop(conn)
                if reused:
                    continue  # the PACS closed the kept connection; try once on a new one
                log.warning("PACS %s unreachable: %s", self.url, exc)
                raise PacsError(UNREACHABLE) from None
        if 200 <= reply.status < 300:
            return conn, reply
        body = reply.read(2000)
        self._drop(conn)
        log.warning("PACS %s answered HTTP %d for %s: %r", self.url, reply.status, path, body)
        if reply.status == 404:
            raise PacsNotFound(f"{REFUSED}: it does not have this object (HTTP 404)")
        if reply.status in (401, 403):
            raise PacsError(f"{REFUSED}: our credentials were not accepted "
                            f"(HTTP {reply.status}; check VIEWER_SOURCE_AUTH)")
        if reply.status == 504:
            raise PacsTimeout(TOO_SLOW)
        raise PacsError(f"{REFUSED} (HTTP {reply.status})")

    def _chunks(self, conn: http.client.HTTPConnection, reply: http.client.HTTPResponse,
                deadline: float) -> Iterator[bytes]:
        """The body, at most ``max_bytes``, within the deadline (each read waits only for
        what is left of it, so a PACS sending slowly cannot stretch it)."""
        size = 0
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PacsTimeout(TOO_SLOW)
                if conn.sock is not None:
                    conn.sock.settimeout(remaining)
                chunk = reply.read1(CHUNK)
                if not chunk:
                    return
                size += len(chunk)
                if size > self.max_bytes:
                    raise PacsError(f"{BROKEN} (larger than the {self.max_bytes >> 20} MiB "
                                    "limit, VIEWER_MAX_FILE_MB)")
                yield chunk
        except TimeoutError:
            raise PacsTimeout(TOO_SLOW) from None
        except (OSError, http.client.HTTPException) as exc:
            log.warning("PACS %s: transfer broken: %s", self.url, exc)
            raise PacsError(UNREACHABLE) from None

    def get_json(self, path: str, query: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """A QIDO-RS or metadata answer: a list of DICOM JSON objects ([] for 204)."""
        deadline = self._deadline()
        target = path + (f"?{urlencode(query)}" if query else "")
        with self._exchange(target, DICOM_JSON, deadline) as (conn, reply):
            body = b"".join(self._chunks(conn, reply, deadline))
        if reply.status == 204 or not body.strip():
            return []
        try:
            data = json.loads(body)
        except ValueError:
            log.warning("PACS %s: %s is not JSON: %r", self.url, target, body[:200])
            raise PacsError(BROKEN) from None
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise PacsError(BROKEN)
        return data

    def search(self, path: str, query: dict[str, Any] | None = None,
               page: int = 200) -> Iterator[dict[str, Any]]:
        """Every QIDO-RS result, page by page with ``limit``/``offset``.

        Stops at a short page, or at a page with nothing new (a server that
        ignores ``offset`` would otherwise repeat itself forever).
        """
        seen: set[str] = set()
        offset = 0
        while True:
            items = self.get_json(path, {**(query or {}), "limit": page, "offset": offset})
            fresh = [item for item in items if json.dumps(item, sort_keys=True) not in seen]
            seen.update(json.dumps(item, sort_keys=True) for item in fresh)
            yield from fresh
            if len(items) < page or not fresh:
                return
            offset += len(items)

    def retrieve(self, study: str, series: str, sop: str, target: BinaryIO) -> int:
        """Write one instance's Part 10 bytes (as stored: ``transfer-syntax=*``) to ``target``.

        The answer is ``multipart/related``; the part is streamed to ``target``
        with the closing boundary held back, never assembled in memory.
        Returns the number of bytes written.
        """
        for uid in (study, series, sop):
            if not UID.match(uid):
                raise PacsError(f"{REFUSED}: not a UID")
        deadline = self._deadline()
        path = "/studies/{}/series/{}/instances/{}".format(*(quote(u) for u in (study, series,
                                                                                 sop)))
        with self._exchange(path, MULTIPART_DICOM, deadline) as (conn, reply):
            content_type = reply.getheader("Content-Type", "")
            if content_type.split(";")[0].strip().lower() == "application/dicom":
                written = 0
                for chunk in self._chunks(conn, reply, deadline):
                    target.write(chunk)
                    written += len(chunk)
                return written
            match = re.search(r'boundary="?([^";]+)"?', content_type, re.IGNORECASE)
            if not match:
                raise PacsError(BROKEN)
            return _first_part(self._chunks(conn, reply, deadline), match.group(1).encode(), target)


def _first_part(chunks: Iterator[bytes], boundary: bytes, target: BinaryIO) -> int:
    """Copy the body of the first part of a multipart stream to ``target``."""
    opening = b"--" + boundary
    closing = b"\r\n--" + boundary
    buffer = b""
    started = False
    written = 0
    for chunk in chunks:
        buffer += chunk
        if not started:
            at = buffer.find(opening)
            end = buffer.find(b"\r\n\r\n", at) if at >= 0 else -1
            if end < 0:
                if len(buffer) > 64 * 1024:
                    raise PacsError(BROKEN)
                continue
            buffer = buffer[end + 4:]
            started = True
        at = buffer.find(closing)
        if at >= 0:
            target.write(buffer[:at])
            return written + at
        keep = len(closing) - 1
        if len(buffer) > keep:
            target.write(buffer[:-keep])
            written += len(buffer) - keep
            buffer = buffer[-keep:]
    raise PacsError(BROKEN)


def values(item: dict[str, Any], tag: str) -> list[Any]:
    """The ``Value`` list of ``tag`` in a DICOM JSON object ([] when absent)."""
    element = item.get(tag)
    if not isinstance(element, dict):
        return []
    found = element.get("Value")
    return found if isinstance(found, list) else []


def first(item: dict[str, Any], tag: str) -> Any:
    found = values(item, tag)
    return found[0] if found else None


def uid_of(item: dict[str, Any], tag: str) -> str:
    """A UID value, or '' when absent or not a valid UID."""
    value = first(item, tag)
    return value if isinstance(value, str) and len(value) <= 64 and UID.match(value) else ""
