"""DICOMweb, ours against Orthanc's DICOMweb plugin: ``python benchmarks/dicomweb.py``.

The 130-slice GE MP-RAGE series (256x256) is imported into both servers (ours
with ``viewer.cli import``, Orthanc by ``POST /instances``); both then answer
the very same DICOMweb paths, ours with an admin bearer token.

* QIDO-RS latency, one keep-alive connection, one request at a time
  (``SAMPLES`` each, median and p95): a study search by PatientID, and the
  instance search of the series (130 results).
* Series metadata (WADO-RS ``.../series/{series}/metadata``, 130 instances):
  the first request on a freshly started server (ours: fresh gunicorn, empty
  metadata cache; Orthanc: the first request after the upload), then warm.
* Rendered-frame throughput: ``.../instances/{sop}/rendered?window=C,W,linear``
  (literal commas: Orthanc's plugin refuses ``%2C``), cycling through every
  slice with 16 windows so nothing is served from a cache, JPEG and PNG, with
  ``wrk`` when on PATH (else the threaded Python generator), for
  ``LOAD_SECONDS`` each after a warm-up.

Both servers are stopped at the end whatever happens (process groups, TERM then
KILL); SIGTERM to this script runs that clean-up too.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: put the repo root, not benchmarks/, first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import http.client
import json
import shutil
import signal
import subprocess
import tempfile
from collections import Counter
from typing import Any

import pydicom
from pydicom.multival import MultiValue

from benchmarks.common import (
    LoadResult,
    Metric,
    RetryBudget,
    children,
    ge_files,
    get,
    load_generator,
    log,
    report,
    run_paths,
    stop_process,
    summary_ms,
)
from benchmarks.http import (
    DICOMWEB_PLUGIN,
    ORTHANC,
    load_paths,
    prepare_ours,
    start_orthanc,
    upload_orthanc,
)

SAMPLES = 40
METADATA_SAMPLES = 15
LOAD_SECONDS = 5.0
WARMUP_SECONDS = 2.0
RUNS = (("jpeg", "image/jpeg", 1), ("jpeg", "image/jpeg", 4), ("png", "image/png", 4))
RETRY = RetryBudget(20.0)

Window = tuple[float, float]


def latencies(port: int, path: str, headers: dict[str, str], count: int) -> dict[str, Any]:
    """``count`` sequential GETs on one keep-alive connection; every answer must be 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        replies = [get(port, path, headers, conn) for _ in range(count)]
    finally:
        conn.close()
    bad = sorted({r.status for r in replies if r.status != 200})
    if bad:
        raise RuntimeError(f"{path}: HTTP {bad}: {replies[0].body[:200]!r}")
    return {**summary_ms([r.seconds for r in replies]), "bytes": len(replies[-1].body)}


def measure(port: int, headers: dict[str, str], patient_id: str, study: str, series: str
            ) -> dict[str, Any]:
    """QIDO and metadata latencies on a freshly started server."""
    series_path = f"/dicom-web/studies/{study}/series/{series}"
    json_headers = {**headers, "Accept": "application/dicom+json"}
    first = get(port, f"{series_path}/metadata", json_headers)
    if first.status != 200:
        raise RuntimeError(f"series metadata: HTTP {first.status}: {first.body[:200]!r}")
    items = json.loads(first.body)
    return {
        "metadata_first_ms": round(first.seconds * 1000, 2),
        "metadata_items": len(items),
        "metadata_bytes": len(first.body),
        "metadata_warm": latencies(port, f"{series_path}/metadata", json_headers,
                                   METADATA_SAMPLES),
        "study_search": latencies(port, f"/dicom-web/studies?PatientID={patient_id}",
                                  json_headers, SAMPLES),
        "instance_search": latencies(port, f"{series_path}/instances", json_headers, SAMPLES),
    }


def rendered_paths(study: str, series: str, sops: list[str], window: Window) -> list[str]:
    base = f"/dicom-web/studies/{study}/series/{series}/instances"
    return load_paths(sops, window,
                      lambda sop, w: f"{base}/{sop}/rendered?window={w[0]:g},{w[1]:g},linear")


def throughput(name: str, port: int, headers: dict[str, str], paths: list[str],
               pids: list[int], scratch: Path) -> dict[str, LoadResult]:
    """Warm-up, then each (format, clients) run."""
    results: dict[str, LoadResult] = {}
    probe = get(port, paths[0], {**headers, "Accept": "image/png"})
    if probe.status != 200 or not probe.body.startswith(b"\x89PNG"):
        raise RuntimeError(f"{name} rendered: HTTP {probe.status}: {probe.body[:200]!r}")
    log(f"{name}: rendered warm-up ({load_generator()})")
    run_paths(port, paths, {**headers, "Accept": "image/jpeg"}, 4, WARMUP_SECONDS,
              script_dir=scratch)
    for fmt, media, clients in RUNS:
        log(f"{name}: rendered {fmt}, {clients} client(s), {LOAD_SECONDS:g} s")
        results[f"{fmt}.c{clients}"] = RETRY.quietest(
            lambda media=media, clients=clients: run_paths(
                port, paths, {**headers, "Accept": media}, clients, LOAD_SECONDS, pids, scratch))
    return results


def typical_window(files: list[Path]) -> Window:
    """The window most slices carry in their header (the GE middle slice is an outlier)."""
    windows: Counter[Window] = Counter()
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
        if center is not None and width is not None:
            pick = [v[0] if isinstance(v, MultiValue) else v for v in (center, width)]
            windows[(float(pick[0]), float(pick[1]))] += 1
    return windows.most_common(1)[0][0] if windows else (600.0, 1200.0)


def run() -> tuple[list[Metric], dict[str, Any]]:
    tmp = Path(tempfile.mkdtemp(prefix="viewer-bench-dicomweb-"))
    details: dict[str, Any] = {"samples": SAMPLES, "load_seconds": LOAD_SECONDS,
                               "load_generator": load_generator()}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        files = ge_files()
        head = pydicom.dcmread(files[0], stop_before_pixels=True)
        study, series = str(head.StudyInstanceUID), str(head.SeriesInstanceUID)
        sops = sorted(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                      for p in files)
        paths = rendered_paths(study, series, sops, typical_window(files))
        ours = prepare_ours(tmp, {"256": files})
        auth = {"Authorization": f"Bearer {ours.token}"}
        log("ours: fresh gunicorn")
        proc = ours.start()
        procs.append(proc)
        details["ours"] = measure(ours.port, auth, str(head.PatientID), study, series)
        load = throughput("ours", ours.port, auth, paths, [proc.pid, *children(proc.pid)], tmp)
        details["ours"]["load"] = {k: v.as_dict() for k, v in load.items()}
        stop_process(proc)
        procs.remove(proc)

        theirs: dict[str, LoadResult] = {}
        if ORTHANC.exists() and DICOMWEB_PLUGIN.exists():
            log("orthanc: start and upload")
            proc, port = start_orthanc(tmp / "orthanc")
            procs.append(proc)
            details["orthanc"] = {"version": json.loads(get(port, "/system").body)["Version"]}
            upload_orthanc(port, files)
            details["orthanc"].update(measure(port, {}, str(head.PatientID), study, series))
            theirs = throughput("orthanc", port, {}, paths, [proc.pid], tmp)
            details["orthanc"]["load"] = {k: v.as_dict() for k, v in theirs.items()}
            stop_process(proc)
            procs.remove(proc)
        else:
            details["orthanc"] = {"skipped": f"{ORTHANC} or {DICOMWEB_PLUGIN} not found"}
    finally:
        for proc in procs:
            stop_process(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    return build_metrics(details, load, theirs), details


def build_metrics(details: dict[str, Any], load: dict[str, LoadResult],
                  theirs: dict[str, LoadResult]) -> list[Metric]:
    mine, other = details["ours"], details.get("orthanc", {})

    def their(*keys: str) -> float | None:
        value: Any = other
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        return value

    items = mine["metadata_items"]
    metrics = [
        Metric("dicomweb.qido.study", "QIDO-RS study search by PatientID (median)",
               mine["study_search"]["median_ms"], "ms",
               orthanc=their("study_search", "median_ms")),
        Metric("dicomweb.qido.instances", f"QIDO-RS instances of the {items}-slice series "
               "(median)", mine["instance_search"]["median_ms"], "ms",
               orthanc=their("instance_search", "median_ms")),
        Metric("dicomweb.metadata.first", f"Series metadata, {items} instances, first request "
               "on a fresh server", mine["metadata_first_ms"], "ms",
               orthanc=their("metadata_first_ms")),
        Metric("dicomweb.metadata.warm", f"Series metadata, {items} instances, warm (median)",
               mine["metadata_warm"]["median_ms"], "ms",
               orthanc=their("metadata_warm", "median_ms"),
               note=f"{mine['metadata_bytes'] / 1024:.0f} KiB ours, "
                    f"{(their('metadata_bytes') or 0) / 1024:.0f} KiB Orthanc"),
    ]
    for key, result in load.items():
        fmt, clients = key.split(".")
        other_run = theirs.get(key)
        errors = f"; errors ours {result.errors}" + (
            f", Orthanc {other_run.errors}" if other_run is not None else "")
        metrics.append(Metric(
            f"dicomweb.rendered.{key}",
            f"DICOMweb rendered 256x256 {fmt.upper()}, {clients[1:]} client(s)",
            round(result.per_second, 1), "/s",
            orthanc=None if other_run is None else round(other_run.per_second, 1),
            note=f"{result.generator}{errors}"))
    return metrics


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally clean-up runs
    metrics, details = run()
    report("dicomweb", metrics, details)


if __name__ == "__main__":
    main()
