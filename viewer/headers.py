"""What the viewer needs from a DICOM header, frame by frame.

Classic images keep position, window and rescale at the top level; enhanced
multi-frame objects keep them per frame in functional groups, with shared
defaults. ``frame_header`` hides that difference from the rest of the code.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from pydicom import config
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.valuerep import AMBIGUOUS_VR, VR

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


@cache
def _tag(keyword: str) -> BaseTag | None:
    tag = tag_for_keyword(keyword)
    return None if tag is None else BaseTag(tag)


def value(ds: Dataset, keyword: str) -> object:
    """``ds.get(keyword)``, with a shorter way for a value still as read from the file.

    pydicom's ``Dataset.__getitem__`` looks the converted element up three more
    times and checks for deferred values, sequences and ambiguous VRs, which
    costs as much as converting the value. For a plain element (read, not a
    sequence, not of an ambiguous VR) this converts it the way ``__getitem__``
    does, with the same function and character set, and keeps it in ``ds`` as
    ``__getitem__`` does; anything else is ``ds.get``'s.
    """
    tag = _tag(keyword)
    return _value(ds, keyword, tag, None if tag is None else ds._dict.get(tag))


def _value(ds: Dataset, keyword: str, tag: BaseTag | None, element: object) -> object:
    """``value`` once ``keyword``'s tag and the element under it are looked up."""
    if tag is None:
        return ds.get(keyword)
    if element is None:
        return None
    if type(element) is not RawDataElement or element.value is None or element.VR == VR.SQ:
        return ds.get(keyword)
    if tag == 0x00080005:  # Specific Character Set: itself read as ASCII
        return ds.get(keyword)
    converted = convert_raw_data_element(
        element, encoding=ds.original_character_set or ds._character_set, ds=ds
    )
    if converted.VR == VR.SQ or converted.VR in AMBIGUOUS_VR:
        return ds.get(keyword)
    ds[tag] = converted
    return converted.value


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
    per_frame = value(ds, "PerFrameFunctionalGroupsSequence")
    if isinstance(per_frame, Sequence) and 0 <= index < len(per_frame):
        groups.append(per_frame[index])
    shared = value(ds, "SharedFunctionalGroupsSequence")
    if isinstance(shared, Sequence) and shared:
        groups.append(shared[0])
    return groups


def _lookup(ds: Dataset, groups: list[Dataset], macro: str, keyword: str) -> object:
    """Per-frame value if present, else the shared one, else the top-level one."""
    for group in groups:
        sequence = value(group, macro)
        if isinstance(sequence, Sequence) and sequence:
            found = value(sequence[0], keyword)
            if found is not None:
                return found
    return value(ds, keyword)


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
        frames = int(value(ds, "NumberOfFrames") or 1)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return 1
    return max(frames, 1)


# String VRs whose raw value ``text`` reads itself, by how pydicom removes padding:
# from the whole value (values.convert_string), from each value (convert_text), or
# trailing padding then spaces around each value (convert_UI, with UID's strip).
_WHOLE_PADDED = frozenset({"AS", "CS", "DA", "DT", "TM"})
_EACH_PADDED = frozenset({"LO", "SH", "UC"})
_DATES = frozenset({"DA", "DT", "TM"})


def _ascii_text(element: RawDataElement) -> str | None:
    """The text pydicom's conversion of a raw ASCII string value gives; None: ask pydicom.

    Most of what import reads is short ASCII strings, and converting one through
    a ``Dataset`` costs ~10 µs, mostly bookkeeping. Only explicit VRs listed above
    take this way, without an escape sequence (so every character set reads the
    bytes as ASCII), and only while pydicom's options keep the plain meaning.
    """
    raw, vr = element.value, element.VR
    if (
        not isinstance(raw, bytes)
        or not raw.isascii()
        or b"\x1b" in raw
        or config.settings.reading_validation_mode == config.RAISE
        or config.data_element_callback is not None
    ):
        return None
    decoded = raw.decode("ascii")
    if vr in _WHOLE_PADDED:
        return None if vr in _DATES and config.datetime_conversion else decoded.rstrip(" \x00")
    if vr in _EACH_PADDED:
        return "\\".join(part.rstrip("\x00 ") for part in decoded.split("\\"))
    if vr == VR.UI:
        return "\\".join(part.strip() for part in decoded.rstrip("\x00 ").split("\\"))
    return None


def text(ds: Dataset, keyword: str, limit: int = 64) -> str:
    """A header value as clean text for the index (never raises)."""
    tag = _tag(keyword)
    element = None if tag is None else ds._dict.get(tag)
    if type(element) is RawDataElement and (found := _ascii_text(element)) is not None:
        return found.strip().replace("\x00", "")[:limit]
    try:
        found = _value(ds, keyword, tag, element)
    except Exception:  # a malformed value must not stop an import
        return ""
    if found is None:
        return ""
    if isinstance(found, MultiValue):
        found = "\\".join(str(v) for v in found)
    return str(found).strip().replace("\x00", "")[:limit]


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
