"""A stored instance as Explicit VR Little Endian, for WADO-RS retrieve.

PS3.18 (since 2016c) sends an instance asked for without a ``transfer-syntax``
parameter in Explicit VR Little Endian. Files stored in it are sent as they are;
implicit VR, deflated and compressed ones are read whole, their pixel data
decoded by the same pydicom decoders the viewer renders with, and written again.
The SOP Instance UID stays: only the encoding changes (lossy pixels stay lossy,
and say so in LossyImageCompression as before).

Not converted: big endian files (pydicom does not swap the byte order of their
binary values) and syntaxes without a decoder; those are sent as stored only.
"""

from __future__ import annotations

import logging
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.pixels import get_decoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from viewer.render import codec_failure

log = logging.getLogger(__name__)
# The most a transcoded instance may hold in memory (its pixels, decoded): a worker
# builds it whole, so larger ones are sent as stored only.
MAX_BYTES = 256 << 20


class TranscodeError(ValueError):
    """The instance cannot be sent as Explicit VR Little Endian; the message says why."""


def convertible(syntax: str) -> bool:
    """Whether files stored in ``syntax`` can be sent as Explicit VR Little Endian."""
    uid = UID(syntax)
    if uid in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        return True
    if not uid.is_transfer_syntax or not uid.is_compressed:
        return False  # big endian, a private syntax, or a UID that is no transfer syntax
    try:
        return get_decoder(uid).is_available
    except NotImplementedError:
        return False


def decoded_size(ds: pydicom.Dataset) -> int:
    """Bytes of the instance's pixel data once decoded (0 without pixel data)."""
    if "PixelData" not in ds:
        return 0
    frames = int(ds.get("NumberOfFrames") or 1)
    bits = int(ds.get("BitsAllocated") or 8)
    samples = int(ds.get("SamplesPerPixel") or 1)
    return int(ds.Rows) * int(ds.Columns) * samples * frames * max(bits // 8, 1)


def to_explicit_little_endian(path: Path) -> bytes:
    """The Part 10 bytes of the file at ``path`` in Explicit VR Little Endian."""
    try:
        ds = pydicom.dcmread(path)
        syntax = ds.file_meta.TransferSyntaxUID
        if not convertible(syntax):
            raise TranscodeError(f"files in {syntax.name} cannot be converted")
        if decoded_size(ds) > MAX_BYTES:
            raise TranscodeError(f"its pixels would be over {MAX_BYTES >> 20} MiB decoded")
        if syntax.is_compressed:
            ds.decompress(generate_instance_uid=False)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        out = BytesIO()
        ds.save_as(out, implicit_vr=False, little_endian=True, enforce_file_format=True)
    except TranscodeError:
        raise
    except BaseException as exc:  # a decoder's or writer's error: the file cannot be converted
        if not codec_failure(exc):
            raise
        # The decoders' own words (plugin names, error codes) are for the log.
        log.warning("%s cannot be converted to Explicit VR Little Endian: %s", path.name, exc)
        raise TranscodeError("its pixel data cannot be decoded: it is corrupt or cut short") \
            from None
    return out.getvalue()
