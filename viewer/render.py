"""The pixel pipeline: decode -> modality LUT -> VOI (window or LUT) -> region/size -> encode.

Pure functions on numpy arrays, so they are tested against the PS3.3 formulas
and benchmarked without Flask. Speed comes from three choices measured in
``benchmarks/render.py``: frames are cached as float32 modality values, the
linear window is one multiply-add in place, and PNG is written by ``viewer.png``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from io import BytesIO

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels import apply_color_lut, apply_modality_lut
from pydicom.pixels import pixel_array as decode_pixels
from pydicom.uid import UID

from viewer.headers import codestream_size, frame_header, number_of_frames
from viewer.jpeg import encode_jpeg
from viewer.parallel import BandImage
from viewer.png import encode_png

WINDOW_FUNCTIONS = ("linear", "linear-exact", "sigmoid")
MEDIA_TYPES = ("image/png", "image/jpeg", "image/gif")
MAX_VIEWPORT = 4096


class RenderError(ValueError):
    """The frame cannot be decoded or rendered; the message says why."""


@dataclass(frozen=True)
class Window:
    """A VOI window in modality units (PS3.3 C.11.2.1.2)."""

    center: float
    width: float
    function: str = "linear"

    def as_dict(self) -> dict[str, float]:
        return {"center": round(self.center, 3), "width": round(self.width, 3)}


@dataclass(frozen=True)
class VoiLut:
    """A VOI LUT Sequence item: a table indexed by modality value."""

    first: int
    table: np.ndarray
    bits: int


@dataclass(frozen=True)
class Viewport:
    """Output size, and optionally a source region (sx, sy, sw, sh) in image pixels."""

    width: int
    height: int
    region: tuple[float, float, float, float] | None = None


@dataclass
class DecodedFrame:
    """One frame ready for display: grey values after the modality LUT, or RGB."""

    pixels: np.ndarray
    color: bool
    invert: bool = False
    header_window: Window | None = None
    voi_lut: VoiLut | None = None
    _stats: tuple[float, float, float, float] | None = field(default=None, repr=False)

    @property
    def nbytes(self) -> int:
        return int(self.pixels.nbytes)

    def stats(self) -> tuple[float, float, float, float]:
        """(min, max, 0.5th percentile, 99.5th percentile), computed once."""
        if self._stats is None:
            finite = self.pixels[np.isfinite(self.pixels)]
            if finite.size == 0:
                self._stats = (0.0, 0.0, 0.0, 0.0)
            else:
                # Nearest-rank percentiles of every fourth pixel by np.partition: the same
                # window as np.percentile, without its sort (or its lazy numpy.ma import).
                sample = finite[:: 4 if finite.size >= 16384 else 1]
                last = sample.size - 1
                ranks = (int(last * 0.005), int(np.ceil(last * 0.995)))
                low, high = np.partition(sample, ranks)[list(ranks)]
                self._stats = (float(finite.min()), float(finite.max()), float(low), float(high))
        return self._stats


def _voi_lut(ds: Dataset) -> VoiLut | None:
    sequence = ds.get("VOILUTSequence")
    if not sequence:
        return None
    item = sequence[0]
    descriptor = item.get("LUTDescriptor")
    data = item.get("LUTData")
    if descriptor is None or data is None or len(descriptor) != 3:
        return None
    try:
        entries, first, bits = (int(v) for v in descriptor)
        if isinstance(data, bytes):  # LUT Data in OW: raw little-endian words or bytes
            table = np.frombuffer(data, "<u2" if bits > 8 else "u1").astype(np.float32)
        else:
            table = np.asarray(data, dtype=np.float32).ravel()
    except (TypeError, ValueError):
        return None
    if entries == 0:
        entries = 65536
    if table.size < 1 or bits < 1 or bits > 16:
        return None
    return VoiLut(first=first, table=table[:entries], bits=bits)


def codec_failure(exc: BaseException) -> bool:
    """Whether ``exc``, raised while decoding pixels, means the data cannot be decoded.

    Decoders raise many exception types for corrupt data, and the RLE decoder
    (pylibjpeg-rle, in Rust) panics on some: pyo3 raises that as
    ``pyo3_runtime.PanicException``, a BaseException that ``except Exception`` misses
    and that would escape every error handler.
    """
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


log = logging.getLogger(__name__)


def undecodable(syntax: str, number: int, exc: BaseException) -> str:
    """Our own words for a decoder's failure on frame ``number``; the decoders' own text
    (plugin names, error codes, object addresses) is for the server log, not the client."""
    log.warning("frame %d (transfer syntax %s) cannot be decoded: %s", number, syntax, exc)
    uid = UID(syntax)
    name = uid.name if uid.is_transfer_syntax else f"transfer syntax {syntax or 'missing'}"
    return f"cannot decode the pixel data of frame {number} ({name}): it is corrupt or cut short"


def decode_frame(ds: Dataset, index: int = 0) -> DecodedFrame:
    """Decode frame ``index`` (0-based) and apply the modality LUT.

    Grey frames become float32 modality values; colour frames (RGB, YBR_*,
    PALETTE COLOR) become 8-bit RGB, since colour images are not windowed.
    """
    frames = number_of_frames(ds)
    if not 0 <= index < frames:
        raise RenderError(f"frame {index + 1} does not exist (the instance has {frames})")
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise RenderError("the instance has no pixel data")
    _check_codestream(ds, index, frames)
    try:
        # Pixel data longer than NumberOfFrames says is read as that many frames, not more.
        array = decode_pixels(ds, index=index if frames > 1 else None, allow_excess_frames=False)
    except BaseException as exc:  # decoders raise many types for corrupt data
        if not codec_failure(exc):
            raise
        raise RenderError(undecodable(_syntax(ds), index + 1, exc)) from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        if array.ndim != 2:  # indexes, one number a pixel (not SamplesPerPixel 3)
            raise RenderError(f"unsupported pixel layout {array.shape} for PALETTE COLOR")
        try:
            array = apply_color_lut(array, ds)
        except Exception as exc:
            raise RenderError(f"cannot apply the palette colour lookup table: {exc}") from exc
        return DecodedFrame(pixels=_to_rgb8(array, 8 * array.dtype.itemsize), color=True)
    if array.ndim == 3 and array.shape[2] in (3, 4):
        bits = int(ds.get("BitsStored") or 8)
        return DecodedFrame(pixels=_to_rgb8(array[:, :, :3], bits), color=True)
    if array.ndim != 2:
        raise RenderError(f"unsupported pixel layout {array.shape}")
    header = frame_header(ds, index)
    if "ModalityLUTSequence" in ds:
        try:
            values = np.asarray(apply_modality_lut(array, ds), dtype=np.float32)
        except Exception as exc:
            raise RenderError(f"cannot apply the modality LUT: {exc}") from exc
    else:
        values = array.astype(np.float32)
        if header.slope != 1.0:
            values *= np.float32(header.slope)
        if header.intercept != 0.0:
            values += np.float32(header.intercept)
    window = None
    if header.window_center is not None and header.window_width is not None:
        window = Window(
            header.window_center,
            header.window_width,
            header.voi_function.lower().replace("_", "-"),
        )
    return DecodedFrame(
        pixels=values,
        color=False,
        invert=photometric == "MONOCHROME1",
        header_window=window,
        voi_lut=None if window else _voi_lut(ds),
    )


def _syntax(ds: Dataset) -> str:
    return str(ds.file_meta.get("TransferSyntaxUID", "")) if ds.file_meta else ""


def _check_codestream(ds: Dataset, index: int, frames: int) -> None:
    """Refuse an encoded frame whose declared size disagrees with Rows/Columns.

    Decoders allocate what the codestream declares, so a few bytes claiming
    65535x65535 pixels would take gigabytes; import refuses such files, and this
    guards files stored before that check existed.
    """
    syntax = UID(_syntax(ds))
    if not syntax.is_transfer_syntax or not syntax.is_encapsulated:
        return
    try:
        encoded = get_frame(ds.PixelData, index, number_of_frames=frames)
    except Exception as exc:
        raise RenderError(undecodable(syntax, index + 1, exc)) from exc
    size = codestream_size(encoded)
    expected = (int(ds.get("Rows") or 0), int(ds.get("Columns") or 0))
    if size is not None and size != expected:
        raise RenderError(
            f"cannot decode the pixel data: the encoded frame is {size[1]}x{size[0]} pixels "
            f"but Rows/Columns say {expected[1]}x{expected[0]}"
        )


def _to_rgb8(array: np.ndarray, bits: int) -> np.ndarray:
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    shift = max(bits - 8, 0)
    return np.ascontiguousarray((array >> shift).clip(0, 255).astype(np.uint8))


def auto_window(frame: DecodedFrame) -> Window:
    """A window from the frame's own histogram: robust percentiles, never empty."""
    low_all, high_all, low, high = frame.stats()
    if high <= low:
        low, high = low_all, high_all
    if high <= low:
        return Window(low + 0.5, 2.0)
    return Window((low + high) / 2, high - low)


def full_window(frame: DecodedFrame) -> Window:
    """The window that spans every value in the frame."""
    low, high, _, _ = frame.stats()
    if high <= low:
        return Window(low + 0.5, 2.0)
    return Window((low + high) / 2, high - low + 1)


def default_window(frame: DecodedFrame) -> Window:
    """The header's window if any, else one from the image itself."""
    return frame.header_window or auto_window(frame)


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """Map modality values to 0..255 by PS3.3 C.11.2.1.2 / C.11.2.1.3.1, rounded."""
    center, width = float(window.center), float(window.width)
    if window.function == "sigmoid":
        with np.errstate(over="ignore"):
            scaled = np.exp(-4.0 * (values - center) / width)
        out = np.divide(255.0, 1.0 + scaled, dtype=np.float32)
        out += 0.5
        return out.clip(0, 255).astype(np.uint8)
    if window.function == "linear-exact":
        scale = 255.0 / width
        offset = (0.5 - center / width) * 255.0
    elif width <= 1.0:
        return np.where(values > center - 0.5, np.uint8(255), np.uint8(0))
    else:
        scale = 255.0 / (width - 1.0)
        offset = (0.5 - (center - 0.5) / (width - 1.0)) * 255.0
    out = np.multiply(values, np.float32(scale), dtype=np.float32)
    out += np.float32(offset + 0.5)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def apply_voi_lut(values: np.ndarray, lut: VoiLut) -> np.ndarray:
    """Map modality values through a VOI LUT table to 0..255."""
    index = np.clip(values - lut.first, 0, lut.table.size - 1).astype(np.intp)
    top = float(2**lut.bits - 1)
    scaled = lut.table[index] * np.float32(255.0 / top)
    scaled += 0.5
    return scaled.clip(0, 255).astype(np.uint8)


def _voi(frame: DecodedFrame, window: Window | None) -> Window | VoiLut:
    """The VOI transform a grey frame is shown with: ``window``, else the header's VOI LUT,
    else the header's (or the image's own) window."""
    if window is None and frame.voi_lut is not None:
        return frame.voi_lut
    return window or default_window(frame)


def _display_rows(values: np.ndarray, voi: Window | VoiLut, invert: bool) -> np.ndarray:
    image = apply_voi_lut(values, voi) if isinstance(voi, VoiLut) else apply_window(values, voi)
    if invert:
        np.subtract(255, image, out=image)
    return image


def to_display(frame: DecodedFrame, window: Window | None = None) -> np.ndarray:
    """The 8-bit image a person sees: VOI then presentation (MONOCHROME1 inverted)."""
    if frame.color:
        return frame.pixels
    return _display_rows(frame.pixels, _voi(frame, window), frame.invert)


def region_box(
    shape: tuple[int, ...], region: tuple[float, float, float, float] | None
) -> tuple[tuple[float, float, float, float], bool, bool]:
    """The source box clamped to the image, and whether to flip it (negative sw/sh)."""
    height, width = shape[0], shape[1]
    if region is None:
        return (0.0, 0.0, float(width), float(height)), False, False
    sx, sy, sw, sh = region
    flip_x, flip_y = sw < 0, sh < 0
    x0, x1 = sorted((sx, sx + sw))
    y0, y1 = sorted((sy, sy + sh))
    x0, x1 = max(x0, 0.0), min(x1, float(width))
    y0, y1 = max(y0, 0.0), min(y1, float(height))
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        raise RenderError("the viewport's source region lies outside the image")
    return (x0, y0, x1, y1), flip_x, flip_y


def _viewport_plan(
    shape: tuple[int, ...], viewport: Viewport
) -> tuple[tuple[float, float, float, float], tuple[int, int], bool, bool]:
    """(source box, output size, flip x, flip y) of ``viewport`` on an image of ``shape``."""
    box, flip_x, flip_y = region_box(shape, viewport.region)
    box_w, box_h = box[2] - box[0], box[3] - box[1]
    # Fit by cross-multiplying: a region a fraction of a pixel wide must not make an
    # infinite scale.
    if box_w * viewport.height >= box_h * viewport.width:
        size = (viewport.width, max(1, round(viewport.width * box_h / box_w)))
    else:
        size = (max(1, round(viewport.height * box_w / box_h)), viewport.height)
    return box, size, flip_x, flip_y


def _resizes(shape: tuple[int, ...], box: tuple[float, float, float, float],
             size: tuple[int, int]) -> bool:
    return box != (0.0, 0.0, float(shape[1]), float(shape[0])) or size != (shape[1], shape[0])


def _keeps_image(shape: tuple[int, ...], viewport: Viewport | None) -> bool:
    """Whether ``viewport`` asks for the whole image at its own size, as it is."""
    if viewport is None:
        return True
    box, size, flip_x, flip_y = _viewport_plan(shape, viewport)
    return not (_resizes(shape, box, size) or flip_x or flip_y)


def apply_viewport(image: np.ndarray, viewport: Viewport | None) -> np.ndarray:
    """Crop to the source region, then scale to fit the viewport, keeping the aspect ratio."""
    if viewport is None:
        return image
    box, size, flip_x, flip_y = _viewport_plan(image.shape, viewport)
    if _resizes(image.shape, box, size):
        resized = Image.fromarray(image).resize(size, Image.Resampling.BILINEAR, box=box)
        image = np.asarray(resized)
    if flip_x:
        image = image[:, ::-1]
    if flip_y:
        image = image[::-1]
    return np.ascontiguousarray(image)


def display_image(
    frame: DecodedFrame, window: Window | None = None, viewport: Viewport | None = None
) -> np.ndarray | BandImage:
    """``apply_viewport(to_display(frame, window), viewport)``, to be encoded.

    When that is the grey frame at its own size (the viewer asks for most slices
    so), the VOI is left to the encoder, which applies it band by band on two
    cores; the bytes encoded are the same.
    """
    if frame.color or not _keeps_image(frame.pixels.shape, viewport):
        return apply_viewport(to_display(frame, window), viewport)
    values, voi, invert = frame.pixels, _voi(frame, window), frame.invert
    return BandImage(values.shape, lambda start, stop: _display_rows(values[start:stop], voi,
                                                                      invert))


def burn_in(image: np.ndarray, lines_top: list[str], lines_bottom: list[str]) -> np.ndarray:
    """Draw annotation text into the image (PS3.18 ``annotation``), last in the pipeline."""
    picture = Image.fromarray(image)
    draw = ImageDraw.Draw(picture)
    size = max(10, min(picture.width, picture.height) // 24)
    font = ImageFont.load_default(size=size)
    white = 255 if picture.mode == "L" else (255, 255, 255)
    y = 4
    for line in lines_top:
        draw.text((4, y), line, fill=white, font=font)
        y += size + 2
    y = picture.height - 4 - (size + 2) * len(lines_bottom)
    for line in lines_bottom:
        draw.text((4, y), line, fill=white, font=font)
        y += size + 2
    return np.asarray(picture)


def encode(image: np.ndarray | BandImage, media_type: str, quality: int | None = None) -> bytes:
    """Encode an 8-bit grey or RGB image as PNG, JPEG or GIF."""
    if media_type == "image/png":
        return encode_png(image)
    if media_type == "image/jpeg":
        return encode_jpeg(image, quality or 90)
    if media_type == "image/gif":
        buffer = BytesIO()
        Image.fromarray(BandImage.of(image).whole()).save(buffer, format="GIF")
        return buffer.getvalue()
    raise RenderError(f"cannot encode {media_type}")


def render(
    frame: DecodedFrame,
    window: Window | None = None,
    viewport: Viewport | None = None,
    media_type: str = "image/png",
    quality: int | None = None,
) -> bytes:
    """The whole pipeline for one decoded frame."""
    return encode(display_image(frame, window, viewport), media_type, quality)
