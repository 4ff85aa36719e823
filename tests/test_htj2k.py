"""HTJ2K, the three High-Throughput JPEG 2000 transfer syntaxes (PS3.5 A.4.11).

No file in the corpus or in pydicom's test data uses them, so these tests encode a
real scanner slice (the corpus's Siemens 384x384 12-bit MR) with OpenJPH, through
``imagecodecs`` (a test dependency, requirements-dev.txt), and check what people
would see: decoding (pylibjpeg-openjpeg), import, and rendered slices over HTTP.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from flask.testing import FlaskClient
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import HTJ2K, UID, HTJ2KLossless, HTJ2KLosslessRPCL, generate_uid

from viewer.render import Window, decode_frame, render

from .test_dicomweb import parts

# OpenJPH's quantisation step for irreversible coding: ~26 KB per slice, ~46 dB.
LOSSY_QSTEP = 0.001
COD = b"\xff\x52"  # coding style default marker segment (15444-1 A.6.1)
RPCL = 2  # its progression order byte


def source(corpus: Path) -> Dataset:
    return pydicom.dcmread(corpus / "siemens-transfer-syntaxes" / "1.dcm")


def htj2k_codestream(pixels: np.ndarray, syntax: UID) -> bytes:
    """An HTJ2K codestream as each transfer syntax requires: reversible for the lossless
    two, RPCL progression with TLM markers for the RPCL one, irreversible for HTJ2K."""
    if syntax == HTJ2K:
        return imagecodecs.htj2k_encode(pixels, level=LOSSY_QSTEP, reversible=False)
    code = imagecodecs.htj2k_encode(pixels, reversible=True, tlm=syntax == HTJ2KLosslessRPCL)
    if syntax == HTJ2KLosslessRPCL:
        assert code[code.index(COD) + 5] == RPCL  # OpenJPH's default order
    return code


def htj2k_file(original: Dataset, syntax: UID, folder: Path, code: bytes | None = None) -> Path:
    """``original`` re-encoded in ``syntax``, with its own SOP Instance UID."""
    ds = copy.deepcopy(original)
    ds.PixelData = encapsulate([code or htj2k_codestream(original.pixel_array, syntax)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[original.SOPInstanceUID, str(syntax)])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if syntax == HTJ2K:
        ds.LossyImageCompression = "01"
    path = folder / f"{syntax}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def png_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


@pytest.mark.parametrize("syntax", [HTJ2KLossless, HTJ2KLosslessRPCL], ids=lambda s: s.name)
def test_lossless_htj2k_decodes_to_the_original_pixels(corpus: Path, tmp_path: Path,
                                                       syntax: UID) -> None:
    original = source(corpus)
    ds = pydicom.dcmread(htj2k_file(original, syntax, tmp_path))
    assert ds.file_meta.TransferSyntaxUID == syntax
    assert np.array_equal(decode_frame(ds).pixels, decode_frame(original).pixels)


def test_lossy_htj2k_decodes_as_openjph_does_and_close_to_the_original(
    corpus: Path, tmp_path: Path
) -> None:
    original = source(corpus)
    code = htj2k_codestream(original.pixel_array, HTJ2K)
    ds = pydicom.dcmread(htj2k_file(original, HTJ2K, tmp_path, code))
    pixels = decode_frame(ds).pixels
    # What OpenJPH itself decodes, give or take the rounding of the irreversible
    # wavelet (two conforming decoders), and near the original: lossy, yet ~46 dB.
    theirs = imagecodecs.htj2k_decode(code).astype(np.float32)
    assert np.abs(pixels - theirs).max() <= 1
    error = pixels.astype(np.float64) - original.pixel_array
    assert np.abs(error).max() > 0
    assert 10 * np.log10(4095**2 / np.mean(error**2)) > 40


def test_htj2k_files_import_and_render_like_the_original(
    client: FlaskClient, auth: dict[str, str], services, corpus: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    original = source(corpus)
    paths = [htj2k_file(original, syntax, tmp_path) for syntax in
             (HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K)]
    summary = services.importer.import_paths(paths)
    assert summary.counts["imported"] == 3, summary.refused()
    window = Window(600.0, 1200.0)
    expected = png_pixels(render(decode_frame(original), window, media_type="image/png"))
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        url = (f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
               f"/instances/{ds.SOPInstanceUID}/frames/1/rendered?window=600,1200")
        response = client.get(url, headers={**auth, "Accept": "image/png"})
        assert response.status_code == 200, response.get_data(as_text=True)
        shown = png_pixels(response.data).astype(int)
        assert shown.shape == (384, 384)
        if ds.file_meta.TransferSyntaxUID == HTJ2K:  # lossy: near the original
            assert np.abs(shown - expected).mean() < 5, path.name
        else:
            assert np.array_equal(shown, expected), path.name


def test_htj2k_frame_claiming_another_size_is_refused(services, corpus: Path,  # type: ignore[no-untyped-def]
                                                      tmp_path: Path) -> None:
    original = source(corpus)
    code = bytearray(htj2k_codestream(original.pixel_array, HTJ2KLossless))
    assert code[:4] == b"\xff\x4f\xff\x51"  # SOC, SIZ: Xsiz and Ysiz follow at 8 and 12
    code[8:16] = (60000).to_bytes(4, "big") * 2
    path = htj2k_file(original, HTJ2KLossless, tmp_path, bytes(code))
    (outcome,) = services.importer.import_paths([path]).outcomes
    assert outcome.status == "refused"
    assert "encoded frame is 60000x60000 pixels" in outcome.reason


def test_htj2k_frames_over_wado_rs_decoded_or_as_stored(
    client: FlaskClient, auth: dict[str, str], services, corpus: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    original = source(corpus)
    code = htj2k_codestream(original.pixel_array, HTJ2KLosslessRPCL)
    path = htj2k_file(original, HTJ2KLosslessRPCL, tmp_path, code)
    assert services.importer.import_paths([path]).counts["imported"] == 1
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    url = (f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
           f"/instances/{ds.SOPInstanceUID}/frames/1")
    [(headers, data)] = parts(client.get(url, headers=auth))
    assert headers["Content-Type"].endswith("transfer-syntax=1.2.840.10008.1.2.1")
    assert data == original.pixel_array.astype("<u2").tobytes()
    stored = client.get(url, headers={**auth, "Accept": 'multipart/related; type="image/jphc"'})
    [(headers, data)] = parts(stored)
    assert headers["Content-Type"] == f"image/jphc; transfer-syntax={HTJ2KLosslessRPCL}"
    assert data in (code, code + b"\0")  # a fragment is padded to an even length
    refused = client.get(url, headers={**auth, "Accept": 'multipart/related; type="image/jp2"'})
    assert refused.status_code == 406 and "image/jphc" in refused.get_json()["error"]
