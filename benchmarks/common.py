"""Helpers shared by the benchmark scripts.

Paths and test data, statistics, child processes (started in their own process
group so they can always be stopped), a small threaded HTTP load generator,
result files and the Markdown table every script prints.

The scripts are run as files (``python benchmarks/render.py``), which puts the
``benchmarks`` folder first on ``sys.path``; since ``benchmarks/http.py`` would
then shadow the standard library's ``http``, each script replaces that entry
with the repository root before importing anything else.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
PYTHON = sys.executable
GE_SERIES = "ge-t1-mprage"
SIEMENS_384 = Path("siemens-transfer-syntaxes") / "1.dcm"


# --- test data ----------------------------------------------------------------------------


def corpus_dir() -> Path:
    """``$VIEWER_TEST_CORPUS`` (relative to the repository root), else ``../shared/corpus``."""
    value = os.environ.get("VIEWER_TEST_CORPUS")
    path = Path(value) if value else ROOT.parent / "shared" / "corpus"
    if not path.is_absolute():
        path = ROOT / path
    path = path.resolve()
    if not path.is_dir():
        raise SystemExit(f"test corpus not found at {path}; set VIEWER_TEST_CORPUS")
    return path


def is_dicom(path: Path) -> bool:
    """True for a Part 10 file (``DICM`` after the 128-byte preamble)."""
    with path.open("rb") as handle:
        handle.seek(128)
        return handle.read(4) == b"DICM"


def ge_files() -> list[Path]:
    """The 130 slices of the GE T1 MP-RAGE series (the folder's LICENSE left out)."""
    folder = corpus_dir() / GE_SERIES
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_dicom(p))
    if len(files) != 130:
        raise SystemExit(f"expected 130 DICOM files in {folder}, found {len(files)}")
    return files


def ge_middle_slice() -> Path:
    """The GE slice in the middle of the stack (by Instance Number)."""
    import pydicom

    numbered = sorted(
        (int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber), p) for p in ge_files()
    )
    return numbered[len(numbered) // 2][1]


def make_512_slice(source: Path, folder: Path) -> Path:
    """Write a 512x512 copy of a 256x256 slice into ``folder`` and return its path.

    There is no 512x512 series in the corpus, so one is made: the int16 pixels
    are upsampled 2x (bilinear, Pillow mode ``F``, rounded back to int16), Rows,
    Columns and Pixel Spacing are updated and the file gets a new SOP Instance
    UID. Everything else (window, rescale, transfer syntax) is kept.
    """
    import numpy as np
    import pydicom
    from PIL import Image
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(source)
    pixels = ds.pixel_array.astype(np.float32)
    rows, columns = pixels.shape
    resized = Image.fromarray(pixels, mode="F").resize(
        (columns * 2, rows * 2), Image.Resampling.BILINEAR
    )
    info = np.iinfo(ds.pixel_array.dtype)
    upsampled = np.rint(np.asarray(resized)).clip(info.min, info.max).astype(ds.pixel_array.dtype)
    ds.Rows, ds.Columns = upsampled.shape
    if "PixelSpacing" in ds:
        ds.PixelSpacing = [float(v) / 2 for v in ds.PixelSpacing]
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PixelData = upsampled.tobytes()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "upsampled-512.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


# --- statistics ---------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    """Median, p95, mean and count of durations given in seconds, in milliseconds."""
    ms = [s * 1000 for s in seconds]
    return {
        "median_ms": round(statistics.median(ms), 3) if ms else float("nan"),
        "p95_ms": round(percentile(ms, 95), 3),
        "mean_ms": round(statistics.fmean(ms), 3) if ms else float("nan"),
        "n": len(ms),
    }


# --- metrics, tables and result files -----------------------------------------------------


@dataclass
class Metric:
    """One row of the results table; ``target`` is compared with ``ratio`` when ``on_ratio``."""

    key: str
    label: str
    value: float | None
    unit: str
    target: tuple[str, float] | None = None  # (">=" or "<=", limit)
    on_ratio: bool = False
    orthanc: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.orthanc:
            return None
        return self.value / self.orthanc

    @property
    def passed(self) -> bool | None:
        if self.target is None:
            return None
        measured = self.ratio if self.on_ratio else self.value
        if measured is None:
            return False
        op, limit = self.target
        return measured >= limit if op == ">=" else measured <= limit

    def target_text(self) -> str:
        if self.target is None:
            return ""
        op, limit = self.target
        sign = "≥" if op == ">=" else "≤"
        return f"{sign} {limit:g}x Orthanc" if self.on_ratio else f"{sign} {limit:g} {self.unit}"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["target"] = list(self.target) if self.target else None
        data["target_text"] = self.target_text()
        data["ratio"] = None if self.ratio is None else round(self.ratio, 3)
        data["passed"] = self.passed
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Metric:
        target = data.get("target")
        return cls(
            key=data["key"],
            label=data["label"],
            value=data.get("value"),
            unit=data.get("unit", ""),
            target=(target[0], float(target[1])) if target else None,
            on_ratio=bool(data.get("on_ratio")),
            orthanc=data.get("orthanc"),
            note=data.get("note", ""),
        )


def fmt(value: float | None, unit: str = "") -> str:
    """A number with a sensible number of digits, and its unit."""
    if value is None or value != value:  # None or NaN
        return "-"
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2 if abs(value) >= 1 else 3
    text = f"{value:,.{digits}f}"
    return f"{text} {unit}".strip()


def markdown_table(metrics: Sequence[Metric]) -> str:
    """The results as one Markdown table."""
    lines = [
        "| Metric | Ours | Target | Orthanc | Ours/Orthanc | Pass |",
        "|---|---:|---|---:|---:|:---:|",
    ]
    for m in metrics:
        passed = {True: "yes", False: "**NO**", None: ""}[m.passed]
        ratio = "" if m.ratio is None else f"{m.ratio:.2f}x"
        orthanc = "" if m.orthanc is None else fmt(m.orthanc, m.unit)
        label = f"{m.label} ({m.note})" if m.note else m.label
        lines.append(
            f"| {label} | {fmt(m.value, m.unit)} | {m.target_text()} | {orthanc} | {ratio} "
            f"| {passed} |"
        )
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    """Where and when the numbers were taken."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT, capture_output=True, text=True,
    ).stdout.strip()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "loadavg": [round(v, 2) for v in os.getloadavg()],
        "git": commit + ("-dirty" if dirty else ""),
        "command": " ".join([PYTHON, *sys.argv]),
    }


def write_results(name: str, metrics: Sequence[Metric], details: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/<name>.json`` and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    payload = {
        "name": name,
        "environment": environment(),
        "metrics": [m.as_dict() for m in metrics],
        "details": details,
    }
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def report(name: str, metrics: Sequence[Metric], details: dict[str, Any]) -> None:
    """Print the table and where the JSON went (what each script ends with)."""
    path = write_results(name, metrics, details)
    print(markdown_table(metrics))
    print(f"\nresults: {path.relative_to(ROOT)}")


def log(message: str) -> None:
    """Progress on stderr, so stdout stays the table."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- processes ----------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_process(
    argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session (its own process group), output to ``log_path``."""
    with log_path.open("ab") as out:
        return subprocess.Popen(
            list(argv), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 10.0) -> None:
    """Stop a process started by ``start_process`` and its whole group: TERM, then KILL."""
    if proc is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid``."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def proc_status_kb(pid: int, field_name: str) -> int | None:
    """A ``/proc/<pid>/status`` field such as VmHWM or VmRSS, in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_idle(pids: Sequence[int], quiet: float = 0.3, timeout: float = 15.0) -> None:
    """Wait until none of ``pids`` uses CPU for ``quiet`` seconds (e.g. workers booted)."""
    deadline = time.monotonic() + timeout
    before = [cpu_seconds(p) for p in pids]
    while time.monotonic() < deadline:
        time.sleep(quiet)
        after = [cpu_seconds(p) for p in pids]
        if after == before:
            return
        before = after


# --- HTTP ---------------------------------------------------------------------------------


@dataclass
class Reply:
    """One HTTP answer, with the time it took."""

    status: int
    body: bytes
    headers: dict[str, str]
    seconds: float


def get(
    port: int, path: str, headers: dict[str, str] | None = None,
    conn: http.client.HTTPConnection | None = None, method: str = "GET", body: bytes | None = None,
) -> Reply:
    """One request to 127.0.0.1:``port`` (on ``conn`` if given, else a new connection)."""
    own = conn is None
    connection = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        start = time.perf_counter()
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
        elapsed = time.perf_counter() - start
        return Reply(response.status, data, {k.lower(): v for k, v in response.getheaders()},
                     elapsed)
    except (OSError, http.client.HTTPException):
        connection.close()
        raise
    finally:
        if own:
            connection.close()


def wait_http(port: int, path: str, timeout: float = 30.0,
              proc: subprocess.Popen[bytes] | None = None) -> float:
    """Poll until ``path`` answers at all (any status); return the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before answering")
        try:
            get(port, path)
            return time.monotonic() - start
        except (OSError, http.client.HTTPException):
            time.sleep(0.05)
    raise TimeoutError(f"127.0.0.1:{port}{path} did not answer within {timeout:.0f} s")


@dataclass
class LoadResult:
    """What a bounded load run measured."""

    clients: int
    seconds: float
    requests: int
    errors: int
    bytes: int
    statuses: dict[int, int]
    connections: int
    latencies: list[float] = field(repr=False, default_factory=list)
    server_cpu_s: float | None = None  # CPU time the server processes used meanwhile

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "clients": self.clients,
            "seconds": round(self.seconds, 3),
            "requests": self.requests,
            "errors": self.errors,
            "per_second": round(self.per_second, 2),
            "mean_bytes": round(self.bytes / self.requests) if self.requests else 0,
            "statuses": self.statuses,
            "connections_opened": self.connections,
            "latency": summary_ms(self.latencies),
            "server_cpu_ms_per_request": (
                round(self.server_cpu_s * 1000 / self.requests, 3)
                if self.server_cpu_s is not None and self.requests else None
            ),
        }


class _CountingConnection(http.client.HTTPConnection):
    """An HTTPConnection that counts how often it (re)connects."""

    opened = 0

    def connect(self) -> None:
        super().connect()
        self.opened += 1


def run_load(
    port: int, path_for: Callable[[int, int], str], headers: dict[str, str], clients: int,
    duration: float, max_requests: int = 100_000, server_pids: Sequence[int] = (),
) -> LoadResult:
    """``clients`` threads, each with one keep-alive connection, sending GETs for ``duration`` s.

    ``path_for(client, i)`` names the i-th request of a client. A request in
    flight at the deadline is finished and counted; only 200 answers count as
    requests, anything else as an error. The CPU time of ``server_pids`` over the
    run is recorded too: unlike throughput, it hardly depends on what else the
    machine is doing.
    """
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    totals = {"ok": 0, "errors": 0, "bytes": 0, "connections": 0}
    barrier = threading.Barrier(clients + 1)
    clock: dict[str, float] = {}

    def client(number: int) -> None:
        conn = _CountingConnection("127.0.0.1", port, timeout=60)
        mine: list[float] = []
        seen: dict[int, int] = {}
        ok = errors = size = 0
        barrier.wait()
        deadline = clock["deadline"]
        i = 0
        while time.perf_counter() < deadline and i < max_requests:
            start = time.perf_counter()
            try:
                conn.request("GET", path_for(number, i), headers=headers)
                response = conn.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                errors += 1
                i += 1
                if errors > 50:
                    break
                continue
            elapsed = time.perf_counter() - start
            seen[response.status] = seen.get(response.status, 0) + 1
            if response.status == 200:
                ok += 1
                size += len(body)
                mine.append(elapsed)
            else:
                errors += 1
            i += 1
        conn.close()
        with lock:
            latencies.extend(mine)
            for status, count in seen.items():
                statuses[status] = statuses.get(status, 0) + count
            totals["ok"] += ok
            totals["errors"] += errors
            totals["bytes"] += size
            totals["connections"] += conn.opened

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    cpu_before = sum(cpu_seconds(p) for p in server_pids)
    start = time.perf_counter()
    clock["deadline"] = start + duration
    barrier.wait()
    for thread in threads:
        thread.join(timeout=duration + 120)
    seconds = time.perf_counter() - start
    cpu = sum(cpu_seconds(p) for p in server_pids) - cpu_before if server_pids else None
    return LoadResult(clients, seconds, totals["ok"], totals["errors"], totals["bytes"],
                      statuses, totals["connections"], latencies, cpu)


def fetch_all(
    port: int, paths: Sequence[str], headers: dict[str, str], connections: int
) -> tuple[float, int]:
    """Fetch every path once over ``connections`` parallel keep-alive connections.

    Returns the wall time and the number of non-200 answers.
    """
    queue: Iterator[str] = iter(paths)
    lock = threading.Lock()
    failures = [0]

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            while True:
                with lock:
                    path = next(queue, None)
                if path is None:
                    return
                try:
                    reply = get(port, path, headers, conn)
                    ok = reply.status == 200
                except (OSError, http.client.HTTPException):
                    ok = False
                if not ok:
                    with lock:
                        failures[0] += 1
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(connections)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return time.perf_counter() - start, failures[0]
