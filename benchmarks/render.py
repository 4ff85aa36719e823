"""Server-side render time per slice, without HTTP: ``python benchmarks/render.py``.

For 256x256 (GE MP-RAGE middle slice), 384x384 (Siemens ``1.dcm``), 512x512
(the GE slice upsampled 2x into a temp file, see ``common.make_512_slice``) and
``brain512`` (the middle slice of the demo's axial T1 written at 512x512, see
``common.demo_series``: the GE series is a grid phantom, whose PNGs are a tenth
the size of a head's), to PNG and to JPEG:

* cold: ``read_stored`` (the server's read: ``fastheader.read_dataset``) + ``decode_frame``
  + ``render`` (no decoded-frame cache; the file itself is in the OS page cache
  after the first run),
* warm: ``render`` of an already decoded frame (what a cache hit costs),
* naive baseline: the decoded pixel array windowed in float64 and written by
  Pillow with its defaults (PNG level 6 / JPEG quality 90).

Then what decoding costs per transfer syntax: ``read_stored`` +
``decode_frame`` of the same 384x384 Siemens slice in each of the corpus's nine
syntaxes, and in HTJ2K lossless (made with OpenJPH through ``imagecodecs``, a
test dependency; left out, with a note, when it is not installed).

Every request uses another window (centre and width around the header's), so
nothing can be reused between runs. Median and p95 over hundreds of runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: put the repo root, not benchmarks/, first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import tempfile
import time
from collections.abc import Callable
from io import BytesIO
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset

from benchmarks.common import (
    SIEMENS_384,
    SIEMENS_SYNTAXES,
    Metric,
    corpus_dir,
    demo_series,
    ge_middle_slice,
    log,
    make_512_slice,
    report,
    summary_ms,
)
from viewer.fastheader import read_file
from viewer.render import DecodedFrame, Window, decode_frame, encode, render, to_display

FORMATS = {"png": "image/png", "jpeg": "image/jpeg"}
WARM_TARGET_MS = 2.0  # warm render of a 512x512 slice to PNG, median
LABELS = {"256": "256x256", "384": "384x384", "512": "512x512 phantom",
          "brain512": "512x512 brain"}


def windows_around(center: float, width: float, count: int = 16) -> list[Window]:
    """``count`` different windows near the header's, so each run renders anew."""
    out = []
    for i in range(count):
        c = center + width * (0.25 * ((i % 5) - 2) / 2)
        w = width * (0.6 + 0.8 * ((i * 7) % count) / count)
        out.append(Window(round(c, 1), round(max(w, 2.0), 1)))
    return out


def timed_runs(
    fn: Callable[[int], object], min_runs: int = 200, min_seconds: float = 1.0,
    max_seconds: float = 3.0, warmup: int = 5,
) -> list[float]:
    """Durations (s) of ``fn(i)``: at least ``min_runs`` and ``min_seconds``, at most
    ``max_seconds`` of measuring."""
    for i in range(warmup):
        fn(i)
    durations: list[float] = []
    started = time.perf_counter()
    i = 0
    while True:
        elapsed = time.perf_counter() - started
        if elapsed >= max_seconds or (len(durations) >= min_runs and elapsed >= min_seconds):
            break
        t0 = time.perf_counter()
        fn(i)
        durations.append(time.perf_counter() - t0)
        i += 1
    return durations


def naive_render(raw: np.ndarray, slope: float, intercept: float, window: Window,
                 fmt: str) -> bytes:
    """The obvious implementation: float64 everywhere, Pillow's default encoders."""
    values = raw.astype(np.float64) * slope + intercept
    c, w = window.center, window.width
    scaled = ((values - (c - 0.5)) / (w - 1) + 0.5).clip(0.0, 1.0) * 255.0
    image = Image.fromarray(np.rint(scaled).astype(np.uint8))
    buffer = BytesIO()
    if fmt == "png":
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def read_stored(path: Path) -> Dataset:
    """A file read as the server reads a stored one (walked, or by pydicom)."""
    return read_file(path, keep_pixels=True)


def header_window(frame: DecodedFrame) -> Window:
    if frame.header_window is not None:
        return frame.header_window
    low, high, _, _ = frame.stats()
    return Window((low + high) / 2, max(high - low, 2.0))


def bench_image(size: str, path: Path) -> tuple[list[Metric], dict[str, Any]]:
    """All cases for one input file."""
    ds = pydicom.dcmread(path)
    frame = decode_frame(ds)
    base = header_window(frame)
    windows = windows_around(base.center, base.width)
    raw = ds.pixel_array
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    metrics: list[Metric] = []
    details: dict[str, Any] = {"file": str(path), "shape": list(frame.pixels.shape),
                               "transfer_syntax": str(ds.file_meta.TransferSyntaxUID),
                               "header_window": base.as_dict(), "cases": {}}
    square = LABELS[size]

    def add(key: str, label: str, durations: list[float], output: bytes | None = None,
            target: tuple[str, float] | None = None) -> None:
        stats = summary_ms(durations)
        if output is not None:
            stats["bytes"] = len(output)
        details["cases"][key] = stats
        metrics.append(Metric(f"render.{size}.{key}", f"Render {square} {label}",
                              stats["median_ms"], "ms", target,
                              note=f"median; p95 {stats['p95_ms']:.2f} ms, n={stats['n']}"))

    for fmt, media in FORMATS.items():
        log(f"render {square} {fmt}: cold, warm, naive")

        def cold(i: int, media: str = media) -> bytes:
            fresh = decode_frame(read_stored(path))
            return render(fresh, windows[i % len(windows)], media_type=media)

        def warm(i: int, media: str = media) -> bytes:
            return render(frame, windows[i % len(windows)], media_type=media)

        def naive(i: int, fmt: str = fmt) -> bytes:
            return naive_render(raw, slope, intercept, windows[i % len(windows)], fmt)

        target = ("<=", WARM_TARGET_MS) if size.endswith("512") and fmt == "png" else None
        add(f"cold.{fmt}", f"{fmt.upper()} cold (read+decode+render)", timed_runs(cold),
            cold(0))
        add(f"warm.{fmt}", f"{fmt.upper()} warm (render only)", timed_runs(warm), warm(0),
            target)
        add(f"naive.{fmt}", f"{fmt.upper()} naive baseline (float64 + Pillow)",
            timed_runs(naive, min_runs=50), naive(0))

    if size in ("256", "512"):
        # Where a cold render spends its time: reading the file, then decoding the pixels.
        add("stage.read", "stage: read the file (fastheader.read_dataset)",
            timed_runs(lambda i: read_stored(path)))
        add("stage.decode", "stage: decode_frame (pixels + modality LUT)",
            timed_runs(lambda i: decode_frame(ds)))
    if size.endswith("512"):
        # Where a warm 512x512 render spends its time.
        image = to_display(frame, windows[0])
        add("stage.window", "stage: window to 8-bit",
            timed_runs(lambda i: to_display(frame, windows[i % len(windows)])))
        add("stage.png", "stage: PNG encode", timed_runs(lambda i: encode(image, "image/png")))
        add("stage.jpeg", "stage: JPEG encode",
            timed_runs(lambda i: encode(image, "image/jpeg")))
    cases = details["cases"]
    details["png_bytes_ours_vs_pillow"] = round(
        cases["warm.png"]["bytes"] / cases["naive.png"]["bytes"], 3)
    details["speedup_warm_png_vs_naive"] = round(
        cases["naive.png"]["median_ms"] / cases["warm.png"]["median_ms"], 1)
    details["speedup_warm_jpeg_vs_naive"] = round(
        cases["naive.jpeg"]["median_ms"] / cases["warm.jpeg"]["median_ms"], 1)
    return metrics, details


def htj2k_copy(path: Path, folder: Path) -> Path | None:
    """``path`` re-encoded as HTJ2K lossless (no sample exists), or None without imagecodecs."""
    try:
        import imagecodecs
    except ImportError:
        return None
    from pydicom.encaps import encapsulate
    from pydicom.uid import HTJ2KLossless

    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([imagecodecs.htj2k_encode(ds.pixel_array, reversible=True)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = HTJ2KLossless
    out = folder / "htj2k-lossless.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


def bench_decode(tmp: Path) -> tuple[list[Metric], dict[str, Any]]:
    """Cold decode (read + decode_frame) of one slice in every transfer syntax at hand."""
    files = sorted((corpus_dir() / SIEMENS_SYNTAXES).glob("*.dcm"))
    htj2k = htj2k_copy(corpus_dir() / SIEMENS_384, tmp)
    details: dict[str, Any] = {} if htj2k else {
        "htj2k": "not measured: imagecodecs (requirements-dev.txt) is not installed"}
    metrics = []
    for path in files + ([htj2k] if htj2k else []):
        syntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        log(f"decode 384x384 {syntax.name}")
        stats = summary_ms(timed_runs(lambda i, p=path: decode_frame(read_stored(p)),
                                      min_runs=20, min_seconds=0.5))
        details[str(syntax)] = {"file": path.name, **stats}
        metrics.append(Metric(f"render.decode.{path.stem}",
                              f"Decode 384x384 {syntax.name} ({path.name})",
                              stats["median_ms"], "ms",
                              note=f"read + decode_frame; p95 {stats['p95_ms']:.2f} ms"))
    return metrics, details


def run() -> tuple[list[Metric], dict[str, Any]]:
    """All sizes; returns the table rows and the details for the JSON file."""
    metrics: list[Metric] = []
    details: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="viewer-bench-render-") as tmp:
        middle = ge_middle_slice()
        inputs = {
            "256": middle,
            "384": corpus_dir() / SIEMENS_384,
            "512": make_512_slice(middle, Path(tmp)),
        }
        brain = demo_series(Path(tmp) / "brain", "Ax T1", matrix=512)
        inputs["brain512"] = sorted(
            brain, key=lambda p: int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber)
        )[len(brain) // 2]
        for size, path in inputs.items():
            rows, info = bench_image(size, path)
            metrics.extend(rows)
            details[size] = info
        decode_rows, details["decode"] = bench_decode(Path(tmp))
        metrics.extend(decode_rows)
    details["512"]["note"] = (
        "512x512 made by upsampling the GE middle slice 2x (bilinear) with pydicom/Pillow "
        "into a temp dir; see benchmarks/common.py make_512_slice"
    )
    return metrics, details


def main() -> None:
    metrics, details = run()
    report("render", metrics, details)


if __name__ == "__main__":
    main()
