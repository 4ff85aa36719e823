"""Helpers shared by the benchmark scripts.

Paths and test data, statistics, child processes (started in their own process
group so they can always be stopped), HTTP load generators (threaded Python, or wrk),
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
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
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
SIEMENS_SYNTAXES = Path("siemens-transfer-syntaxes")  # one slice in nine transfer syntaxes
SIEMENS_384 = SIEMENS_SYNTAXES / "1.dcm"


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


def _upsampled_2x(ds: Any, series_uid: str | None = None) -> Any:
    """``ds`` with its int pixels upsampled 2x and a SOP Instance UID derived from the old one.

    Bilinear (Pillow mode ``F``), rounded back to the original integer type;
    Rows, Columns and Pixel Spacing follow; everything else (position,
    orientation, window, rescale, transfer syntax) is kept. The new UIDs are
    derived from the old ones, so the same input always gives the same output.
    """
    import numpy as np
    from PIL import Image
    from pydicom.uid import generate_uid

    original = ds.pixel_array
    rows, columns = original.shape
    resized = Image.fromarray(original.astype(np.float32), mode="F").resize(
        (columns * 2, rows * 2), Image.Resampling.BILINEAR
    )
    info = np.iinfo(original.dtype)
    upsampled = np.rint(np.asarray(resized)).clip(info.min, info.max).astype(original.dtype)
    ds.Rows, ds.Columns = upsampled.shape
    if "PixelSpacing" in ds:
        ds.PixelSpacing = [float(v) / 2 for v in ds.PixelSpacing]
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(ds.SOPInstanceUID), "upsampled-512"])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if series_uid is not None:
        ds.SeriesInstanceUID = series_uid
    ds.PixelData = upsampled.tobytes()
    return ds


def make_512_slice(source: Path, folder: Path) -> Path:
    """Write a 512x512 copy of a 256x256 slice into ``folder`` and return its path.

    There is no 512x512 series in the corpus, so one is made: see ``_upsampled_2x``.
    """
    import pydicom

    ds = _upsampled_2x(pydicom.dcmread(source))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "upsampled-512.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def make_512_series(sources: Sequence[Path], folder: Path) -> list[Path]:
    """Write a 512x512 copy of a whole 256x256 series into ``folder``; return the paths.

    Same study (StudyInstanceUID kept), a new series: SeriesInstanceUID and every
    SOP Instance UID derived deterministically from the old ones, Series Number
    + 1000 and " (512x512 upsampled)" appended to the Series Description, so
    viewers and Orthanc list it next to the original. Position, orientation and
    the rest of each header are kept; Pixel Spacing is halved.
    """
    import pydicom
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, source in enumerate(sources):
        ds = pydicom.dcmread(source)
        series_uid = generate_uid(entropy_srcs=[str(ds.SeriesInstanceUID), "upsampled-512"])
        _upsampled_2x(ds, series_uid)
        if "SeriesNumber" in ds and ds.SeriesNumber not in (None, ""):
            ds.SeriesNumber = int(ds.SeriesNumber) + 1000
        ds.SeriesDescription = f"{ds.get('SeriesDescription', '')} (512x512 upsampled)".strip()
        path = folder / f"{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def demo_series(folder: Path, description: str, matrix: int) -> list[Path]:
    """One series of the demo study written at ``matrix`` x ``matrix``: a head with
    tissue texture, coil bias and a noise floor, where the corpus has only a phantom."""
    import pydicom

    from viewer.demo import write_demo_study

    return [path for path in write_demo_study(folder, matrix=matrix)
            if pydicom.dcmread(path, stop_before_pixels=True).SeriesDescription == description]


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


def machine_cpu() -> tuple[float, float]:
    """CPU seconds the whole machine has been busy (all cores) and stolen, from /proc/stat."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / tick, steal / tick


def wait_quiet(busy_cores: float = 0.25, window: float = 0.5, timeout: float = 5.0) -> float:
    """Wait until the machine uses under ``busy_cores`` for ``window`` s (or ``timeout``);
    return the busy cores of the last window."""
    deadline = time.monotonic() + timeout
    while True:
        before = machine_cpu()[0]
        time.sleep(window)
        busy = (machine_cpu()[0] - before) / window
        if busy < busy_cores or time.monotonic() >= deadline:
            return busy


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
    statuses: dict[int | str, int]  # HTTP status (wrk: "2xx/3xx", "other") -> count
    connections: int | None  # connections opened (None: the generator does not say)
    latencies: list[float] = field(repr=False, default_factory=list)
    server_cpu_s: float | None = None  # CPU time the server processes used meanwhile
    generator: str = "python"  # "python" (run_load) or "wrk" (run_wrk)
    latency_ms: dict[str, float] | None = None  # given by the generator, else from latencies
    generator_cpu_s: float | None = None  # CPU time of the load generator itself
    machine_cpu_s: tuple[float, float] | None = None  # (busy, stolen) CPU s of the machine
    attempts: int = 1  # runs made for this result (see ``quietest``)

    @property
    def other_cores(self) -> float | None:
        """Cores' worth of CPU used meanwhile by neither the server nor the generator."""
        if self.machine_cpu_s is None or self.server_cpu_s is None or not self.seconds:
            return None
        other = self.machine_cpu_s[0] - self.server_cpu_s - (self.generator_cpu_s or 0.0)
        return max(other, 0.0) / self.seconds

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "clients": self.clients,
            "generator": self.generator,
            "seconds": round(self.seconds, 3),
            "requests": self.requests,
            "errors": self.errors,
            "per_second": round(self.per_second, 2),
            "mean_bytes": round(self.bytes / self.requests) if self.requests else 0,
            "statuses": self.statuses,
            "connections_opened": self.connections,
            "latency": self.latency_ms or summary_ms(self.latencies),
            "server_cpu_ms_per_request": (
                round(self.server_cpu_s * 1000 / self.requests, 3)
                if self.server_cpu_s is not None and self.requests else None
            ),
            "server_cores": (round(self.server_cpu_s / self.seconds, 2)
                             if self.server_cpu_s is not None and self.seconds else None),
            "generator_cores": (round(self.generator_cpu_s / self.seconds, 2)
                                if self.generator_cpu_s is not None and self.seconds else None),
            "machine_busy_cores": (round(self.machine_cpu_s[0] / self.seconds, 2)
                                   if self.machine_cpu_s and self.seconds else None),
            "machine_steal_cores": (round(self.machine_cpu_s[1] / self.seconds, 2)
                                    if self.machine_cpu_s and self.seconds else None),
            "other_cores": None if self.other_cores is None else round(self.other_cores, 2),
            "attempts": self.attempts,
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
    statuses: dict[int | str, int] = {}
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
    machine_before, own_before = machine_cpu(), time.process_time()
    start = time.perf_counter()
    clock["deadline"] = start + duration
    barrier.wait()
    for thread in threads:
        thread.join(timeout=duration + 120)
    seconds = time.perf_counter() - start
    cpu = sum(cpu_seconds(p) for p in server_pids) - cpu_before if server_pids else None
    machine_after = machine_cpu()
    return LoadResult(clients, seconds, totals["ok"], totals["errors"], totals["bytes"],
                      statuses, totals["connections"], latencies, cpu,
                      generator_cpu_s=time.process_time() - own_before,
                      machine_cpu_s=(machine_after[0] - machine_before[0],
                                     machine_after[1] - machine_before[1]))


WRK_SCRIPT = """\
-- Written by benchmarks/common.py (run_wrk): cycle through the request paths.
local paths = {%(paths)s}
%(headers)s
local created = 0

function setup(thread)
  thread:set("id", created)
  created = created + 1
end

function init(args)
  prepared = {}
  for i, path in ipairs(paths) do
    prepared[i] = wrk.format("GET", path)
  end
  -- each wrk thread starts elsewhere in the list, like the Python clients
  n = (id * math.floor(#prepared / %(threads)d)) %% #prepared
end

function request()
  n = n %% #prepared + 1
  return prepared[n]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\\"requests\\": %%d, \\"duration_us\\": %%d, \\"bytes\\": %%d, " ..
    "\\"connect\\": %%d, \\"read\\": %%d, \\"write\\": %%d, \\"status\\": %%d, " ..
    "\\"timeout\\": %%d, \\"mean_us\\": %%.1f, \\"p50_us\\": %%d, \\"p95_us\\": %%d, " ..
    "\\"p99_us\\": %%d, \\"max_us\\": %%d}\\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency.mean, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), latency.max))
end
"""


def wrk_binary() -> str | None:
    """``wrk`` on PATH, unless ``BENCH_LOAD_GENERATOR=python`` asks for the Python one."""
    if os.environ.get("BENCH_LOAD_GENERATOR", "").lower() == "python":
        return None
    return shutil.which("wrk")


def load_generator() -> str:
    """The generator ``run_paths`` will use: ``"wrk"`` or ``"python"``."""
    return "wrk" if wrk_binary() else "python"


def _lua_string(text: str) -> str:
    return json.dumps(text)  # ASCII with JSON escapes is a valid Lua string literal


def wrk_threads(clients: int) -> int:
    """wrk threads for ``clients`` connections: one per core at most (-t1 -c1, -t2 -c4)."""
    return max(1, min(clients, 2, os.cpu_count() or 1))


def run_wrk(
    port: int, paths: Sequence[str], headers: dict[str, str], clients: int, duration: float,
    server_pids: Sequence[int] = (), script_dir: Path | None = None,
) -> LoadResult:
    """``wrk -t T -c clients`` for ``duration`` s, every request the next of ``paths``.

    The Lua script sets ``headers`` on every request and starts each wrk thread
    at another place in ``paths``. Only 2xx/3xx answers count as requests
    (wrk counts other statuses as errors). Latencies are wrk's (p50/p95/p99 in
    ms); bytes include the response headers.
    """
    binary = wrk_binary()
    if binary is None:
        raise RuntimeError("wrk is not on PATH")
    threads = wrk_threads(clients)
    header_lines = "\n".join(
        f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items())
    script = WRK_SCRIPT % {
        "paths": ",\n  ".join(_lua_string(p) for p in paths),
        "headers": header_lines, "threads": threads,
    }
    folder = Path(script_dir) if script_dir else Path(tempfile.mkdtemp(prefix="viewer-wrk-"))
    folder.mkdir(parents=True, exist_ok=True)
    script_path = folder / f"wrk-{port}-{clients}.lua"
    script_path.write_text(script)
    script_path.chmod(0o600)  # it holds the bearer token
    argv = [binary, f"-t{threads}", f"-c{clients}", f"-d{max(1, round(duration))}s",
            "--timeout", "30s", "-s", str(script_path), f"http://127.0.0.1:{port}/"]
    try:
        cpu_before = sum(cpu_seconds(p) for p in server_pids)
        machine_before = machine_cpu()
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 90)
        cpu = sum(cpu_seconds(p) for p in server_pids) - cpu_before if server_pids else None
        machine_after = machine_cpu()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        wrk_cpu = (after.ru_utime + after.ru_stime) - (usage.ru_utime + usage.ru_stime)
    finally:
        script_path.unlink(missing_ok=True)
        if script_dir is None:
            shutil.rmtree(folder, ignore_errors=True)
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}{done.stderr}")
    data = json.loads(line.removeprefix("WRKJSON "))
    bad_status = data["status"]
    errors = bad_status + data["connect"] + data["read"] + data["write"] + data["timeout"]
    ok = data["requests"] - bad_status
    latency = {
        "median_ms": round(data["p50_us"] / 1000, 3),
        "p95_ms": round(data["p95_us"] / 1000, 3),
        "p99_ms": round(data["p99_us"] / 1000, 3),
        "mean_ms": round(data["mean_us"] / 1000, 3),
        "max_ms": round(data["max_us"] / 1000, 3),
        "n": data["requests"],
    }
    statuses = {"2xx/3xx": ok, "other": bad_status} if bad_status else {"2xx/3xx": ok}
    return LoadResult(clients, data["duration_us"] / 1e6, ok, errors, data["bytes"],
                      statuses, None, [], cpu, f"wrk -t{threads} -c{clients}", latency,
                      generator_cpu_s=wrk_cpu,
                      machine_cpu_s=(machine_after[0] - machine_before[0],
                                     machine_after[1] - machine_before[1]))


def run_paths(
    port: int, paths: Sequence[str], headers: dict[str, str], clients: int, duration: float,
    server_pids: Sequence[int] = (), script_dir: Path | None = None,
) -> LoadResult:
    """Load with ``clients`` keep-alive connections cycling through ``paths``.

    ``wrk`` when it is on PATH (it hardly competes with the servers for the
    CPU), else the threaded Python generator ``run_load``; the result says which.
    Client ``c`` (or wrk thread) starts at another place in the list.
    """
    if wrk_binary():
        return run_wrk(port, paths, headers, clients, duration, server_pids, script_dir)
    stride = max(1, len(paths) // clients)

    def path_for(client: int, i: int) -> str:
        return paths[(client * stride + i) % len(paths)]

    result = run_load(port, path_for, headers, clients, duration, server_pids=server_pids)
    result.generator = f"Python, {clients} thread(s)"
    return result


class RetryBudget:
    """Seconds that may be spent re-running load runs the rest of the machine disturbed."""

    def __init__(self, seconds: float, noisy_cores: float = 0.25) -> None:
        self.left = seconds
        self.noisy_cores = noisy_cores
        self.retries = 0

    def quietest(self, measure: Callable[[], LoadResult], max_attempts: int = 3) -> LoadResult:
        """``measure()``; while other processes used over ``noisy_cores`` meanwhile and the
        budget lasts, wait for a quiet moment and measure again. Returns the run with the
        least other load (``attempts`` says how many were made)."""
        best = measure()
        attempts = 1
        while (best.other_cores or 0.0) > self.noisy_cores and attempts < max_attempts \
                and self.left >= best.seconds + 1:
            started = time.monotonic()
            wait_quiet(self.noisy_cores)
            again = measure()
            attempts += 1
            self.retries += 1
            self.left -= time.monotonic() - started
            if (again.other_cores or 0.0) < (best.other_cores or 0.0):
                best = again
        best.attempts = attempts
        return best


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
