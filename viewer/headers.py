"""What the viewer needs from a DICOM header, frame by frame.

Classic images keep position, window and rescale at the top level; enhanced
multi-frame objects keep them per frame in functional groups, with shared
defaults. ``frame_header`` hides that difference from the rest of the code.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

ENHANCED_MACROS = {
    "position": ("PlanePositionSequence", "ImagePositionPatient"),
    "orientation": ("PlaneOrientationSequence", "ImageOrientationPatient"),
    "pixel_spacing": ("PixelMeasuresSequence", "PixelSpacing"),
    "window_center": ("FrameVOILUTSequence", "WindowCenter"),
    "window_width": ("FrameVOILUTSequence", "WindowWidth"),
    "voi_function": ("FrameVOILUTSequence", "VOILUTFunction"),
    "slope": ("PixelValueTransformationSequence", "RescaleSlope"),
    "intercept": ("PixelValueTransformationSequence", "RescaleIntercept"),
}


@dataclass(frozen=True)
class FrameHeader:
    """Geometry and the default grey-scale transforms of one frame."""

    position: list[float] | None
    orientation: list[float] | None
    pixel_spacing: list[float] | None
    window_center: float | None
    window_width: float | None
    voi_function: str
    slope: float
    intercept: float


def _first_number(value: object) -> float | None:
    """The first of a possibly multi-valued number; None when absent or garbage."""
    if value is None or value == "":
        return None
    if isinstance(value, (MultiValue, list, tuple)):
        if not value:
            return None
        value = value[0]
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if number == number and abs(number) != float("inf") else None


def _numbers(value: object, count: int) -> list[float] | None:
    """A fixed-length vector of finite numbers, or None if malformed."""
    if value is None or not isinstance(value, (MultiValue, list, tuple)) or len(value) != count:
        return None
    try:
        numbers = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    if any(n != n or abs(n) == float("inf") for n in numbers):
        return None
    return numbers


def _lookup(ds: Dataset, index: int, macro: str, keyword: str) -> object:
    """Per-frame value if present, else the shared one, else the top-level one."""
    groups = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and 0 <= index < len(per_frame):
        groups.append(per_frame[index])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    for group in groups:
        sequence = group.get(macro)
        if sequence:
            value = sequence[0].get(keyword)
            if value is not None:
                return value
    return ds.get(keyword)


def frame_header(ds: Dataset, index: int = 0) -> FrameHeader:
    """Header facts for frame ``index`` (0-based) of ``ds``."""
    values = {name: _lookup(ds, index, *where) for name, where in ENHANCED_MACROS.items()}
    slope = _first_number(values["slope"])
    intercept = _first_number(values["intercept"])
    width = _first_number(values["window_width"])
    center = _first_number(values["window_center"])
    if width is None or width <= 0 or center is None:
        center = width = None
    function = str(values["voi_function"] or "LINEAR").upper()
    return FrameHeader(
        position=_numbers(values["position"], 3),
        orientation=_numbers(values["orientation"], 6),
        pixel_spacing=_numbers(values["pixel_spacing"], 2),
        window_center=center,
        window_width=width,
        voi_function=function if function in {"LINEAR", "LINEAR_EXACT", "SIGMOID"} else "LINEAR",
        slope=slope if slope not in (None, 0.0) else 1.0,
        intercept=intercept if intercept is not None else 0.0,
    )


def number_of_frames(ds: Dataset) -> int:
    """NumberOfFrames, treating absent, empty or zero as one frame."""
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        return 1
    return max(frames, 1)


def text(ds: Dataset, keyword: str, limit: int = 64) -> str:
    """A header value as clean text for the index (never raises)."""
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed value must not stop an import
        return ""
    if value is None:
        return ""
    if isinstance(value, MultiValue):
        value = "\\".join(str(v) for v in value)
    return str(value).strip().replace("\x00", "")[:limit]
