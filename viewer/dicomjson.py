"""The DICOM JSON model (PS3.18 annex F) and what every DICOMweb answer shares.

Stored instances become DICOM JSON for WADO-RS metadata here: values up to
``BULK_THRESHOLD`` bytes inline, larger binary values (and always Pixel Data)
as a ``BulkDataURI`` the bulkdata resource resolves. Parsing a file costs a few
milliseconds, so each instance's JSON is kept in a bounded per-app cache; files
are content-addressed, so a cached answer can never be stale. The first answer
for a series reads every file of it; most of their values are the same in each,
so that answer converts each distinct value once (``ValueMemo``).
"""

from __future__ import annotations

import json
import logging
import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flask import Response, current_app, request
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag
from werkzeug.exceptions import BadRequest

from viewer.cache import ByteLRU
from viewer.fastheader import read_file
from viewer.ingest import UNCOMPRESSED

log = logging.getLogger(__name__)

PREFIX = "/dicom-web"
BULK_THRESHOLD = 1024
BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
PIXEL_DATA = "7FE00010"
METADATA_CACHE_BYTES = 32 << 20
NATIVE_LITTLE_ENDIAN = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")


def services():  # type: ignore[no-untyped-def]
    return current_app.extensions["viewer"]


def base_url() -> str:
    """``VIEWER_PUBLIC_URL/dicom-web`` when configured, else as this request reached us.

    The configured URL wins because some clients (dicomweb-client) send a Host
    header without the port, and proxies may rewrite it."""
    public = services().config.public_url
    return (public or request.host_url).rstrip("/") + PREFIX


def instance_url(study_uid: str, series_uid: str, sop_uid: str) -> str:
    return f"{base_url()}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"


def attr(vr: str, *values: Any) -> dict[str, Any]:
    """One DICOM JSON attribute; empty values give an attribute without ``Value``."""
    present = [v for v in values if v not in (None, "")]
    if not present:
        return {"vr": vr}
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": str(v)} for v in present]}
    return {"vr": vr, "Value": present}


def tag_of(name: str) -> str | None:
    """``00100020`` for ``PatientID`` or ``00100020`` (any case); None if neither."""
    text = name.strip()
    if len(text) == 8 and all(c in "0123456789abcdefABCDEF" for c in text):
        return text.upper()
    tag = tag_for_keyword(text)
    return None if tag is None else f"{tag:08X}"


def json_response(payload: list[dict[str, Any]], warnings: Iterable[str] = ()) -> Response:
    """``application/dicom+json``, or 204 when there is nothing (QIDO-RS)."""
    if not payload:
        response = Response(status=204)
    else:
        response = Response(json.dumps(payload, separators=(",", ":")),
                            mimetype="application/dicom+json")
    add_warnings(response, warnings)
    return response


def add_warnings(response: Response, warnings: Iterable[str]) -> None:
    for warning in warnings:
        text = "".join(c if " " <= c <= "~" and c not in '"\\' else "'" for c in warning)
        response.headers.add("Warning", f'299 viewer "{text[:300]}"')


# --- metadata ----------------------------------------------------------------------------


def _vr(element: DataElement | RawDataElement) -> str:
    if element.VR:
        return str(element.VR)
    try:
        return str(dictionary_VR(element.tag))
    except KeyError:
        return "UN"


def _length(element: DataElement | RawDataElement) -> int:
    if isinstance(element, RawDataElement):
        return int(element.length or 0)
    value = element.value
    return len(value) if isinstance(value, bytes | bytearray) else 0


TEXT_VRS = {"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
SINGLE_VALUED = {"LT", "ST", "UT", "UR"}  # a backslash is text, not a separator
NUMBERS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "UV": "Q",
           "SV": "q"}
# Character sets whose bytes Python decodes the same way DICOM does, without code extensions.
SIMPLE_CHARSETS = {"": "latin-1", "ISO_IR 6": "latin-1", "ISO_IR 100": "latin-1",
                   "ISO_IR 192": "utf-8"}


def _fast_json(element: RawDataElement, vr: str, encoding: str | None,
               little: bool) -> dict[str, Any] | None:
    """The JSON of a plain raw element without pydicom's conversion (most of the cost of
    metadata), or None when pydicom must do it (sequences, other character sets, odd values).
    """
    raw = element.value
    if raw is None:
        return None
    if not raw:
        return {"vr": vr}
    if vr in NUMBERS:
        code = NUMBERS[vr]
        size = struct.calcsize("<" + code)
        if len(raw) % size:
            return None
        values = struct.unpack(f"{'<' if little else '>'}{len(raw) // size}{code}", raw)
        return {"vr": vr, "Value": list(values)}
    if vr in ("IS", "DS"):
        try:
            numbers = [(int(v) if vr == "IS" else float(v)) if v.strip() else None
                       for v in raw.decode("ascii").split("\\")]
        except (UnicodeError, ValueError):
            return None
        if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
            return None
        return {"vr": vr, "Value": numbers}
    if (vr not in TEXT_VRS and vr != "PN") or encoding is None:
        return None
    text = raw.decode(encoding if vr not in ("UI", "AE", "CS", "DA", "TM", "AS") else "latin-1")
    parts = [text] if vr in SINGLE_VALUED else text.split("\\")
    cleaned = [p.rstrip("\x00 ") if vr == "UI" else p.rstrip(" \x00") if vr in
               ("LT", "ST", "UT", "UR") else p.strip(" \x00") for p in parts]
    if vr == "PN":
        if any("=" in p for p in cleaned):
            return None  # ideographic or phonetic groups: pydicom splits them
        return {"vr": vr, "Value": [{"Alphabetic": p} if p else None for p in cleaned]}
    if cleaned == [""]:
        return {"vr": vr}
    return {"vr": vr, "Value": cleaned}


_encode = json.JSONEncoder(separators=(",", ":")).encode


@dataclass(frozen=True)
class _LeftOut:
    """Why a value cannot be converted (it is left out of the JSON)."""

    why: str


class ValueMemo:
    """The values one WADO-RS answer has converted, by what their JSON depends on.

    Most of an instance's values are its series' (patient, study, protocol, scanner), so
    an answer converts each distinct value once. Bounded in bytes: an enhanced
    instance's per-frame sequence can be megabytes, and is its own anyway.
    """

    def __init__(self, budget: int = 4 << 20) -> None:
        self._values: dict[tuple[Any, ...], str | _LeftOut] = {}
        self.room = budget

    def __len__(self) -> int:
        return len(self._values)

    def get(self, key: tuple[Any, ...]) -> str | _LeftOut | None:
        return self._values.get(key)

    def put(self, key: tuple[Any, ...], raw: bytes, converted: str | _LeftOut) -> None:
        """Keep ``converted`` (of the value ``raw``) if there is room for both."""
        size = len(raw) + (len(converted) if isinstance(converted, str) else len(converted.why))
        if size <= self.room:
            self._values[key] = converted
            self.room -= size


def _memo_key(element: DataElement | RawDataElement, key: str, vr: str, encoding: str | None,
              little: bool) -> tuple[Any, ...] | None:
    """What an element's JSON depends on, when that is its own bytes; else None.

    It is not for a value already converted, a value pydicom converts by the whole
    character set (not one of ``SIMPLE_CHARSETS``), a private element whose VR pydicom
    finds from its private creator, or a VR that depends on another element (US or SS).
    ``key`` is the tag as text: a ``BaseTag`` compares equal in Python, slowly.
    """
    if not isinstance(element, RawDataElement) or element.value is None or encoding is None:
        return None
    if (element.tag >> 16 & 1 and vr == "UN") or " or " in vr:
        return None
    return key, vr, element.value, encoding, little, element.is_implicit_VR


def _object(fields: Iterable[tuple[str, str]]) -> str:
    """A JSON object from (key, JSON text of the value) pairs, in their order."""
    return "{" + ",".join(f'"{key}":{text}' for key, text in fields) + "}"


def _element_json(ds: Dataset, element: DataElement | RawDataElement, vr: str, bulk: str,
                  path: str, encoding: str | None, little: bool,
                  memo: ValueMemo) -> tuple[str | _LeftOut, list[tuple[str, str]]]:
    """The JSON text of one element (or why it is left out), and what is left out inside
    it (a sequence's items)."""
    tag = element.tag
    if isinstance(element, RawDataElement) and tag.element != 0:
        fast = _fast_json(element, vr, encoding, little)
        if fast is not None:
            return _encode(fast), []
    try:
        full = ds[tag]
        if full.VR != "SQ":
            return _encode(full.to_json_dict(None, BULK_THRESHOLD)), []
        left_out: list[tuple[str, str]] = []
        items = [_object(_dataset_json(item, bulk, f"{path}{tag:08X}/{i}/", encoding, little,
                                       left_out, memo).items())
                 for i, item in enumerate(full.value)]
        return (f'{{"vr":"SQ","Value":[{",".join(items)}]}}' if items else '{"vr":"SQ"}'), left_out
    except (ValueError, TypeError, KeyError, OverflowError, UnicodeError,
            NotImplementedError) as exc:  # NotImplementedError: a VR pydicom does not know
        return _LeftOut(str(exc)), []


def _dataset_json(ds: Dataset, bulk: str, path: str, encoding: str | None,
                  little: bool, left_out: list[tuple[str, str]],
                  memo: ValueMemo) -> dict[str, str]:
    """``ds`` as DICOM JSON attributes (tag -> the attribute's JSON text); binary values
    over the threshold become BulkDataURIs.

    An element whose value cannot be converted is left out, and added to ``left_out``
    as (its path, why).
    """
    out: dict[str, str] = {}
    for element in list(ds.values()):  # as read: deferred values stay deferred
        key = f"{element.tag:08X}"
        vr = _vr(element)
        if vr in BINARY_VRS and _length(element) > BULK_THRESHOLD:
            out[key] = _encode({"vr": vr, "BulkDataURI": f"{bulk}/{path}{key}"})
            continue
        seen = _memo_key(element, key, vr, encoding, little)
        converted = memo.get(seen) if seen is not None else None
        if converted is None:
            converted, inside = _element_json(ds, element, vr, bulk, path, encoding, little,
                                              memo)
            left_out += inside
            # A sequence that names this instance (a BulkDataURI) or its items' paths
            # (values left out) is this instance's alone.
            if (seen is not None and not inside
                    and not (isinstance(converted, str) and "BulkDataURI" in converted)):
                memo.put(seen, element.value, converted)
        if isinstance(converted, _LeftOut):
            left_out.append((f"{path}{key}", converted.why))
        else:
            out[key] = converted
    return out


def read_metadata(path: Any, url: str, transfer_syntax: str, bits_allocated: int,
                  memo: ValueMemo | None = None) -> tuple[bytes, list[tuple[str, str]]]:
    """The instance file at ``path`` as one DICOM JSON object (UTF-8 bytes), and the
    elements left out of it because their values cannot be converted: (path, why).

    Pixel Data is never read: it is referenced by ``{url}/bulkdata/7FE00010``. Read
    through ``fastheader``: the first metadata of a series reads every file of it.
    ``memo`` carries converted values from one file to the next of the same answer.
    """
    ds = read_file(path, stop_before_pixels=True)
    charset = ds.get("SpecificCharacterSet", "")
    encoding = SIMPLE_CHARSETS.get(charset if isinstance(charset, str) else "\\".join(charset))
    little = ds.original_encoding[1] if ds.original_encoding else True
    left_out: list[tuple[str, str]] = []
    data = _dataset_json(ds, f"{url}/bulkdata", "", encoding, bool(little), left_out,
                         ValueMemo() if memo is None else memo)
    if transfer_syntax:
        data["00083002"] = _encode(attr("UI", transfer_syntax))
    if "PixelData" not in ds and bits_allocated:
        native = transfer_syntax in UNCOMPRESSED or transfer_syntax.endswith(".1.2.1.99")
        vr = "OW" if native and bits_allocated > 8 else "OB"
        data[PIXEL_DATA] = _encode({"vr": vr, "BulkDataURI": f"{url}/bulkdata/{PIXEL_DATA}"})
    return _object(sorted(data.items())).encode(), left_out


def metadata_cache() -> ByteLRU[bytes]:
    """The app's cache of instance metadata JSON (made on first use)."""
    cache: ByteLRU[bytes] | None = current_app.extensions.get("viewer.metadata")
    if cache is None:
        cache = ByteLRU(METADATA_CACHE_BYTES, len)
        current_app.extensions["viewer.metadata"] = cache
    return cache


def parse_bulk_path(text: str) -> list[BaseTag | int]:
    """``00431028`` or ``52009230/0/00289110/0/00280030``: tags and item indexes, alternating."""
    pieces = text.strip("/").split("/")
    if len(pieces) % 2 == 0:
        raise BadRequest("bulkdata: the path must end with an attribute tag")
    out: list[BaseTag | int] = []
    for position, piece in enumerate(pieces):
        if position % 2 == 0:
            if tag_of(piece) != piece.upper() or len(piece) != 8:
                raise BadRequest(f"bulkdata: {piece[:20]!r} is not an attribute tag")
            out.append(Tag(int(piece, 16)))
        else:
            if not (piece.isascii() and piece.isdigit()):
                raise BadRequest(f"bulkdata: {piece[:20]!r} is not an item index")
            out.append(int(piece))
    return out
