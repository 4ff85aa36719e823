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

How far back deflate looks for repeats was chosen by measuring. The UP filter
has already taken out what neighbouring rows share; in what is left of an MR
slice ISA-L's 32 KiB search mostly finds short, distant matches that cost more
bits than they save. A 2-byte window (runs only, as in a flat background) is
the fastest and the smallest: a 512x512 head slice deflates in ~0.36 ms instead
of ~0.85 ms and ~6 % smaller, the GE phantom ~15 % smaller. ISA-L takes such a
window only in one-shot compression (``igzip_lib.compress``), which ends the
stream, so only the last band has it; the others stream with the smallest window
a stream takes (512 bytes: ~0.65 ms a slice). The last band gets more rows, to
even the two out.
"""

from __future__ import annotations

import struct

import numpy as np
from isal import igzip_lib, isal_zlib

from viewer.parallel import BandImage, bands_for, map_bands

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FILTER_UP = 2
_ZLIB_HEADER = b"\x78\x01"  # deflate, 32 KiB window, "fastest" level
# Deflate windows, as powers of two (see above); the header's 32 KiB is an upper bound.
_WINDOW_BITS = 9  # the bands before the last (the least a deflate stream takes)
_FINAL_HIST_BITS = 1  # the last band (one-shot)
_FINAL_WEIGHT = 1.5  # the last band's rows for one row of each other band


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", isal_zlib.crc32(data, isal_zlib.crc32(kind))
    )


_IEND = _chunk(b"IEND", b"")


def _deflate(data: memoryview, level: int, final: bool) -> bytes:
    """Raw deflate of ``data``: the stream's end if ``final``, else a part that ends with a
    sync flush (on a byte boundary, without the final-block bit) so the next part follows."""
    if final:
        return igzip_lib.compress(data, level, igzip_lib.COMP_DEFLATE,
                                  igzip_lib.MEM_LEVEL_DEFAULT, _FINAL_HIST_BITS)
    compressor = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -_WINDOW_BITS)
    return compressor.compress(data) + compressor.flush(isal_zlib.Z_SYNC_FLUSH)


def _edges(height: int, bands: int) -> list[int]:
    """Where the bands start and stop: the last one, deflated faster, has more rows."""
    weights = [1.0] * (bands - 1) + [_FINAL_WEIGHT]
    total, edges, done = sum(weights), [0], 0.0
    for weight in weights:
        done += weight
        edges.append(round(height * done / total))
    return edges


def _idat(image: BandImage, width: int, level: int) -> list[bytes]:
    """The zlib stream of the UP-filtered rows (``width`` bytes each), in parts."""
    height = image.shape[0]
    filtered = np.empty((height, width + 1), dtype=np.uint8)
    filtered[:, 0] = _FILTER_UP
    bands = min(bands_for(height * width), height)
    edges = _edges(height, bands)

    def deflate(band: int) -> bytes:
        start, stop = edges[band], edges[band + 1]
        # The band's rows, and the row above it, which the UP filter subtracts.
        rows = image.rows(max(start - 1, 0), stop).reshape(-1, width)
        if start == 0:
            filtered[0, 1:] = rows[0]
            np.subtract(rows[1:], rows[:-1], out=filtered[1:stop, 1:])
        else:
            np.subtract(rows[1:], rows[:-1], out=filtered[start:stop, 1:])
        return _deflate(filtered[start:stop].data, level, band == bands - 1)

    parts = map_bands(deflate, bands)
    adler = struct.pack(">I", isal_zlib.adler32(filtered.data))
    return [_ZLIB_HEADER, *parts, adler]


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
    # The image data chunk is joined with the rest once: its CRC is taken part by part.
    idat = _idat(BandImage.of(image), width * channels, level)
    crc = isal_zlib.crc32(b"IDAT")
    for part in idat:
        crc = isal_zlib.crc32(part, crc)
    return b"".join((_SIGNATURE, _chunk(b"IHDR", header),
                     struct.pack(">I", sum(map(len, idat))), b"IDAT", *idat,
                     struct.pack(">I", crc), _IEND))
