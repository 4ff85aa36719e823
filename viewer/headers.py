"""What the viewer needs from a DICOM header, frame by frame.

Classic images keep position, window and rescale at the top level; enhanced
multi-frame objects keep them per frame in functional groups, with shared
defaults. ``frame_header`` hides that difference from the rest of the code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

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


def _groups(ds: Dataset, index: int) -> list[Dataset]:
    """The functional groups of frame ``index``: its per-frame one, then the shared one."""
    groups = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if isinstance(per_frame, Sequence) and 0 <= index < len(per_frame):
        groups.append(per_frame[index])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if isinstance(shared, Sequence) and shared:
        groups.append(shared[0])
    return groups


def _lookup(ds: Dataset, groups: list[Dataset], macro: str, keyword: str) -> object:
    """Per-frame value if present, else the shared one, else the top-level one."""
    for group in groups:
        sequence = group.get(macro)
        if isinstance(sequence, Sequence) and sequence:
            value = sequence[0].get(keyword)
            if value is not None:
                return value
    return ds.get(keyword)


def frame_header(ds: Dataset, index: int = 0) -> FrameHeader:
    """Header facts for frame ``index`` (0-based) of ``ds``."""
    groups = _groups(ds, index)  # looked up once, not once per value
    values = {name: _lookup(ds, groups, *where) for name, where in ENHANCED_MACROS.items()}
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


JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}  # + JPEG-LS SOF55
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


def codestream_size(data: bytes) -> tuple[int, int] | None:
    """(rows, columns) that a JPEG, JPEG-LS or JPEG 2000 codestream declares.

    Decoders allocate what the codestream says, not what Rows/Columns say, so
    a frame of a few bytes can claim 65535x65535 pixels. None when ``data`` is
    not one of these codestreams or its header cannot be found.
    """
    if data.startswith(JP2_SIGNATURE):  # a JP2 file: the codestream is in the jp2c box
        offset = 12
        while offset + 8 <= len(data) and data[offset + 4 : offset + 8] != b"jp2c":
            length = int.from_bytes(data[offset : offset + 4], "big")
            if length < 8:
                return None
            offset += length
        data = data[offset + 8 :]
    if data[:4] == b"\xff\x4f\xff\x51" and len(data) >= 24:  # SOC then SIZ (15444-1 A.5.1)
        width, height = (int.from_bytes(data[i : i + 4], "big") for i in (8, 12))
        x_offset, y_offset = (int.from_bytes(data[i : i + 4], "big") for i in (16, 20))
        return max(height - y_offset, 0), max(width - x_offset, 0)
    if data[:2] != b"\xff\xd8":
        return None
    offset = 2  # after SOI: walk the marker segments up to the frame header (SOFn)
    while offset + 4 <= len(data) and data[offset] == 0xFF:
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
        elif marker in JPEG_SOF_MARKERS:
            if offset + 9 > len(data):
                return None
            rows = int.from_bytes(data[offset + 5 : offset + 7], "big")
            columns = int.from_bytes(data[offset + 7 : offset + 9], "big")
            return (rows, columns) if rows else None  # 0 rows: defined later by DNL
        elif marker == 0x01 or 0xD0 <= marker <= 0xD9:  # markers without a length
            offset += 2
        else:
            offset += 2 + int.from_bytes(data[offset + 2 : offset + 4], "big")
    return None


def stored_syntax(path: Path) -> str:
    """The transfer syntax in a file's meta ("" if unreadable): for an instance indexed
    from a PACS's metadata, which does not carry it, until its file was fetched."""
    try:
        return str(read_file_meta_info(path).get("TransferSyntaxUID", ""))
    except Exception:
        return ""
