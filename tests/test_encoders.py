"""PNG and JPEG of large images, encoded in two bands on two threads.

The banded output must decode to exactly the pixels of the image encoded whole,
in Pillow and in libjpeg-turbo, whatever the image's size.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
import simplejpeg
from PIL import Image

from viewer import jpeg, parallel, png
from viewer.render import (
    DecodedFrame,
    Viewport,
    VoiLut,
    Window,
    apply_viewport,
    decode_frame,
    display_image,
    encode,
    to_display,
)


def _smooth_noisy(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Like an MR slice to a compressor: smooth structure plus noise."""
    rng = np.random.default_rng(seed)
    steps = rng.integers(0, 5, shape, dtype=np.uint8)
    return np.cumsum(steps, axis=0, dtype=np.uint8)


def _mr_slice(corpus: Path) -> np.ndarray:
    ds = pydicom.dcmread(corpus / "siemens-transfer-syntaxes" / "1.dcm")
    image = to_display(decode_frame(ds))
    assert image.size >= 128 * 1024  # large enough to be banded
    return image


IMAGES = {
    "512x512 grey": ((512, 512), 1),
    "odd height and width": ((301, 487), 2),
    "RGB": ((300, 300, 3), 3),
    "two very long rows": ((2, 70_000), 4),
}


def _idat(data: bytes) -> bytes:
    offset, idat = 8, b""
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        if kind == b"IDAT":
            idat += data[offset + 8 : offset + 8 + length]
        offset += 12 + length
    return idat


@pytest.mark.parametrize("name", IMAGES)
def test_banded_png_decodes_to_the_same_pixels(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    image = _smooth_noisy(*IMAGES[name])
    monkeypatch.setattr(parallel, "BANDS", 1)
    whole = png.encode_png(image)
    monkeypatch.setattr(parallel, "BANDS", 2)
    banded = png.encode_png(image)
    assert b"\x00\x00\xff\xff" in _idat(banded)  # the first band's sync flush: it was banded
    assert zlib.decompress(_idat(banded)) == zlib.decompress(_idat(whole))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(banded))), image)


def test_banded_png_of_a_real_mr_slice(corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = _mr_slice(corpus)
    monkeypatch.setattr(parallel, "BANDS", 2)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.encode_png(image)))), image)


def _jpeg_pixels(data: bytes, colour: bool) -> tuple[np.ndarray, np.ndarray]:
    pillow = np.asarray(Image.open(io.BytesIO(data)))
    turbo = simplejpeg.decode_jpeg(data, colorspace="RGB" if colour else "GRAY")
    return pillow, turbo.reshape(pillow.shape)


def _restart_interval(data: bytes) -> int | None:
    at = data.find(b"\xff\xdd\x00\x04")
    return None if at < 0 else struct.unpack(">H", data[at + 4 : at + 6])[0]


@pytest.mark.parametrize(
    ("shape", "interval"),
    [
        ((512, 512), 64 * 32),
        ((513, 500), 63 * 33),
        ((400, 400, 3), 50 * 25),
        ((17, 9000), 1125 * 2),
    ],
)
def test_banded_jpeg_decodes_to_the_pixels_of_the_whole(
    shape: tuple[int, ...], interval: int
) -> None:
    image = _smooth_noisy(shape, 5)
    banded = jpeg.encode_jpeg(image, 90)
    whole = jpeg._encode_whole(image, 90)
    assert _restart_interval(banded) == interval  # the first band's 8x8 blocks
    assert banded.count(b"\xff\xd0") == 1  # RST0 between the bands
    assert _restart_interval(whole) is None
    for mine, reference in zip(
        _jpeg_pixels(banded, image.ndim == 3), _jpeg_pixels(whole, image.ndim == 3), strict=True
    ):
        assert np.array_equal(mine, reference)
    assert Image.open(io.BytesIO(banded)).size == (shape[1], shape[0])


def test_banded_jpeg_of_a_real_mr_slice(corpus: Path) -> None:
    image = _mr_slice(corpus)
    banded, whole = jpeg.encode_jpeg(image, 90), jpeg._encode_whole(image, 90)
    assert _restart_interval(banded) is not None
    assert np.array_equal(_jpeg_pixels(banded, False)[0], _jpeg_pixels(whole, False)[0])


@pytest.mark.parametrize("shape", [(64, 64), (8, 20_000), (3000, 3000)])
def test_jpeg_is_encoded_whole_when_bands_do_not_pay_or_do_not_fit(shape: tuple[int, int]) -> None:
    # Too small; a single row of blocks; a restart interval over 65535 blocks.
    image = _smooth_noisy(shape, 6)
    assert jpeg.encode_jpeg(image, 90) == jpeg._encode_whole(image, 90)


def test_bands_whose_headers_differ_are_not_joined() -> None:
    image = _smooth_noisy((512, 512), 7)
    top, bottom = jpeg._encode_whole(image[:256], 90), jpeg._encode_whole(image[256:], 50)
    assert jpeg._join(top, bottom, 512, 64 * 32) is None
    assert jpeg._join(top, jpeg._encode_whole(image[256:], 90), 512, 64 * 32) is not None


def _large_frames(corpus: Path) -> dict[str, DecodedFrame]:
    """Grey frames of 128 Ki pixels or more (banded) under each kind of VOI."""
    mr = decode_frame(pydicom.dcmread(corpus / "siemens-transfer-syntaxes" / "1.dcm"))
    values = mr.pixels
    table = np.linspace(0, 4095, 512, dtype=np.float32)
    return {
        "header window": mr,
        "MONOCHROME1": DecodedFrame(values, color=False, invert=True,
                                    header_window=mr.header_window),
        "VOI LUT": DecodedFrame(values, color=False, voi_lut=VoiLut(20, table, 12)),
        "auto window": DecodedFrame(values.copy(), color=False),
    }


@pytest.mark.parametrize("media_type", ["image/png", "image/jpeg"])
@pytest.mark.parametrize("window", [None, Window(300, 500), Window(300, 500, "sigmoid"),
                                    Window(300, 1, "linear")])
def test_windowing_in_the_bands_gives_the_same_bytes(
    corpus: Path, media_type: str, window: Window | None
) -> None:
    """The VOI applied band by band on two threads encodes exactly the image windowed whole
    (the ETag, made from the request, promises the same bytes either way)."""
    for name, frame in _large_frames(corpus).items():
        lazy = display_image(frame, window, Viewport(frame.pixels.shape[1], frame.pixels.shape[0]))
        assert isinstance(lazy, parallel.BandImage), name
        assert encode(lazy, media_type) == encode(to_display(frame, window), media_type), name


def test_the_encoders_make_each_bands_rows_in_that_band(monkeypatch: pytest.MonkeyPatch) -> None:
    image = _smooth_noisy((512, 512), 8)
    asked: list[tuple[int, int]] = []

    def make(start: int, stop: int) -> np.ndarray:
        asked.append((start, stop))
        return image[start:stop]

    monkeypatch.setattr(parallel, "BANDS", 2)
    assert png.encode_png(parallel.BandImage(image.shape, make)) == png.encode_png(image)
    # The last band, deflated faster, has 1.5x the rows; it also needs the row above it.
    assert sorted(asked) == [(0, 205), (204, 512)]
    asked.clear()
    assert jpeg.encode_jpeg(parallel.BandImage(image.shape, make), 90) == jpeg.encode_jpeg(
        image, 90)
    assert sorted(asked) == [(0, 256), (256, 512)]


def test_a_viewport_that_changes_the_image_is_applied_first(corpus: Path) -> None:
    frame = _large_frames(corpus)["header window"]
    rows, columns = frame.pixels.shape
    flipped = Viewport(columns, rows, (columns, 0, -columns, rows))
    region = Viewport(64, 64, (10, 10, 64, 64))
    for viewport in (Viewport(columns // 2, rows // 2), flipped, region):
        image = display_image(frame, None, viewport)
        assert isinstance(image, np.ndarray)
        assert np.array_equal(image, apply_viewport(to_display(frame), viewport))
    colour = DecodedFrame(np.zeros((400, 400, 3), np.uint8), color=True)
    assert display_image(colour) is colour.pixels
