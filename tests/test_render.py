"""The pixel pipeline against independently computed expectations (PS3.3 formulas in numpy)."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut

from viewer.png import encode_png
from viewer.render import (
    DecodedFrame,
    RenderError,
    Viewport,
    VoiLut,
    Window,
    apply_viewport,
    apply_voi_lut,
    apply_window,
    auto_window,
    decode_frame,
    encode,
    full_window,
    render,
    to_display,
)


def expected_linear(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, written out piecewise, in float64."""
    x = x.astype(np.float64)
    y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255
    y = np.where(x <= c - 0.5 - (w - 1) / 2, 0, y)
    y = np.where(x > c - 0.5 + (w - 1) / 2, 255, y)
    return np.floor(y + 0.5).clip(0, 255)


def expected_linear_exact(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """PS3.3 C.11.2.1.3.2."""
    x = x.astype(np.float64)
    y = ((x - c) / w + 0.5) * 255
    y = np.where(x <= c - w / 2, 0, y)
    y = np.where(x > c + w / 2, 255, y)
    return np.floor(y + 0.5).clip(0, 255)


def expected_sigmoid(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """PS3.3 C.11.2.1.3.1. Far below a narrow window exp() overflows to inf, and
    255 / (1 + inf) is 0, the formula's limit there."""
    with np.errstate(over="ignore"):
        y = 255 / (1 + np.exp(-4 * (x.astype(np.float64) - c) / w))
    return np.floor(y + 0.5).clip(0, 255)


def agree(actual: np.ndarray, expected: np.ndarray) -> None:
    """float32 in place versus float64: equal but for rare off-by-one at exact .5 ties."""
    diff = np.abs(actual.astype(np.int16) - expected.astype(np.int16))
    assert diff.max() <= 1
    assert (diff > 0).mean() < 0.001


RAMP = np.arange(-2048, 4096, dtype=np.float32).reshape(64, 96)


@pytest.mark.parametrize(("c", "w"), [(40, 400), (1000, 2000), (0.5, 1.5), (-100, 37), (3000, 1)])
def test_linear_window_matches_ps33(c: float, w: float) -> None:
    if w == 1:
        expected = np.where(c - 0.5 < RAMP, 255, 0)
        assert np.array_equal(apply_window(RAMP, Window(c, w)), expected)
        return
    agree(apply_window(RAMP, Window(c, w)), expected_linear(RAMP, c, w))


@pytest.mark.parametrize(("c", "w"), [(40, 400), (1000, 0.5), (-100, 37)])
def test_linear_exact_and_sigmoid_match_ps33(c: float, w: float) -> None:
    agree(apply_window(RAMP, Window(c, w, "linear-exact")), expected_linear_exact(RAMP, c, w))
    agree(apply_window(RAMP, Window(c, w, "sigmoid")), expected_sigmoid(RAMP, c, w))


def test_window_on_real_ct_uses_modality_lut() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    frame = decode_frame(ds)
    hounsfield = apply_modality_lut(ds.pixel_array, ds)
    assert np.allclose(frame.pixels, hounsfield)
    agree(to_display(frame, Window(40, 400)), expected_linear(hounsfield, 40, 400))


def test_monochrome1_is_inverted() -> None:
    values = RAMP.copy()
    normal = to_display(DecodedFrame(values, color=False), Window(0, 1000))
    inverted = to_display(DecodedFrame(values, color=False, invert=True), Window(0, 1000))
    assert np.array_equal(inverted, 255 - normal)


def test_voi_lut_sequence_is_used_without_a_window() -> None:
    table = np.linspace(0, 4095, 256, dtype=np.float32)
    lut = VoiLut(first=100, table=table, bits=12)
    values = np.array([[0, 100, 227, 355, 1000]], dtype=np.float32)
    out = apply_voi_lut(values, lut)
    expected = np.floor(table[np.clip(values - 100, 0, 255).astype(int)] * 255 / 4095 + 0.5)
    assert np.array_equal(out, expected.astype(np.uint8))
    frame = DecodedFrame(values, color=False, voi_lut=lut)
    assert np.array_equal(to_display(frame), out)


def test_auto_window_is_never_a_flat_square() -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(500, 100, (128, 128)).astype(np.float32)
    values[0, :10] = 30000  # a few hot pixels must not darken the image
    image = to_display(DecodedFrame(values, color=False))
    assert 60 < image[1:].mean() < 200
    assert image[1:].std() > 30
    constant = DecodedFrame(np.full((8, 8), 7, np.float32), color=False)
    flat = to_display(constant)
    assert 0 < flat.mean() < 255
    window = full_window(DecodedFrame(values, color=False))
    assert window.center - window.width / 2 <= values.min()
    assert auto_window(DecodedFrame(values, color=False)).width < window.width


def test_viewport_keeps_aspect_and_crops_the_region() -> None:
    image = np.arange(200 * 100, dtype=np.uint32).reshape(100, 200).astype(np.uint8)
    assert apply_viewport(image, Viewport(100, 100)).shape == (50, 100)
    assert apply_viewport(image, Viewport(400, 400)).shape == (200, 400)
    region = apply_viewport(image, Viewport(50, 20, (10, 20, 50, 20)))
    assert region.shape == (20, 50)
    assert np.array_equal(region, image[20:40, 10:60])
    flipped = apply_viewport(image, Viewport(50, 20, (60, 20, -50, 20)))
    assert np.array_equal(flipped, image[20:40, 10:60][:, ::-1])
    with pytest.raises(RenderError):
        apply_viewport(image, Viewport(10, 10, (500, 500, 10, 10)))


def test_viewport_of_a_region_smaller_than_a_pixel() -> None:
    """Scaling is decided by cross-multiplying, so no region makes an infinite scale."""
    image = np.arange(200 * 100, dtype=np.uint32).reshape(100, 200).astype(np.uint8)
    for region, shape in (((0, 0, 5e-324, 5e-324), (10, 10)), ((0, 0, 5e-324, 50), (10, 1)),
                          ((0, 0, 50, 5e-324), (1, 10))):
        assert apply_viewport(image, Viewport(10, 10, region)).shape == shape, region
    assert (apply_viewport(image, Viewport(10, 10, (0, 0, 5e-324, 5e-324))) == image[0, 0]).all()


def test_png_round_trips_through_pillow() -> None:
    rng = np.random.default_rng(2)
    for image in (
        rng.integers(0, 256, (37, 53), dtype=np.uint8),
        rng.integers(0, 256, (20, 31, 3), dtype=np.uint8),
    ):
        decoded = np.asarray(Image.open(io.BytesIO(encode_png(image))))
        assert np.array_equal(decoded, image)


def test_jpeg_encodes_grey_and_colour() -> None:
    grey = np.tile(np.arange(256, dtype=np.uint8), (64, 1))
    decoded = np.asarray(Image.open(io.BytesIO(encode(grey, "image/jpeg", 95))))
    assert decoded.shape == grey.shape
    assert np.abs(decoded.astype(int) - grey).mean() < 2
    colour = np.zeros((16, 16, 3), np.uint8)
    colour[..., 0] = 200
    assert Image.open(io.BytesIO(encode(colour, "image/jpeg"))).mode == "RGB"
    assert Image.open(io.BytesIO(encode(grey, "image/gif"))).format == "GIF"


def test_render_of_colour_image_is_not_windowed() -> None:
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_small_odd.dcm"))
    frame = decode_frame(ds)
    assert frame.color
    png = render(frame, Window(0, 1), media_type="image/png")
    decoded = np.asarray(Image.open(io.BytesIO(png)))
    assert np.array_equal(decoded, ds.pixel_array)


def test_missing_frame_is_a_render_error() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    with pytest.raises(RenderError, match="frame 3 does not exist"):
        decode_frame(ds, 2)
