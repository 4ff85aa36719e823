"""Baseline JPEG for 8-bit grey and RGB images, on two cores for large ones.

libjpeg-turbo (simplejpeg, no chroma subsampling) codes each 8x8 block on its
own, except its DC coefficient, which is coded as a difference from the block
before. A restart marker resets that prediction (ITU T.81, F.1.2.3 and
B.2.4.4). So an image cut into two bands on a block row, each band encoded
separately with the same standard tables, joins into one valid JPEG: the first
band's entropy-coded data, RST0, the second band's, under a DRI whose interval
is the first band's block count. Every block is coded exactly as in the whole
image, so the pixels decode the same. ``viewer.parallel`` encodes the bands on
two cores (given a ``BandImage``, each band's thread makes its own rows first).
"""

from __future__ import annotations

import struct

import numpy as np
import simplejpeg

from viewer.parallel import BandImage, bands_for, map_bands

_BLOCK = 8
_SOF0, _SOS = 0xC0, 0xDA
_MAX_INTERVAL = 0xFFFF


def _encode_whole(image: np.ndarray, quality: int) -> bytes:
    pixels = image[:, :, None] if image.ndim == 2 else image
    colorspace = "GRAY" if image.ndim == 2 else "RGB"
    return simplejpeg.encode_jpeg(
        np.ascontiguousarray(pixels),
        quality=quality,
        colorspace=colorspace,
        colorsubsampling="444",
    )


def _segments(jpeg: bytes) -> tuple[int, int, int]:
    """Where SOF0 starts, where SOS starts and where its entropy-coded data starts."""
    offset, sof = 2, -1
    while jpeg[offset] == 0xFF:
        marker = jpeg[offset + 1]
        length = int.from_bytes(jpeg[offset + 2 : offset + 4], "big")
        if marker == _SOF0:
            sof = offset
        if marker == _SOS:
            return sof, offset, offset + 2 + length
        offset += 2 + length
    raise ValueError("no SOS marker in the encoder's output")


def _join(top: bytes, bottom: bytes, height: int, interval: int) -> bytes | None:
    """The two bands as one JPEG, or None if their headers differ beyond the height."""
    sof, sos, data = _segments(top)
    # SOF0 is FFC0, its length, the sample precision, then the height: bytes 5 and 6.
    height_at = sof + 5
    if (
        sof < 0
        or _segments(bottom) != (sof, sos, data)
        or top[:height_at] != bottom[:height_at]
        or top[height_at + 2 : data] != bottom[height_at + 2 : data]
        or top[-2:] != b"\xff\xd9"
        or bottom[-2:] != b"\xff\xd9"
    ):
        return None
    return b"".join(
        (
            top[:height_at],
            struct.pack(">H", height),
            top[height_at + 2 : sos],
            struct.pack(">HHH", 0xFFDD, 4, interval),
            top[sos:-2],
            b"\xff\xd0",
            bottom[data:-2],
            b"\xff\xd9",
        )
    )


def encode_jpeg(image: np.ndarray | BandImage, quality: int) -> bytes:
    """Encode uint8 pixels (H x W grey, or H x W x 3 RGB) as a baseline JPEG."""
    source = BandImage.of(image)
    height, width = source.shape[:2]
    block_rows = -(-height // _BLOCK)
    top_rows = -(-block_rows // 2)
    interval = -(-width // _BLOCK) * top_rows
    if bands_for(height * width) == 1 or block_rows < 2 or interval > _MAX_INTERVAL:
        return _encode_whole(source.whole(), quality)
    split = top_rows * _BLOCK
    top, bottom = map_bands(
        lambda band: _encode_whole(
            source.rows(0, split) if band == 0 else source.rows(split, height), quality
        ),
        2,
    )
    return _join(top, bottom, height, interval) or _encode_whole(source.whole(), quality)
