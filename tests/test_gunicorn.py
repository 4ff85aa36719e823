"""gunicorn as ``gunicorn.conf.py`` configures it: the worker that lingers on kept-alive
connections (``LingeringThreadWorker``), over real sockets.

One worker with one thread, so that a connection the thread lingers on is the only one
it could be serving, and a second connection has to wait for it to let go.
"""

from __future__ import annotations

import gc
import http.client
import json
import logging
import re
import runpy
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import pydicom
import pytest
from gunicorn.config import Config as GunicornConfig
from gunicorn.glogging import Logger as GunicornLogger

from .liveserver import ROOT, LiveServer, live_server

ASSET = "/static/img/favicon.svg"
BODY = (ROOT / "viewer" / "static" / "img" / "favicon.svg").read_bytes()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data: Path = tmp_path_factory.mktemp("gunicorn")
    with live_server(data, VIEWER_WORKERS="1", VIEWER_THREADS="1") as live:
        yield live


def address(server: LiveServer) -> tuple[str, int]:
    parts = urlsplit(server.base)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def request(path: str, close: bool = False) -> bytes:
    connection = "close" if close else "keep-alive"
    return f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: {connection}\r\n\r\n".encode()


def read_to_end(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_kept_alive_connection_is_answered_back_to_back_and_after_a_pause(
    server: LiveServer,
) -> None:
    conn = http.client.HTTPConnection(*address(server), timeout=30)
    try:
        for _ in range(20):  # each next request arrives while the thread lingers
            conn.request("GET", ASSET)
            answer = conn.getresponse()
            assert (answer.status, answer.read()) == (200, BODY)
        assert conn.sock is not None
        local = conn.sock.getsockname()
        # Longer than the linger: the connection is back on gunicorn's poller, still open.
        time.sleep(0.3)
        conn.request("GET", ASSET)
        answer = conn.getresponse()
        assert (answer.status, answer.read()) == (200, BODY)
        assert conn.sock.getsockname() == local  # the same connection, not a new one
    finally:
        conn.close()


def test_pipelined_requests_are_all_answered_in_order(server: LiveServer) -> None:
    with socket.create_connection(address(server), timeout=30) as sock:
        sock.sendall(request(ASSET) + request("/static/no-such-file") + request(ASSET, True))
        answers = read_to_end(sock)
    # A body need not end in CRLF, so the next status line may follow it directly.
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answers) == [b"200", b"404", b"200"]
    assert answers.count(BODY) == 2


def test_a_lingering_connection_lets_a_waiting_one_go_first(server: LiveServer) -> None:
    """A connection that keeps its thread busy (here: 400 pipelined requests) gives the
    thread up as soon as another connection waits for it, instead of being served to the end."""
    pipelined = 400
    finished: dict[str, float] = {}
    first_answer = threading.Event()

    def busy_client() -> None:
        with socket.create_connection(address(server), timeout=60) as sock:
            sock.sendall(request(ASSET) * (pipelined - 1) + request(ASSET, True))
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                first_answer.set()
            finished["busy"] = time.monotonic()
            finished["busy answers"] = b"".join(chunks).count(b"HTTP/1.1 200")

    busy = threading.Thread(target=busy_client)
    busy.start()
    try:
        assert first_answer.wait(30), "the busy connection got no answer"
        conn = http.client.HTTPConnection(*address(server), timeout=60)
        try:
            conn.request("GET", ASSET)
            answer = conn.getresponse()
            assert (answer.status, answer.read()) == (200, BODY)
            finished["waiting"] = time.monotonic()
        finally:
            conn.close()
    finally:
        busy.join(120)
    assert finished["busy answers"] == pipelined
    assert finished["waiting"] < finished["busy"], (
        "the second connection was answered only after all the first one's requests"
    )


def test_clients_that_stop_sending_mid_request_do_not_keep_the_thread(
    server: LiveServer,
) -> None:
    """The only thread is taken by a connection that sent half a request head and
    stopped; another by one that sent half its body. Each is let go (REQUEST_HEAD_S,
    CLIENT_IDLE_S; a body cut short is a 400), and the next client is answered."""
    settings = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    head_s, idle_s = settings["REQUEST_HEAD_S"], settings["CLIENT_IDLE_S"]
    started = time.monotonic()
    with socket.create_connection(address(server), timeout=60) as half_head:
        half_head.sendall(b"GET /signin HTTP/1.1\r\nHost: test\r\nX-Slow: 1")
        time.sleep(0.5)  # the thread is reading this head now: the next client must wait
        conn = http.client.HTTPConnection(*address(server), timeout=60)
        try:
            conn.request("GET", ASSET)
            answer = conn.getresponse()
            assert (answer.status, answer.read()) == (200, BODY)
        finally:
            conn.close()
        waited = time.monotonic() - started
        assert head_s - 1 < waited < head_s + idle_s, waited
        assert read_to_end(half_head) == b""  # closed without an answer
    with socket.create_connection(address(server), timeout=60) as half_body:
        half_body.sendall(b"POST /api/session HTTP/1.1\r\nHost: test\r\n"
                          b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                          b'{"username": "x')
        started = time.monotonic()
        answer_bytes = read_to_end(half_body)
        waited = time.monotonic() - started
    assert answer_bytes.startswith(b"HTTP/1.1 400 "), answer_bytes[:200]
    assert idle_s - 1 < waited < idle_s + head_s, waited
    log = server.log.read_text(errors="replace")
    assert "Traceback" not in log and "Socket error" not in log


def test_an_error_answer_to_a_body_left_unread_says_whether_the_connection_stays(
    server: LiveServer,
) -> None:
    """Refused without reading its body (401 here), a request with more body than
    gunicorn drains gets "Connection: close" (gunicorn then closes it); with a small one
    the connection stays and the next request on it is answered."""
    for size, stays in ((1_000, True), (65_535, True), (65_536, False), (200_000, False)):
        with socket.create_connection(address(server), timeout=30) as sock:
            sock.sendall(b"POST /dicom-web/studies HTTP/1.1\r\nHost: test\r\n"
                         b"Content-Type: application/dicom\r\n"
                         b"Content-Length: %d\r\n\r\n" % size + bytes(size) + request(ASSET))
            answers = read_to_end(sock)
        head = answers.split(b"\r\n\r\n", 1)[0].lower()
        assert head.startswith(b"http/1.1 401 ")
        assert (b"connection: keep-alive" if stays else b"connection: close") in head
        assert (answers.count(BODY) == 1) is stays


def test_a_malformed_chunked_body_is_a_400_not_a_500(server: LiveServer) -> None:
    """gunicorn raises its own errors for a bad chunk size or terminator as the app reads
    the body; they are the client's error."""
    for chunks in (b"zz\r\nabc\r\n0\r\n\r\n", b"-5\r\nabcde\r\n0\r\n\r\n",
                   b"3\r\nabcXY0\r\n\r\n"):
        with socket.create_connection(address(server), timeout=30) as sock:
            sock.sendall(b"POST /api/session HTTP/1.1\r\nHost: test\r\n"
                         b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                         b"\r\n" + chunks)
            answer = read_to_end(sock)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 "), answer[:300]
        assert b"connection: close" in head.lower()
        assert b"chunked body is malformed" in body
    log = server.log.read_text(errors="replace")
    assert "Traceback" not in log and "unhandled error" not in log


def test_a_client_that_stops_reading_does_not_keep_the_thread(
    tmp_path: Path, corpus: Path
) -> None:
    """One worker, one thread: a client asks for a 130-file series (17 MB) and reads none
    of it. Once its sends have made no progress for CLIENT_IDLE_S, the thread lets it go and
    answers the next client; the log says nothing alarming."""
    idle_s = runpy.run_path(str(ROOT / "gunicorn.conf.py"))["CLIENT_IDLE_S"]
    ge = corpus / "ge-t1-mprage"
    first = pydicom.dcmread(next(p for p in sorted(ge.iterdir()) if p.name != "LICENSE"),
                            stop_before_pixels=True)
    with live_server(tmp_path / "data", [ge], VIEWER_WORKERS="1", VIEWER_THREADS="1") as live:
        series = (f"/dicom-web/studies/{first.StudyInstanceUID}/series/"
                  f"{first.SeriesInstanceUID}")
        with socket.socket() as stalled:
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stalled.connect(address(live))
            stalled.sendall(f"GET {series} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer "
                            f"{live.token()}\r\nAccept: multipart/related; "
                            'type="application/dicom"; transfer-syntax=*\r\n\r\n'.encode())
            time.sleep(1)  # the only thread is writing to it now
            started = time.monotonic()
            with urllib.request.urlopen(live.base + ASSET, timeout=60) as answer:
                assert answer.status == 200
            waited = time.monotonic() - started
        # SO_SNDTIMEO bounds each send: the one that filled the buffers returns after
        # CLIENT_IDLE_S with part of a chunk sent, the next ends with nothing sent.
        assert idle_s - 2 < waited < 4 * idle_s, waited
        log = live.log.read_text(errors="replace")
        assert "Traceback" not in log and "Error handling request" not in log, log


def test_a_worker_freezes_what_it_has_loaded() -> None:
    """gunicorn calls ``post_worker_init`` once the app is loaded; it takes the objects
    loaded so far out of the cyclic collector's sight (``gc.freeze``)."""
    cfg = GunicornConfig()
    cfg.set("post_worker_init", runpy.run_path(str(ROOT / "gunicorn.conf.py"))["post_worker_init"])
    before = gc.get_freeze_count()
    try:
        cfg.post_worker_init(SimpleNamespace(log=GunicornLogger(cfg)))
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()
        logging.captureWarnings(False)  # the logging set-up too, as the other tests expect it
        for name in ("viewer", "py.warnings"):
            log = logging.getLogger(name)
            log.handlers, log.propagate = [], True
            log.setLevel(logging.NOTSET)


def test_the_apps_log_lines_are_gunicorns(tmp_path: Path, corpus: Path) -> None:
    """The app's warnings (here: a GE private value that is text in a DS, left out of the
    metadata) and pydicom's (that value's length) are written like gunicorn's own lines,
    with time, process and level; at VIEWER_LOG_LEVEL=error they are not written."""
    files = sorted((corpus / "ge-t1-mprage").glob("i*"))[:2]
    head = pydicom.dcmread(files[0], stop_before_pixels=True)
    path = f"/dicom-web/studies/{head.StudyInstanceUID}/series/{head.SeriesInstanceUID}/metadata"
    warning = re.compile(r"^\[\d{4}-\d\d-\d\d [^\]]+\] \[\d+\] \[WARNING\] metadata of "
                         + re.escape(path) + r": element 00431080 left out of 2 of 2 instances",
                         re.MULTILINE)
    pydicoms = re.compile(r"^\[\d{4}-\d\d-\d\d [^\]]+\] \[\d+\] \[WARNING\] \S+pydicom\S+: "
                          r"UserWarning: The value length \(32\) exceeds", re.MULTILINE)
    for level, written in (("info", True), ("error", False)):
        with live_server(tmp_path / level, imports=files, VIEWER_LOG_LEVEL=level) as live:
            ask = urllib.request.Request(live.base + path,
                                         headers={"Authorization": f"Bearer {live.token()}"})
            with urllib.request.urlopen(ask, timeout=60) as answer:
                assert answer.status == 200 and len(json.loads(answer.read())) == 2
        log = live.log.read_text(errors="replace")
        assert bool(warning.search(log)) is written, log
        assert bool(pydicoms.search(log)) is written, log
        # no bare lines of Python's warnings
        assert all(line.startswith("[") for line in log.splitlines() if "Warning:" in line), log
