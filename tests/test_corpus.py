"""Real scanner files: every transfer syntax decodes alike, every image renders, series sort."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from viewer.render import RenderError, Viewport, decode_frame, render
from viewer.stacks import Slice, build_stacks

PYDICOM_FILES = sorted(Path(get_testdata_file("CT_small.dcm")).parent.glob("*.dcm"))


def test_nine_transfer_syntaxes_give_identical_pixels(corpus: Path) -> None:
    files = sorted((corpus / "siemens-transfer-syntaxes").glob("*.dcm"))
    assert len(files) == 9
    syntaxes = set()
    reference = None
    for path in files:
        ds = pydicom.dcmread(path)
        syntaxes.add(ds.file_meta.TransferSyntaxUID)
        pixels = decode_frame(ds).pixels
        if reference is None:
            reference = pixels
        assert pixels.shape == (384, 384)
        assert np.array_equal(pixels, reference), path.name
    assert len(syntaxes) >= 6


def test_every_corpus_image_renders(corpus: Path) -> None:
    files = [p for p in corpus.rglob("*") if p.is_file() and p.name not in ("LICENSE", "README.md")]
    assert len(files) > 140
    for path in files:
        ds = pydicom.dcmread(path)
        frames = int(ds.get("NumberOfFrames") or 1)
        for index in {0, frames - 1}:
            png = render(decode_frame(ds, index), media_type="image/png")
            image = np.asarray(Image.open(io.BytesIO(png)))
            assert image.shape == (ds.Rows, ds.Columns)


@pytest.mark.parametrize("path", PYDICOM_FILES, ids=lambda p: p.name)
def test_pydicom_files_render_or_refuse_clearly(path: Path) -> None:
    try:
        ds = pydicom.dcmread(path)
    except Exception:
        pytest.skip("not readable as DICOM at all (import refuses it)")
    if "PixelData" not in ds:
        with pytest.raises(RenderError, match="no pixel data"):
            decode_frame(ds)
        return
    try:
        frame = decode_frame(ds)
    except RenderError as exc:
        assert str(exc)
        return
    out = render(frame, viewport=Viewport(64, 64), media_type="image/jpeg")
    assert out[:2] == b"\xff\xd8"


def test_pydicom_compressed_files_decode_like_their_uncompressed_twins() -> None:
    reference = decode_frame(pydicom.dcmread(get_testdata_file("MR_small.dcm"))).pixels
    for name in (
        "MR_small_RLE.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
        "MR_small_expb.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
    ):
        pixels = decode_frame(pydicom.dcmread(get_testdata_file(name))).pixels
        assert np.array_equal(pixels, reference), name


def test_enhanced_mr_takes_position_window_and_rescale_per_frame(corpus: Path) -> None:
    ds = pydicom.dcmread(corpus / "philips-enhanced" / "3DpCASL_real.dcm")
    per_frame = ds.PerFrameFunctionalGroupsSequence
    for index in (0, 17, 39):
        frame = decode_frame(ds, index)
        group = per_frame[index]
        voi = group.FrameVOILUTSequence[0]
        assert frame.header_window is not None
        assert frame.header_window.center == float(voi.WindowCenter)
        transform = group.PixelValueTransformationSequence[0]
        stored = pydicom.pixels.pixel_array(ds, index=index)
        expected = stored * float(transform.RescaleSlope) + float(transform.RescaleIntercept)
        assert np.allclose(frame.pixels, expected, atol=1e-3)


def _slices_from_headers(paths: list[Path]) -> list[Slice]:
    slices = []
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        slices.append(
            Slice(
                sop_uid=ds.SOPInstanceUID,
                frame=1,
                instance_number=int(ds.InstanceNumber),
                rows=ds.Rows,
                columns=ds.Columns,
                position=[float(v) for v in ds.ImagePositionPatient],
                orientation=[float(v) for v in ds.ImageOrientationPatient],
                pixel_spacing=[float(v) for v in ds.PixelSpacing],
                window_center=None,
                window_width=None,
                color=False,
                file_hash=path.name,
            )
        )
    return slices


def test_ge_series_named_out_of_order_comes_out_in_anatomical_order(corpus: Path) -> None:
    paths = sorted((corpus / "ge-t1-mprage").glob("*.MRDC.*"))
    assert len(paths) == 130
    stacks = build_stacks(_slices_from_headers(paths))
    assert len(stacks) == 1
    stack = stacks[0]
    ordered = stack.slices
    # Independent check: distance along the normal computed here, strictly increasing.
    orientation = np.array(ordered[0].orientation)
    normal = np.cross(orientation[:3], orientation[3:])
    distances = [float(np.dot(normal, s.position)) for s in ordered]  # type: ignore[arg-type]
    assert all(b > a for a, b in itertools.pairwise(distances))
    assert stack.spacing_mm == pytest.approx(1.2, abs=0.01)
    assert [s.file_hash for s in ordered] != [p.name for p in paths]
    assert stack.label.startswith("Axial 256")
