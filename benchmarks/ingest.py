"""Import speed of the 130-file GE series: ``python benchmarks/ingest.py``.

Each run imports into a fresh temp data dir (new SQLite index, empty store):

* in-process through ``Importer.import_paths`` (services built before the clock
  starts),
* through the CLI, ``python -m viewer.cli import <files>``, as wall time of the
  subprocess (interpreter start and imports included),
* plus the CLI's fixed cost alone (``python -m viewer.cli config``).

Median of 3 runs each. The data dir's filesystem is recorded, since every
stored file is fsynced.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: put the repo root, not benchmarks/, first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import os
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


def import_in_process(files: list[Path], data_dir: Path) -> tuple[float, float]:
    """Wall and CPU seconds of ``Importer.import_paths`` of ``files`` into a fresh ``data_dir``."""
    services = services_for(load_config({"VIEWER_DATA_DIR": str(data_dir)}))
    try:
        start, cpu = time.perf_counter(), time.process_time()
        summary = services.importer.import_paths(files)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
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
    timings: dict[str, list[float]] = {"api": [], "api_cpu": [], "cli": [], "cli_startup": []}
    try:
        for run_number in range(RUNS):
            log(f"ingest run {run_number + 1}/{RUNS}: Importer API, CLI")
            wall, cpu = import_in_process(files, tmp / f"api-{run_number}")
            timings["api"].append(wall)
            timings["api_cpu"].append(cpu)
            timings["cli"].append(import_cli(files, tmp / f"cli-{run_number}"))
            timings["cli_startup"].append(cli_startup(tmp / "startup"))
            for name in (f"api-{run_number}", f"cli-{run_number}"):
                shutil.rmtree(tmp / name, ignore_errors=True)
        fs = filesystem_of(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = len(files)
    api_rate = n / statistics.median(timings["api"])
    cli_rate = n / statistics.median(timings["cli"])
    startup = statistics.median(timings["cli_startup"])
    target = (">=", TARGET_FILES_PER_S)
    metrics = [
        Metric("ingest.api", "Import 130 GE files, Importer API", round(api_rate, 1), "files/s",
               target, note=f"median of {RUNS}; {statistics.median(timings['api']):.2f} s, "
               f"of which CPU {statistics.median(timings['api_cpu']):.2f} s"),
        Metric("ingest.cli", "Import 130 GE files, CLI wall time", round(cli_rate, 1), "files/s",
               target, note=f"median of {RUNS}; {statistics.median(timings['cli']):.2f} s "
               "incl. start-up"),
        Metric("ingest.cli_startup", "CLI start-up (viewer.cli config)", round(startup * 1000),
               "ms", note=f"median of {RUNS}"),
    ]
    details = {
        "files": n,
        "bytes": sum(p.stat().st_size for p in files),
        "seconds": {k: [round(v, 4) for v in vs] for k, vs in timings.items()},
        "data_dir_filesystem": fs,
    }
    return metrics, details


def main() -> None:
    metrics, details = run()
    report("ingest", metrics, details)


if __name__ == "__main__":
    main()
