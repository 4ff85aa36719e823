"""First image when reading through an upstream Orthanc: ``python benchmarks/upstream.py``.

The 130 GE MP-RAGE slices (256x256) are uploaded to an Orthanc (temp config and
storage, loopback, DICOMweb plugin; ``tests/orthanc.py``); our service runs
with ``VIEWER_SOURCE=dicomweb`` pointed at it, its index filled by
``viewer sync`` (timed), under gunicorn as ``gunicorn.conf.py`` configures it
(2 gthread workers).

Each round starts a fresh gunicorn (empty frame caches) and measures the time to
first image like ``benchmarks/http.py``: the series JSON
(``/api/studies/{study}/series/{series}``, which reads the middle slice for its
auto window) and then the middle slice as PNG, over one keep-alive connection;
then all 130 slices with 6 parallel connections (like a browser).

* cold: the local PACS cache (``$VIEWER_DATA_DIR/pacs-cache``) emptied first,
  so every instance is fetched from Orthanc with WADO-RS;
* warm: the instances are in the local cache from the round before (a fresh
  process all the same, so this is the disk cache, not the frame cache);
* for reference, the same series imported locally (``VIEWER_SOURCE=local``);
* and once: the first image of a study not yet in the index (the request
  syncs that study on demand, then fetches).

Orthanc's files sit in the OS page cache throughout (it has just stored them),
as on a PACS that served them recently. Rounds alternate cold and warm; medians
are reported. Both servers are stopped at the end whatever happens; SIGTERM
runs that clean-up too.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: put the repo root, not benchmarks/, first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import http.client
import os
import shutil
import signal
import statistics
import tempfile
import time
from typing import Any

import pydicom

from benchmarks.common import (
    Metric,
    fetch_all,
    free_port,
    ge_files,
    get,
    log,
    report,
    stop_process,
)
from benchmarks.http import Ours, cli, rendered_path, series_info
from tests.orthanc import Orthanc, available

ROUNDS = 5  # of each of cold and warm
LOCAL_ROUNDS = 3
PARALLEL = 6


def make_ours(tmp: Path, env_extra: dict[str, str], series: tuple[str, str]) -> Ours:
    """A data folder with a token; ``env_extra`` says where the images come from."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIEWER_")}
    env.update({"VIEWER_DATA_DIR": str(tmp / "data"), "VIEWER_BIND": f"127.0.0.1:{port}",
                "VIEWER_WORKERS": "2", **env_extra})
    token = cli(env, "tokens", "create", "--role", "admin", "--name", "bench").stdout
    return Ours(tmp, env, port, token.strip().splitlines()[-1].strip(), {"256": series},
                int(env.get("VIEWER_CACHE_MB", "256")), {})


def first_image(ours: Ours, fetch_series: bool = True) -> dict[str, Any]:
    """One fresh gunicorn: series JSON + middle slice, then (optionally) the whole series."""
    proc = ours.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", ours.port, timeout=60)
        slices, window, json_s = series_info(ours, "256", conn)
        middle = slices[len(slices) // 2]
        image = get(ours.port, rendered_path(middle["url"], window), ours.auth("image/png"), conn)
        conn.close()
        if image.status != 200 or not image.body.startswith(b"\x89PNG"):
            raise RuntimeError(f"first image: HTTP {image.status}: {image.body[:200]!r}")
        result: dict[str, Any] = {"json_s": json_s, "image_s": image.seconds,
                                  "first_image_s": json_s + image.seconds}
        if fetch_series:
            paths = [rendered_path(s["url"], window) for s in slices]
            seconds, failures = fetch_all(ours.port, paths, ours.auth("image/png"), PARALLEL)
            if failures:
                raise RuntimeError(f"whole series: {failures} failed requests")
            result["series_s"] = seconds
        return result
    finally:
        stop_process(proc)


def median(rounds: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


def run() -> tuple[list[Metric], dict[str, Any]]:
    reason = available()
    if reason:
        raise SystemExit(reason)
    tmp = Path(tempfile.mkdtemp(prefix="viewer-bench-upstream-"))
    files = ge_files()
    head = pydicom.dcmread(files[0], stop_before_pixels=True)
    series = (str(head.StudyInstanceUID), str(head.SeriesInstanceUID))
    details: dict[str, Any] = {"rounds": ROUNDS, "parallel": PARALLEL}
    pacs = Orthanc(tmp / "orthanc")
    try:
        pacs.start()
        log("orthanc: uploading the 130 GE slices")
        started = time.perf_counter()
        pacs.upload(files)
        details["orthanc_upload_s"] = round(time.perf_counter() - started, 2)

        upstream = make_ours(tmp / "upstream", {
            "VIEWER_SOURCE": "dicomweb", "VIEWER_SOURCE_URL": pacs.url,
            "VIEWER_SOURCE_TIMEOUT": "30", "VIEWER_SOURCE_SYNC_MINUTES": "0"}, series)
        log("ours: viewer sync")
        started = time.perf_counter()
        synced = cli(upstream.env, "sync").stdout.strip()
        sync_s = time.perf_counter() - started
        details["sync"] = {"seconds": round(sync_s, 3), "output": synced}
        cache = Path(upstream.env["VIEWER_DATA_DIR"]) / "pacs-cache"

        rounds: dict[str, list[dict[str, Any]]] = {"cold": [], "warm": []}
        for number in range(ROUNDS):
            for state in ("cold", "warm"):
                log(f"ours via Orthanc: {state} round {number + 1}/{ROUNDS}")
                if state == "cold":
                    shutil.rmtree(cache)
                    cache.mkdir()
                rounds[state].append(first_image(upstream))
        details["upstream_rounds"] = rounds
        details["cache_bytes"] = sum(p.stat().st_size for p in cache.glob("pacs-*"))

        log("ours, study not yet indexed: on-demand sync")
        fresh = make_ours(tmp / "unsynced", {k: v for k, v in upstream.env.items()
                                             if k.startswith("VIEWER_SOURCE")}, series)
        unsynced = first_image(fresh, fetch_series=False)
        details["unsynced"] = unsynced

        local = make_ours(tmp / "local", {}, series)
        log("ours, local store: importing the series")
        cli(local.env, "import", *map(str, files))
        local_rounds = []
        for number in range(LOCAL_ROUNDS):
            log(f"ours, local store: round {number + 1}/{LOCAL_ROUNDS}")
            local_rounds.append(first_image(local))
        details["local_rounds"] = local_rounds
    finally:
        pacs.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    ms = 1000.0
    metrics = [
        Metric("sync_s", "viewer sync: index the 130-slice series from Orthanc", sync_s, "s"),
        Metric("first_cold_ms", "First image via Orthanc, cold cache",
               median(rounds["cold"], "first_image_s") * ms, "ms",
               note="series JSON + middle slice PNG, fresh process"),
        Metric("first_warm_ms", "First image via Orthanc, warm cache",
               median(rounds["warm"], "first_image_s") * ms, "ms",
               note="files in the local PACS cache, fresh process"),
        Metric("first_local_ms", "First image, local store (reference)",
               median(local_rounds, "first_image_s") * ms, "ms"),
        Metric("first_unsynced_ms", "First image via Orthanc, study not yet indexed",
               unsynced["first_image_s"] * ms, "ms", note="on-demand sync, one run"),
        Metric("series_cold_s", "All 130 slices via Orthanc, cold cache",
               median(rounds["cold"], "series_s"), "s", note=f"{PARALLEL} connections"),
        Metric("series_warm_s", "All 130 slices via Orthanc, warm cache",
               median(rounds["warm"], "series_s"), "s", note=f"{PARALLEL} connections"),
        Metric("series_local_s", "All 130 slices, local store (reference)",
               median(local_rounds, "series_s"), "s", note=f"{PARALLEL} connections"),
    ]
    return metrics, details


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally clean-up runs
    metrics, details = run()
    report("upstream", metrics, details)


if __name__ == "__main__":
    main()
