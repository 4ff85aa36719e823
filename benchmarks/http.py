"""The service over real HTTP, against Orthanc in the same run: ``python benchmarks/http.py``.

Three series:

* ``256``: the 130 GE MP-RAGE slices of the corpus (256x256). Their pixels are a
  geometric grid phantom (bars on a flat background), not a head.
* ``512``: the same 130 slices upsampled to 512x512 (``common.make_512_series``:
  same study, a new series with UIDs derived from the originals, Pixel Spacing
  halved).
* ``brain512``: the 60-slice axial T1 of the demo study written at 512x512
  (``viewer.demo.write_demo_study(matrix=512)``): a head with tissue texture, coil
  bias and a noise floor, like a real MR slice.

The issue's throughput targets (rendered PNG >= 10x Orthanc's, JPEG >= Orthanc's)
are about windowed 512x512 MR slices, and its reference for Orthanc (~31 ms per
PNG) is a real slice's. What a slice costs depends on its content: a windowed
phantom slice is a ~9 KiB PNG that zlib squeezes in a few ms, a head with a noise
floor ~150 KiB (the same as a scanner's). So the targets are checked on
``brain512``; the phantom rows are shown as well, as information.

Ours: a temp ``VIEWER_DATA_DIR``; ``viewer.cli import`` of each series; an
admin token from ``viewer.cli tokens create``; gunicorn as configured by
``gunicorn.conf.py`` (2 gthread workers with ``VIEWER_THREADS`` threads each,
keep-alive, a thread lingering on its connection for the next request), started as
``python -m gunicorn -c gunicorn.conf.py wsgi:app``.

* Fresh-series rounds on the 256x256 series, each on a freshly started gunicorn
  (empty frame cache, files in the OS page cache): time to first image (series
  JSON from ``/api/studies/{study}/series/{series}``, then the middle slice as
  PNG), then all 130 slices fetched once, alternately by one connection in
  order and by 6 parallel connections (like a browser); a second, warm pass is
  timed too.
* Throughput, per series: 1 and 4 clients, ~5 s each, PNG and JPEG, cycling
  through a list of paths that covers every slice with 16 windows
  (``?window=C,W``), so the server renders every time; no ``If-None-Match`` is
  ever sent for these numbers (a 304 is measured apart). The load generator is
  ``wrk`` when it is on PATH (``-t1 -c1`` and ``-t2 -c4``, a Lua script cycles
  through the paths and sets the headers), else the threaded Python generator
  in ``common.run_load`` (it competes with the servers for the 2 cores);
  ``BENCH_LOAD_GENERATOR=python`` forces the latter. The table says which. A
  2 s warm-up per series fills the workers' frame caches first. Other
  processes on the machine (tests, builds) skew these numbers: the CPU used
  during each run by neither the server nor the generator is recorded from
  ``/proc/stat``; a run with more than 0.25 cores of it is measured again after
  a quiet moment (at most 30 s of retries in all), the quietest run is kept,
  and the table notes what remains.
* Peak memory: VmHWM of each gunicorn worker after all of that, against
  ``VIEWER_CACHE_MB`` + 150 MB.
* In-process, no HTTP: the same rendered-slice requests (``brain512``, every
  slice, changing windows) through the WSGI app in this process, back to back
  and then each after 1 ms of idle CPU, as one client's requests arrive. Median
  wall and CPU time per request: what the app itself (``viewer.rendered_lane`` in
  front of Flask, the authorization query, rendering) costs, and what idling
  between requests adds on this machine.

Orthanc (when ``/usr/sbin/Orthanc`` exists): temp config and storage, HTTP on a
free loopback port, DICOM server off, DICOMweb plugin loaded; the same files
uploaded by ``POST /instances`` (files/s of the 256x256 series), then the same
load on ``/instances/{id}/rendered?window-center=C&window-width=W`` with
``Accept: image/png`` or ``image/jpeg``. Both servers run side by side and take
turns: each of our throughput runs is next to Orthanc's same run, in alternating
order (this shared VM drifts by tens of percent over minutes; runs minutes apart
would put that drift into the ratios). Which query parameters Orthanc honours
is probed and recorded (output bytes must change with the parameter).

Both servers are stopped at the end whatever happens (process groups, TERM then
KILL); SIGTERM to this script runs that clean-up too.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: put the repo root, not benchmarks/, first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import hashlib
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pydicom

from benchmarks.common import (
    PYTHON,
    ROOT,
    LoadResult,
    Metric,
    RetryBudget,
    children,
    demo_series,
    fetch_all,
    free_port,
    ge_files,
    get,
    load_generator,
    log,
    make_512_series,
    proc_status_kb,
    report,
    run_paths,
    start_process,
    stop_process,
    summary_ms,
    wait_http,
    wait_idle,
)

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
LOAD_SECONDS = 5.0
WARMUP_SECONDS = 2.0
CLIENTS = (1, 4)
FRESH_ROUNDS = 4  # alternating sequential / 6-parallel fetch of the whole series
PARALLEL = 6
FORMATS = {"png": "image/png", "jpeg": "image/jpeg"}
# The series, by key; the throughput targets apply to TARGET_SIZE.
SIZES = ("brain512", "512", "256")
TARGET_SIZE = "brain512"
FIRST_SIZE = "256"  # first-image and fetch-all rounds (the corpus series as it is)
LABELS = {
    "brain512": "512x512 brain",
    "512": "512x512 GE phantom (upsampled)",
    "256": "256x256 GE phantom",
}
TARGETS = {
    "png_ratio": 10.0,  # ours >= 10x Orthanc's rendered PNG throughput (512x512 brain)
    "jpeg_ratio": 1.0,  # ours >= Orthanc's JPEG throughput (512x512 brain)
    "first_image_ms": 100.0,
    "fetch_all_s": 1.5,
    "memory_over_cache_mb": 150.0,
}

IN_PROCESS_REQUESTS = 480  # per format and way, in-process (no HTTP)
IDLE_GAP_S = 0.001  # the idle time before each request of the "after idle" runs

NOISY_CORES = 0.25  # CPU used by neither server nor load generator, flagged in the table
RETRY = RetryBudget(30.0, NOISY_CORES)  # re-measure runs that other processes disturbed

Window = tuple[float, float]


def windows_for(center: float, width: float, count: int = 16) -> list[Window]:
    """Different (centre, width) pairs around the header window."""
    out = []
    for i in range(count):
        c = center + width * 0.125 * ((i % 5) - 2)
        w = width * (0.6 + 0.8 * ((i * 7) % count) / count)
        out.append((round(c, 1), round(max(w, 2.0), 1)))
    return out


def request_plan(slices: int, windows: int) -> list[tuple[int, int]]:
    """(slice, window) of each request in the cycle: every slice ``windows`` times, the
    window changing from one request to the next and between passes over the slices."""
    return [(i % slices, (i * 7 + i // slices) % windows) for i in range(slices * windows)]


def load_paths(targets: list[str], window: Window,
               path: Callable[[str, Window], str]) -> list[str]:
    """The request paths the load generators cycle through, for one server and series."""
    windows = windows_for(*window)
    return [path(targets[s], windows[w]) for s, w in request_plan(len(targets), len(windows))]


# --- our service --------------------------------------------------------------------------


@dataclass
class Ours:
    """A prepared data dir with the series imported, and how to start gunicorn on it."""

    tmp: Path
    env: dict[str, str]
    port: int
    token: str
    series: dict[str, tuple[str, str]]  # size -> (StudyInstanceUID, SeriesInstanceUID)
    cache_mb: int
    import_seconds: dict[str, float]

    def auth(self, accept: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Accept": accept}

    def start(self) -> subprocess.Popen[bytes]:
        """A fresh gunicorn; returns once both workers have booted and it answers."""
        argv = [PYTHON, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
        proc = start_process(argv, self.tmp / "gunicorn.log", self.env, ROOT)
        try:
            wait_http(self.port, "/api/studies", timeout=60, proc=proc)
            deadline = time.monotonic() + 30
            while len(children(proc.pid)) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            wait_idle(children(proc.pid))
        except BaseException:
            stop_process(proc)
            raise
        return proc

    def series_path(self, size: str) -> str:
        study, series = self.series[size]
        return f"/api/studies/{study}/series/{series}"


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m viewer.cli ...`` from the repo root; fail loudly."""
    done = subprocess.run([PYTHON, "-m", "viewer.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"viewer.cli {args[0]} failed: {done.stdout}{done.stderr}")
    return done


def prepare_ours(tmp: Path, inputs: dict[str, list[Path]]) -> Ours:
    """Data dir, one CLI import per series, token; nothing is served yet."""
    port = free_port()
    cache_mb = int(os.environ.get("VIEWER_CACHE_MB", "256"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIEWER_")}
    env.update({
        "VIEWER_DATA_DIR": str(tmp / "data"),
        "VIEWER_BIND": f"127.0.0.1:{port}",
        "VIEWER_WORKERS": "2",
        "VIEWER_CACHE_MB": str(cache_mb),
    })
    import_seconds: dict[str, float] = {}
    series: dict[str, tuple[str, str]] = {}
    for size, files in inputs.items():
        log(f"ours: importing the {LABELS[size]} series with viewer.cli import")
        start = time.perf_counter()
        cli(env, "import", *map(str, files))
        import_seconds[size] = time.perf_counter() - start
        head = pydicom.dcmread(files[0], stop_before_pixels=True)
        series[size] = (str(head.StudyInstanceUID), str(head.SeriesInstanceUID))
    token = cli(env, "tokens", "create", "--role", "admin", "--name", "bench").stdout
    return Ours(tmp, env, port, token.strip().splitlines()[-1].strip(), series, cache_mb,
                import_seconds)


def series_info(ours: Ours, size: str, conn: http.client.HTTPConnection | None = None
                ) -> tuple[list[dict[str, Any]], Window, float]:
    """Slices in display order, the header window, and the seconds the JSON took."""
    reply = get(ours.port, ours.series_path(size), ours.auth("application/json"), conn)
    if reply.status != 200:
        raise RuntimeError(f"series JSON: HTTP {reply.status}: {reply.body[:200]!r}")
    data = json.loads(reply.body)
    stack = data["stacks"][0]
    return stack["slices"], typical_window(stack), reply.seconds


def typical_window(stack: dict[str, Any]) -> Window:
    """The window most slices carry in their header (else the stack's header or auto window).

    Not the stack's ``header`` window: that is the middle slice's, and in the GE
    series the middle slice alone says 3010/6020 where 110 of 130 say 153/307.
    """
    counts = Counter(
        (float(s["window"]["center"]), float(s["window"]["width"]))
        for s in stack["slices"] if s.get("window")
    )
    if counts:
        return counts.most_common(1)[0][0]
    chosen = stack["windows"].get("header") or stack["windows"]["auto"]
    return float(chosen["center"]), float(chosen["width"])


def rendered_path(url: str, window: Window) -> str:
    return f"{url}?window={window[0]:g},{window[1]:g}"


def fresh_round(ours: Ours, number: int) -> dict[str, Any]:
    """One fresh gunicorn: first image, then the whole series (cold, then warm)."""
    proc = ours.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", ours.port, timeout=60)
        slices, window, json_s = series_info(ours, FIRST_SIZE, conn)
        middle = slices[len(slices) // 2]
        image = get(ours.port, rendered_path(middle["url"], window), ours.auth("image/png"), conn)
        conn.close()
        if image.status != 200 or not image.body.startswith(b"\x89PNG"):
            raise RuntimeError(f"first image: HTTP {image.status}")
        paths = [rendered_path(s["url"], window) for s in slices]
        connections = 1 if number % 2 == 0 else PARALLEL
        cold, cold_failures = fetch_all(ours.port, paths, ours.auth("image/png"), connections)
        warm, warm_failures = fetch_all(ours.port, paths, ours.auth("image/png"), connections)
        if cold_failures or warm_failures:
            raise RuntimeError(f"fetch all: {cold_failures + warm_failures} failed requests")
        return {"json_s": json_s, "image_s": image.seconds, "image_bytes": len(image.body),
                "connections": connections, "cold_s": cold, "warm_s": warm,
                "slices": len(paths)}
    finally:
        stop_process(proc)


def etag_check(ours: Ours, path: str) -> dict[str, Any]:
    """Does a rendered answer carry an ETag, and what does revalidating it cost?"""
    first = get(ours.port, path, ours.auth("image/png"))
    etag = first.headers.get("etag")
    result: dict[str, Any] = {"etag": etag, "cache_control": first.headers.get("cache-control")}
    if etag:
        headers = {**ours.auth("image/png"), "If-None-Match": etag}
        replies = [get(ours.port, path, headers) for _ in range(20)]
        result["status"] = sorted({r.status for r in replies})
        result["revalidate"] = summary_ms([r.seconds for r in replies])
        rendered = [get(ours.port, path, ours.auth("image/png")) for _ in range(20)]
        result["full"] = summary_ms([r.seconds for r in rendered])
    return result


@dataclass
class Server:
    """One server under load: where it answers, what to ask, whose CPU to count."""

    name: str
    port: int
    paths: list[str]  # the request cycle of the series being measured
    headers: Callable[[str], dict[str, str]]  # media type -> request headers
    pids: list[int]
    results: dict[str, LoadResult]


def load_both(servers: list[Server], size: str, scratch: Path) -> None:
    """Warm-up, then every format x client count on one series, the servers taking turns.

    Each (format, clients) run of ours is next to Orthanc's, in alternating order:
    this shared VM drifts by tens of percent over minutes, and runs minutes apart
    would put that drift into the ratios.
    """
    for server in servers:
        log(f"{server.name}: {LABELS[size]} warm-up ({load_generator()})")
        run_paths(server.port, server.paths, server.headers("image/png"), max(CLIENTS),
                  WARMUP_SECONDS, script_dir=scratch)
    turn = 0
    for fmt, media in FORMATS.items():
        for clients in CLIENTS:
            for server in servers if turn % 2 == 0 else servers[::-1]:
                log(f"{server.name}: {LABELS[size]} {fmt} with {clients} client(s) "
                    f"for {LOAD_SECONDS:g} s")
                server.results[f"{size}.{fmt}.c{clients}"] = RETRY.quietest(
                    lambda server=server, media=media, clients=clients: run_paths(
                        server.port, server.paths, server.headers(media), clients,
                        LOAD_SECONDS, server.pids, scratch))
            turn += 1


def in_process(ours: Ours, slices: list[dict[str, Any]], window: Window) -> dict[str, Any]:
    """Rendered-slice requests through the WSGI app in this process (see the docstring)."""
    from werkzeug.test import EnvironBuilder

    from viewer import create_app
    from viewer.config import load_config

    app = create_app(load_config(ours.env))
    paths = load_paths([s["url"] for s in slices], window, rendered_path)
    results: dict[str, Any] = {}
    try:
        for fmt, media in FORMATS.items():
            environs = []
            for target in paths:
                path, _, query = target.partition("?")
                environs.append(EnvironBuilder(path=path, query_string=query,
                                               headers=ours.auth(media)).get_environ())

            def request(number: int, environs: list[dict[str, Any]] = environs) -> None:
                statuses: list[str] = []
                body = app(dict(environs[number % len(environs)]),
                           lambda status, headers, exc=None: statuses.append(status))
                b"".join(body)
                if statuses[0][:3] != "200":
                    raise RuntimeError(f"in-process request: {statuses[0]}")

            for number in range(len(slices)):  # every frame decoded and cached first
                request(number)
            for way, gap in (("back_to_back", 0.0), ("after_idle", IDLE_GAP_S)):
                walls, cpus = [], []
                for number in range(IN_PROCESS_REQUESTS):
                    if gap:
                        time.sleep(gap)
                    cpu, wall = time.thread_time(), time.perf_counter()
                    request(number)
                    walls.append(time.perf_counter() - wall)
                    cpus.append(time.thread_time() - cpu)
                results[f"{fmt}.{way}"] = {**summary_ms(walls),
                                           "cpu_median_ms": summary_ms(cpus)["median_ms"]}
    finally:
        app.extensions["viewer"].engine.dispose()
    return results


def worker_memory(master: int) -> dict[str, Any]:
    """VmHWM and VmRSS (MiB) of each gunicorn worker."""
    out = {}
    for pid in children(master):
        hwm, rss = proc_status_kb(pid, "VmHWM"), proc_status_kb(pid, "VmRSS")
        out[str(pid)] = {"VmHWM_MiB": round((hwm or 0) / 1024, 1),
                         "VmRSS_MiB": round((rss or 0) / 1024, 1)}
    return out


# --- Orthanc ------------------------------------------------------------------------------


def start_orthanc(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Orthanc with a temp config and storage, answering on a free loopback port."""
    port = free_port()
    config = {
        "Name": "viewer-bench",
        "HttpPort": port,
        "DicomServerEnabled": False,
        "DicomPort": free_port(),
        "StorageDirectory": str(tmp / "storage"),
        "IndexDirectory": str(tmp / "index"),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "SaveJobs": False,
        "Plugins": [str(DICOMWEB_PLUGIN)] if DICOMWEB_PLUGIN.exists() else [],
    }
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "orthanc.json").write_text(json.dumps(config, indent=2))
    proc = start_process([str(ORTHANC), str(tmp / "orthanc.json")], tmp / "orthanc.log", None,
                         tmp)
    try:
        wait_http(port, "/system", timeout=60, proc=proc)
    except BaseException:
        stop_process(proc)
        raise
    return proc, port


def upload_orthanc(port: int, files: list[Path]) -> tuple[dict[str, str], float]:
    """POST every file to /instances over one connection; SOP UID -> Orthanc ID, seconds."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    ids: dict[str, str] = {}
    blobs = [p.read_bytes() for p in files]
    start = time.perf_counter()
    for blob in blobs:
        reply = get(port, "/instances", {"Content-Type": "application/dicom"}, conn, "POST", blob)
        if reply.status != 200:
            raise RuntimeError(f"Orthanc upload: HTTP {reply.status} {reply.body[:200]!r}")
        info = json.loads(reply.body)
        ids[info["ID"]] = ""
    elapsed = time.perf_counter() - start
    conn.close()
    by_sop: dict[str, str] = {}
    for orthanc_id in ids:
        tags = json.loads(get(port, f"/instances/{orthanc_id}/simplified-tags").body)
        by_sop[tags["SOPInstanceUID"]] = orthanc_id
    return by_sop, elapsed


def probe_orthanc(port: int, orthanc_id: str, window: Window) -> dict[str, Any]:
    """Which /rendered query parameters change Orthanc's output (bytes differ)?"""
    base = f"/instances/{orthanc_id}/rendered"
    c, w = window

    def digest(query: str, accept: str = "image/png") -> tuple[int, int, str]:
        reply = get(port, base + query, {"Accept": accept})
        return reply.status, len(reply.body), hashlib.sha256(reply.body).hexdigest()[:12]

    plain = digest(f"?window-center={c:g}&window-width={w:g}")
    results: dict[str, Any] = {"window_png": plain, "deterministic": digest(
        f"?window-center={c:g}&window-width={w:g}") == plain}
    checks = {  # each differs from the request above in one parameter only
        "window-center/window-width": f"?window-center={c / 2:g}&window-width={w / 2:g}",
        "width/height": f"?window-center={c:g}&window-width={w:g}&width=128&height=128",
        "none (the file's own window)": "",
    }
    for name, query in checks.items():
        got = digest(query)
        results[name] = {"answer": got, "changes_output": got[0] == 200 and got[2] != plain[2]}
    jpeg = digest("", "image/jpeg")
    low = digest("?quality=30", "image/jpeg")
    results["quality (jpeg)"] = {"answer": low, "changes_output": low[2] != jpeg[2]}
    results["jpeg_default_bytes"] = jpeg[1]
    return results


def dicomweb_probe(port: int, study: str, series: str, sop: str, window: Window
                   ) -> dict[str, Any]:
    """Orthanc's DICOMweb plugin rendered resource, for reference (20 sequential PNGs)."""
    path = (f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/rendered"
            f"?window={window[0]:g},{window[1]:g},linear")  # literal commas: %2C is refused
    replies = [get(port, path, {"Accept": "image/png"}) for _ in range(20)]
    first = replies[0]
    return {"path": path, "status": sorted({r.status for r in replies}), "bytes": len(first.body),
            "answer": first.body[:300].decode("latin-1") if first.status != 200 else "",
            "latency": summary_ms([r.seconds for r in replies])}


def orthanc_rendered_path(orthanc_id: str, window: Window) -> str:
    c, w = window
    return f"/instances/{orthanc_id}/rendered?window-center={c:g}&window-width={w:g}"


def single_png(port: int, path: str, headers: dict[str, str], count: int = 20
               ) -> dict[str, float]:
    """Latency of ``count`` sequential requests, each on a new connection."""
    return summary_ms([get(port, path, headers).seconds for _ in range(count)])


# --- the run ------------------------------------------------------------------------------


def run() -> tuple[list[Metric], dict[str, Any]]:
    """Everything above; returns the table rows and the details."""
    tmp = Path(tempfile.mkdtemp(prefix="viewer-bench-http-"))
    details: dict[str, Any] = {"load_seconds": LOAD_SECONDS, "warmup_seconds": WARMUP_SECONDS,
                               "load_generator": load_generator()}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        log("making the 512x512 series (the 130 GE slices upsampled 2x; the demo head)")
        started = time.perf_counter()
        inputs = {"256": ge_files()}
        inputs["512"] = make_512_series(inputs["256"], tmp / "series-512")
        inputs["brain512"] = demo_series(tmp / "brain-512", "Ax T1", matrix=512)
        details["make_512_series_s"] = round(time.perf_counter() - started, 2)
        ours = prepare_ours(tmp, {size: inputs[size] for size in (FIRST_SIZE, *SIZES)})
        details["ours"] = {"cache_mb": ours.cache_mb, "workers": 2,
                           "threads": int(os.environ.get("VIEWER_THREADS", "4")),
                           "cli_import_s": {k: round(v, 3)
                                            for k, v in ours.import_seconds.items()}}
        rounds = []
        for number in range(FRESH_ROUNDS):
            log(f"ours: fresh gunicorn round {number + 1}/{FRESH_ROUNDS}")
            rounds.append(fresh_round(ours, number))
        details["ours"]["fresh_rounds"] = rounds

        log("ours: throughput, Orthanc's alongside")
        proc = ours.start()
        procs.append(proc)
        plans = {size: series_info(ours, size)[:2] for size in SIZES}
        middles = {size: slices[len(slices) // 2] for size, (slices, _) in plans.items()}
        load: dict[str, LoadResult] = {}
        orthanc: dict[str, Any] = {}
        orthanc_load: dict[str, LoadResult] = {}
        orthanc_proc, orthanc_plans = None, {}
        if ORTHANC.exists():
            log("orthanc: start and upload")
            orthanc_proc, port = start_orthanc(tmp / "orthanc")
            procs.append(orthanc_proc)
            version = json.loads(get(port, "/system").body).get("Version")
            orthanc.update({"version": version, "upload_s": {}})
            by_sop: dict[str, str] = {}
            for size in (FIRST_SIZE, *SIZES):
                if size not in orthanc["upload_s"]:
                    found, upload_s = upload_orthanc(port, inputs[size])
                    by_sop.update(found)
                    orthanc["upload_s"][size] = round(upload_s, 3)
            orthanc_plans = {size: ([by_sop[s["sop_uid"]] for s in slices], window)
                             for size, (slices, window) in plans.items()}
        else:
            orthanc["skipped"] = f"{ORTHANC} not found"
        for size, (slices, window) in plans.items():
            servers = [Server("ours", ours.port,
                              load_paths([s["url"] for s in slices], window, rendered_path),
                              ours.auth, [proc.pid, *children(proc.pid)], load)]
            if orthanc_proc is not None:
                ids, orthanc_window = orthanc_plans[size]
                servers.append(Server("orthanc", port,
                                      load_paths(ids, orthanc_window, orthanc_rendered_path),
                                      lambda media: {"Accept": media}, [orthanc_proc.pid],
                                      orthanc_load))
            load_both(servers, size, tmp)

        details["ours"]["load"] = {k: v.as_dict() for k, v in load.items()}
        details["ours"]["etag"] = etag_check(
            ours, rendered_path(middles[FIRST_SIZE]["url"], plans[FIRST_SIZE][1]))
        details["ours"]["single_png"] = {
            size: single_png(ours.port, rendered_path(middles[size]["url"], plans[size][1]),
                             ours.auth("image/png")) for size in SIZES}
        details["ours"]["memory"] = worker_memory(proc.pid)
        opened = [v for v in load.values() if v.connections is not None]
        details["ours"]["keep_alive"] = (
            all(v.connections < v.requests / 2 for v in opened) if opened else None)
        stop_process(proc)
        procs.remove(proc)

        if orthanc_proc is not None:
            ids, window = orthanc_plans[FIRST_SIZE]
            orthanc["probe"] = probe_orthanc(port, ids[len(ids) // 2], window)
            if DICOMWEB_PLUGIN.exists():
                study, series = ours.series[FIRST_SIZE]
                orthanc["dicomweb_rendered"] = dicomweb_probe(
                    port, study, series, middles[FIRST_SIZE]["sop_uid"], window)
            orthanc["single_png"] = {
                size: single_png(port, orthanc_rendered_path(ids[len(ids) // 2], window),
                                 {"Accept": "image/png"})
                for size, (ids, window) in orthanc_plans.items()}
            orthanc["load"] = {k: v.as_dict() for k, v in orthanc_load.items()}
            orthanc["VmHWM_MiB"] = round(
                (proc_status_kb(orthanc_proc.pid, "VmHWM") or 0) / 1024, 1)
            stop_process(orthanc_proc)
            procs.remove(orthanc_proc)

        log("ours: in-process requests (no HTTP)")
        details["ours"]["in_process"] = in_process(ours, *plans[TARGET_SIZE])
        details["orthanc"] = orthanc
        details["noise"] = {
            "other_cores_flagged_above": NOISY_CORES, "retries": RETRY.retries,
            "retry_budget_left_s": round(RETRY.left, 1),
            "note": "other_cores: CPU used during a run by processes other than the server "
                    "and the load generator (from /proc/stat); a run above the threshold is "
                    "repeated while the budget lasts and the quietest one kept"}
    finally:
        for proc in procs:
            stop_process(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    return build_metrics(details, load, orthanc_load, len(inputs[FIRST_SIZE])), details


def cpu_per_request(runs: list[LoadResult]) -> float | None:
    """Server CPU milliseconds per answered request over several load runs."""
    cpu = [r.server_cpu_s for r in runs if r.server_cpu_s is not None]
    requests = sum(r.requests for r in runs)
    return round(sum(cpu) * 1000 / requests, 2) if cpu and requests else None


def throughput_note(mine: LoadResult, theirs: LoadResult | None) -> str:
    """Generator, latencies and answer sizes of one throughput row."""
    data = mine.as_dict()
    lat = data["latency"]
    note = (f"{mine.generator}; p50 {lat['median_ms']:.1f} ms, p95 {lat['p95_ms']:.1f} ms, "
            f"{data['mean_bytes'] / 1024:.0f} KiB")
    if theirs is not None:
        other = theirs.as_dict()
        note += (f"; Orthanc p50 {other['latency']['median_ms']:.1f} ms, "
                 f"p95 {other['latency']['p95_ms']:.1f} ms, "
                 f"{other['mean_bytes'] / 1024:.0f} KiB")
    if mine.errors or (theirs is not None and theirs.errors):
        note += f"; errors ours {mine.errors} Orthanc {theirs.errors if theirs else 0}"
    busy = [(who, r.other_cores) for who, r in (("ours", mine), ("Orthanc", theirs))
            if r is not None and r.other_cores is not None and r.other_cores > NOISY_CORES]
    if busy:
        note += "; other load on the machine: " + ", ".join(
            f"{value:.1f} cores during {who}" for who, value in busy)
    retried = [(who, r.attempts) for who, r in (("ours", mine), ("Orthanc", theirs))
               if r is not None and r.attempts > 1]
    if retried:
        note += "; quietest of " + ", ".join(f"{n} runs ({who})" for who, n in retried)
    return note


def build_metrics(details: dict[str, Any], load: dict[str, LoadResult],
                  orthanc_load: dict[str, LoadResult], files: int) -> list[Metric]:
    """The table rows from the collected numbers."""
    ours, orthanc = details["ours"], details["orthanc"]
    metrics: list[Metric] = []
    for size in SIZES:
        for fmt in FORMATS:
            ratio = TARGETS["png_ratio"] if fmt == "png" else TARGETS["jpeg_ratio"]
            for clients in CLIENTS:
                key = f"{size}.{fmt}.c{clients}"
                mine, theirs = load[key], orthanc_load.get(key)
                target = (">=", ratio) if size == TARGET_SIZE else None
                metrics.append(Metric(
                    f"http.{key}",
                    f"HTTP rendered {fmt.upper()} {LABELS[size]}, {clients} client"
                    + ("s" if clients > 1 else ""),
                    round(mine.per_second, 1), "slices/s", target, on_ratio=True,
                    orthanc=round(theirs.per_second, 1) if theirs else None,
                    note=throughput_note(mine, theirs)))

    for fmt in FORMATS:
        def cpu(runs: dict[str, LoadResult], size: str, fmt: str = fmt) -> float | None:
            picked = [runs[f"{size}.{fmt}.c{c}"] for c in CLIENTS if f"{size}.{fmt}.c{c}" in runs]
            return cpu_per_request(picked) if picked else None

        small_ours, small_theirs = cpu(load, FIRST_SIZE), cpu(orthanc_load, FIRST_SIZE)
        note = (f"all server processes, 1- and 4-client runs; lower is better; "
                f"{LABELS[FIRST_SIZE]}: ours {small_ours} ms"
                + (f", Orthanc {small_theirs} ms" if small_theirs is not None else ""))
        metrics.append(Metric(
            f"http.cpu.{TARGET_SIZE}.{fmt}",
            f"Server CPU per rendered {fmt.upper()} {LABELS[TARGET_SIZE]}",
            cpu(load, TARGET_SIZE), "ms", orthanc=cpu(orthanc_load, TARGET_SIZE), note=note))

    for fmt in FORMATS:
        done = ours["in_process"]
        mine, idle = done[f"{fmt}.back_to_back"], done[f"{fmt}.after_idle"]
        metrics.append(Metric(
            f"http.in_process.{fmt}",
            f"Rendered {fmt.upper()} {LABELS[TARGET_SIZE]} through the app, no HTTP: "
            "back to back / after 1 ms idle",
            mine["median_ms"], "ms",
            note=f"median of {mine['n']} in-process WSGI calls; after {IDLE_GAP_S * 1000:g} ms "
                 f"idle: {idle['median_ms']:.2f} ms (CPU {idle['cpu_median_ms']:.2f} ms, "
                 f"back to back {mine['cpu_median_ms']:.2f} ms)"))

    rounds = ours["fresh_rounds"]
    json_ms = statistics.median(r["json_s"] for r in rounds) * 1000
    image_ms = statistics.median(r["image_s"] for r in rounds) * 1000
    total_ms = statistics.median((r["json_s"] + r["image_s"]) for r in rounds) * 1000
    n = len(rounds)
    metrics += [
        Metric("http.first.json", "First image: series JSON", round(json_ms, 1), "ms",
               note=f"fresh gunicorn, median of {n}"),
        Metric("http.first.image", "First image: middle slice PNG", round(image_ms, 1), "ms",
               note=f"fresh gunicorn, median of {n}"),
        Metric("http.first.total",
               f"First image of a fresh 130-slice series ({LABELS[FIRST_SIZE]})",
               round(total_ms, 1), "ms", ("<=", TARGETS["first_image_ms"]),
               note="JSON + PNG, median"),
    ]
    for connections, label in ((1, "1 connection, in order"),
                               (PARALLEL, f"{PARALLEL} parallel connections")):
        mine = [r for r in rounds if r["connections"] == connections]
        cold = statistics.median(r["cold_s"] for r in mine)
        warm = statistics.median(r["warm_s"] for r in mine)
        metrics.append(Metric(
            f"http.fetch_all.c{connections}.cold", f"All 130 slices, {label}, fresh",
            round(cold, 3), "s", ("<=", TARGETS["fetch_all_s"]),
            note=f"{LABELS[FIRST_SIZE]} PNG, median of {len(mine)}"))
        metrics.append(Metric(
            f"http.fetch_all.c{connections}.warm", f"All 130 slices, {label}, second pass",
            round(warm, 3), "s", note="PNG, frames cached in the worker that decoded them"))

    memory = ours["memory"]
    peak = max((m["VmHWM_MiB"] for m in memory.values()), default=None)
    metrics.append(Metric(
        "http.memory.worker_peak", "Worker peak RSS (VmHWM, max of workers)", peak, "MiB",
        ("<=", ours["cache_mb"] + TARGETS["memory_over_cache_mb"]),
        orthanc=orthanc.get("VmHWM_MiB"),
        note=f"VIEWER_CACHE_MB={ours['cache_mb']}, both series served; workers "
             + ", ".join(f"{m['VmHWM_MiB']:g}" for m in memory.values())))
    upload = orthanc.get("upload_s", {})
    for size in (FIRST_SIZE, "512"):
        metrics.append(Metric(
            f"http.import.{size}",
            f"Import 130 files, {LABELS[size]} (our CLI; Orthanc POST /instances)",
            round(files / ours["cli_import_s"][size], 1), "files/s",
            orthanc=round(files / upload[size], 1) if upload.get(size) else None,
            note="one run, this setup; CLI wall time incl. start-up"))
    singles, theirs = ours.get("single_png", {}), orthanc.get("single_png", {})
    for size in SIZES:
        if size in singles:
            metrics.append(Metric(
                f"http.latency.png.{size}",
                f"Rendered PNG {LABELS[size]}, one request at a time",
                singles[size]["median_ms"], "ms",
                orthanc=theirs[size]["median_ms"] if size in theirs else None,
                note="median of 20, middle slice, new connection each; Orthanc "
                     "/instances/{id}/rendered"))
    dicomweb = orthanc.get("dicomweb_rendered", {})
    if dicomweb.get("status") == [200]:
        metrics.append(Metric(
            "http.latency.dicomweb_png",
            f"Orthanc DICOMweb .../rendered?window=C,W PNG {LABELS[FIRST_SIZE]}",
            None, "ms", orthanc=dicomweb["latency"]["median_ms"],
            note="median of 20, one at a time; for reference"))
    etag = ours.get("etag", {})
    if etag.get("revalidate"):
        metrics.append(Metric(
            "http.etag.304", "ETag revalidation (If-None-Match -> 304)",
            etag["revalidate"]["median_ms"], "ms",
            note=f"status {etag.get('status')}; full render {etag['full']['median_ms']:.1f} ms"))
    return metrics


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally clean-up runs
    metrics, details = run()
    report("http", metrics, details)


if __name__ == "__main__":
    main()
