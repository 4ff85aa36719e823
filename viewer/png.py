"""A small, fast PNG writer for 8-bit grey and RGB images.

Pillow's encoder spends most of its time in adaptive filtering and zlib; on MR
slices the UP filter (one numpy subtraction) with ISA-L deflate at level 1 is
about 25x faster for a few percent more bytes (see benchmarks/render.py).

Deflate is still most of a slice's render time, so a large image is cut into
bands of rows deflated on two cores (``viewer.parallel``). Each band's raw
deflate stream but the last ends with a sync flush, on a byte boundary and
without the final-block bit (as pigz does), so the streams joined are one valid
zlib stream; the UP filter only looks one row up, so each band filters its own
rows. Given a ``BandImage``, each band's thread makes its own rows (and the row
above them) first.
"""

from __future__ import annotations

import struct

import numpy as np
from isal import isal_zlib

from viewer.parallel import BandImage, bands_for, map_bands

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FILTER_UP = 2
_ZLIB_HEADER = b"\x78\x01"  # deflate, 32 KiB window, "fastest" level


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", isal_zlib.crc32(data, isal_zlib.crc32(kind))
    )


def _idat(image: BandImage, width: int, level: int) -> bytes:
    """The zlib stream of the UP-filtered rows (``width`` bytes each)."""
    height = image.shape[0]
    filtered = np.empty((height, width + 1), dtype=np.uint8)
    filtered[:, 0] = _FILTER_UP
    bands = min(bands_for(height * width), height)
    edges = [height * index // bands for index in range(bands + 1)]

    def deflate(band: int) -> bytes:
        start, stop = edges[band], edges[band + 1]
        # The band's rows, and the row above it, which the UP filter subtracts.
        rows = image.rows(max(start - 1, 0), stop).reshape(-1, width)
        if start == 0:
            filtered[0, 1:] = rows[0]
            np.subtract(rows[1:], rows[:-1], out=filtered[1:stop, 1:])
        else:
            np.subtract(rows[1:], rows[:-1], out=filtered[start:stop, 1:])
        compressor = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -15)
        flush = isal_zlib.Z_FINISH if band == bands - 1 else isal_zlib.Z_SYNC_FLUSH
        return compressor.compress(filtered[start:stop].data) + compressor.flush(flush)

    parts = map_bands(deflate, bands)
    adler = struct.pack(">I", isal_zlib.adler32(filtered.data))
    return b"".join((_ZLIB_HEADER, *parts, adler))


def encode_png(image: np.ndarray | BandImage, level: int = 1) -> bytes:
    """Encode uint8 pixels (H x W grey, or H x W x 3 RGB) as PNG bytes."""
    if isinstance(image, np.ndarray) and image.dtype != np.uint8:
        raise ValueError("encode_png needs uint8 pixels")
    shape = image.shape
    if len(shape) == 2:
        colour_type, channels = 0, 1
    elif len(shape) == 3 and shape[2] == 3:
        colour_type, channels = 2, 3
    else:
        raise ValueError("encode_png needs H x W or H x W x 3 pixels")
    height, width = shape[:2]
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"".join(
        (
            _SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", _idat(BandImage.of(image), width * channels, level)),
            _chunk(b"IEND", b""),
        )
    )
