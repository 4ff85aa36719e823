"""Import speed of the 130-file GE series: ``python benchmarks/ingest.py``.

Each run imports into a fresh temp data dir (new SQLite index, empty store):

* in-process through ``Importer.import_paths`` (services built before the clock
  starts), once with ``services.importer.workers = 1`` (parsing in this
  process) and once with ``workers = 2`` (files parsed by a pool of 2 forked
  processes; starting the pool is inside the clock),
* through the CLI, ``python -m viewer.cli import <files>`` with its default
  ``--jobs`` (one per core), as wall time of the subprocess (interpreter start
  and imports included),
* plus the CLI's fixed cost alone (``python -m viewer.cli config``).

Median of 3 runs each, the ways in interleaved. The data dir's filesystem is
recorded, since stored files are flushed to disk.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: put the repo root, not benchmarks/, first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from typing import Any

from benchmarks.common import PYTHON, ROOT, Metric, ge_files, log, report
from viewer import services_for
from viewer.config import load_config

RUNS = 3
WORKERS = (1, 2)  # services.importer.workers for the in-process runs
TARGET_FILES_PER_S = 300.0


def filesystem_of(path: Path) -> str:
    """The filesystem type of the mount that holds ``path`` (from /proc/mounts)."""
    best, kind = "", "unknown"
    resolved = str(path.resolve())
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _dev, mount, fstype = line.split()[:3]
            inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) > len(best):
                best, kind = mount, fstype
    except OSError:
        pass
    return kind


def children_cpu() -> float:
    """CPU seconds of this process's waited-for children (the import pool's workers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def import_in_process(files: list[Path], data_dir: Path, workers: int) -> tuple[float, float]:
    """Wall and CPU seconds (this process and its pool) of ``Importer.import_paths`` of
    ``files`` into a fresh ``data_dir``, with ``workers`` parsing processes."""
    services = services_for(load_config({"VIEWER_DATA_DIR": str(data_dir)}))
    services.importer.workers = workers
    try:
        start, cpu, pool_cpu = time.perf_counter(), time.process_time(), children_cpu()
        summary = services.importer.import_paths(files)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu + children_cpu() - pool_cpu
    finally:
        services.engine.dispose()
    if summary.counts["imported"] != len(files):
        raise RuntimeError(f"in-process import: {dict(summary.counts)}")
    return elapsed, cpu


def cli_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIEWER_")}
    env["VIEWER_DATA_DIR"] = str(data_dir)
    return env


def import_cli(files: list[Path], data_dir: Path) -> float:
    """Wall seconds of ``python -m viewer.cli import`` of ``files`` into ``data_dir``."""
    start = time.perf_counter()
    done = subprocess.run(
        [PYTHON, "-m", "viewer.cli", "import", *map(str, files)],
        cwd=ROOT, env=cli_env(data_dir), capture_output=True, text=True, timeout=300,
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0 or f"imported {len(files)}," not in done.stdout:
        raise RuntimeError(f"CLI import failed: {done.stdout}{done.stderr}")
    return elapsed


def cli_startup(data_dir: Path) -> float:
    """Wall seconds of ``python -m viewer.cli config`` (start-up cost of the command)."""
    start = time.perf_counter()
    subprocess.run([PYTHON, "-m", "viewer.cli", "config"], cwd=ROOT, env=cli_env(data_dir),
                   capture_output=True, check=True, timeout=60)
    return time.perf_counter() - start


def run() -> tuple[list[Metric], dict[str, Any]]:
    """Three runs of each way in; returns the table rows and the details."""
    files = ge_files()
    tmp = Path(tempfile.mkdtemp(prefix="viewer-bench-ingest-"))
    timings: dict[str, list[float]] = {"cli": [], "cli_startup": []}
    for workers in WORKERS:
        timings[f"api.w{workers}"], timings[f"api.w{workers}.cpu"] = [], []
    try:
        for run_number in range(RUNS):
            log(f"ingest run {run_number + 1}/{RUNS}: Importer API (workers "
                f"{', '.join(map(str, WORKERS))}), CLI")
            for workers in WORKERS:
                folder = tmp / f"api-{workers}-{run_number}"
                wall, cpu = import_in_process(files, folder, workers)
                timings[f"api.w{workers}"].append(wall)
                timings[f"api.w{workers}.cpu"].append(cpu)
                shutil.rmtree(folder, ignore_errors=True)
            timings["cli"].append(import_cli(files, tmp / f"cli-{run_number}"))
            shutil.rmtree(tmp / f"cli-{run_number}", ignore_errors=True)
            timings["cli_startup"].append(cli_startup(tmp / "startup"))
        fs = filesystem_of(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = len(files)
    median = {k: statistics.median(v) for k, v in timings.items()}
    target = (">=", TARGET_FILES_PER_S)
    metrics = []
    for workers in WORKERS:
        wall, cpu = median[f"api.w{workers}"], median[f"api.w{workers}.cpu"]
        metrics.append(Metric(
            f"ingest.api.w{workers}",
            f"Import 130 GE files, Importer API, workers={workers}", round(n / wall, 1),
            "files/s", target, note=f"median of {RUNS}; {wall:.2f} s, CPU {cpu:.2f} s"
            + (" incl. the pool's processes" if workers > 1 else "")))
    jobs = os.cpu_count() or 1
    metrics += [
        # No target: the CLI's start-up (the interpreter importing numpy, pydicom,
        # SQLAlchemy: ~1 s here, the row below) is paid once per command, not per file.
        Metric("ingest.cli", "Import 130 GE files, CLI wall time", round(n / median["cli"], 1),
               "files/s", note=f"median of {RUNS}; {median['cli']:.2f} s incl. "
               f"start-up; default --jobs ({jobs} here)"),
        Metric("ingest.cli_startup", "CLI start-up (viewer.cli config)",
               round(median["cli_startup"] * 1000), "ms", note=f"median of {RUNS}"),
    ]
    details = {
        "files": n,
        "bytes": sum(p.stat().st_size for p in files),
        "cpus": jobs,
        "seconds": {k: [round(v, 4) for v in vs] for k, vs in timings.items()},
        "data_dir_filesystem": fs,
    }
    return metrics, details


def main() -> None:
    metrics, details = run()
    report("ingest", metrics, details)


if __name__ == "__main__":
    main()
